"""Configuration: Hydra composes the YAML with command-line overrides, pydantic types it.

`load(["data=census", "trainer.max_epochs=3"])` returns a validated `Config`; any
unknown key or option is a `ConfigError` that names it and what is valid. The resolved
YAML (`to_yaml`) is saved next to every output.

Where the YAML comes from: the package's `conf/`, plus the user's own config folders
(`mtlrec --config-dir DIR`, or `MTLREC_CONFIG_DIR=DIR[:DIR…]`), whose `data/`, `model/`
and `method/` files join the package's (theirs win on a name clash), so nobody edits
the installed package. A relative path in a user's data file is relative to that file's
folder. Defaults are stated once, in the typed classes below; the YAML sets only what
differs from them (`mtlrec config` prints every value).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import tempfile
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, Annotated, Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, model_validator
from pydantic.fields import FieldInfo

from mtlrec import CONF_DIR, checkout_root
from mtlrec.configbase import RelativeToFile, Strict
from mtlrec.features.ingest import IngestOptions
from mtlrec.features.spec import DataSpec, MoleculeSpec, MultiMnistSpec, QM9Spec
from mtlrec.features.synth import SynthParams
from mtlrec.models.config import ModelConfig
from mtlrec.training.config import MethodConfig, TrainerConfig

CONFIG_DIR_ENV = "MTLREC_CONFIG_DIR"
DATA_ROOT_ENV = "MTLREC_DATA_ROOT"
#: `paths.data_root` outside a checkout without MTLREC_DATA_ROOT: a value that names the
#: variable wherever it shows up, and that `Config` refuses for a data set that reads it.
UNSET_DATA_ROOT = f"<{DATA_ROOT_ENV} unset>"
#: the config groups a user's folder may add files to
USER_GROUPS = ("data", "model", "method")


class ConfigError(ValueError):
    """A config or command-line mistake; the message names the key and the valid choices."""


class Paths(Strict):
    data_root: str = Field(description=f"folder of the real data sets (${DATA_ROOT_ENV}; in a "
                           "checkout: ../shared/data)")
    work_dir: str
    features: str
    run_dir: str
    reports: str


class TrainStageConfig(Strict):
    force: bool = Field(False, description="retrain a finished run from scratch")


class EvaluateConfig(Strict):
    stl_run: str = Field(description="run folder of the STL baseline that Δm% compares with")
    logs: str | None = Field(None, description="raw logs scored through a served model "
                             "(`mtlrec evaluate model=models:/…`)")


class RegistryConfig(Strict):
    model_name: str = Field(min_length=1, description="MLflow registered model name; aliases "
                            "champion / previous / challenger")
    version: int | None = Field(None, ge=1, description="mtlrec promote: the version made "
                                "champion (default: the challenger)")


class ExportConfig(Strict):
    parity_rows: int = Field(10_000, ge=10_000, description="rows compared PyTorch vs onnxruntime "
                             "at every export (validation rows first)")
    parity_tolerance: float = Field(1e-5, gt=0, le=1e-3, description="max |p_torch - p_onnx| "
                                    "over every row and task")
    opset: int = Field(18, ge=17)


class GateConfig(Strict):
    """Promotion gate: a candidate replaces the champion when, on the same holdout rows,
    every binary task has AUC >= champion - auc_tolerance and logloss <= champion +
    logloss_tolerance, every regression task MAE <= champion · (1 + mae_tolerance), every
    multiclass task accuracy >= champion - accuracy_tolerance and cross-entropy <= champion
    + logloss_tolerance (negative tolerances demand an improvement)."""

    auc_tolerance: float = Field(0.002, description="ε of the AUC check")
    logloss_tolerance: float = Field(0.001, description="δ of the logloss and cross-entropy checks")
    mae_tolerance: float = Field(0.01, description="relative slack of a regression task's MAE check")
    accuracy_tolerance: float = Field(0.002, description="slack of a multiclass task's accuracy check")
    holdout: str | None = Field(None, description="raw logs both models are scored on "
                                "(default: the newest day partition of data.source.train)")


class ServeConfig(Strict):
    model: str = Field(description="models:/<name>@<alias>, models:/<name>/<version> or a bundle folder")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_rows: int = Field(1000, ge=1, description="rows per /predict request")
    max_body_mb: float = Field(8, gt=0)
    poll_seconds: float = Field(30, ge=0, description="registry poll period; 0 = no hot reload")
    threads: int = Field(1, ge=0, description="onnxruntime intra-op threads (0 = all cores)")
    request_timeout_s: float = Field(10, gt=0, description="a request's headers and body must "
                                     "arrive within this (a slower client is disconnected), and "
                                     "its rows be scored within this after (else 504)")
    max_batch_rows: int = Field(256, ge=1, description="rows of concurrent requests scored in "
                                "one onnxruntime call (micro-batching). Merging pays for small "
                                "requests (1 row costs 0.10 ms, 100 rows 0.77 ms); past ~100 rows the "
                                "cost per row is flat, and a bigger batch only delays every answer "
                                "in it (serve bench, v2 binary at c32: p99 152 ms at 2048, 67 ms at 256)")
    max_wait_ms: float = Field(0, ge=0, description="how long a micro-batch waits for more "
                               "requests after its first (0: it takes what queued while the "
                               "previous batch was scored)")
    max_queue_requests: int = Field(256, ge=1, description="requests waiting for the scoring "
                                    "thread; one more is answered 503 + Retry-After at once")
    workers: int = Field(1, ge=1, description="server processes sharing the port, each with its "
                         "own model and hot reload (serving/workers.py)")
    log_dir: str | None = Field(None, description="folder of the served-row log (Parquet, for "
                                "`mtlrec skew`); null: no log")
    log_sample: float = Field(0.01, ge=0, le=1, description="share of served rows logged")
    log_max_mb: float = Field(256, gt=0, description="size cap of the served-row log folder "
                              "(oldest files removed first)")
    log_file_rows: int = Field(10_000, ge=1, description="rows per served-row log file")
    log_flush_s: float = Field(60, gt=0, description="a log file is written at least this often "
                               "while rows wait")


class ScoreConfig(Strict):
    input: str | None = Field(None, description="Parquet file (or glob) of raw feature rows")
    output: str | None = Field(None, description="Parquet file written: id column + one score "
                               "column per task")
    chunk_rows: int = Field(100_000, ge=1, description="rows in memory at a time")
    id_column: str | None = None


class MonitorConfig(Strict):
    """`mtlrec drift` and `mtlrec skew`."""

    day: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="mtlrec drift: the day "
                            "partition judged (default: the newest)")
    out: str = Field(description="where drift and skew reports are written")


class RetrainConfig(Strict):
    window_days: int = Field(4, ge=3, description="days per job: train days + validation + holdout")
    warm_start: bool = Field(True, description="initialise from the champion's weights (stable "
                             "vocabulary ids)")
    accept_day: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="take this "
                                   "rejected or drifted day in as it is now (its bad rows stay "
                                   "quarantined)")
    drift_action: Literal["quarantine", "block", "record"] = Field(
        "quarantine", description="a day whose drift passes data.drift's limits is kept out of "
        "training (quarantine), trained on but blocks promotion (block), or only reported (record)")
    label_delay_days: int = Field(0, ge=0, description="labels of a day are complete this many days "
                                  "after it: the newest days wait (stored, checked for feature drift, "
                                  "not trained on), and are read again once complete")
    dir: str


class SynthConfig(SynthParams):
    """`mtlrec synth`: the generator's parameters plus where the day files go."""

    out_dir: str


class BenchConfig(Strict):
    rows: int = Field(2_000_000, ge=1, description="bench ingest: synthetic rows (CSV in, "
                      "model-ready Parquet out)")
    days: int = Field(4, ge=1, description="bench ingest: days the rows are spread over")
    pandas: bool = Field(True, description="bench ingest: also run the pandas baseline")
    statistics_repeats: int = Field(2, ge=1, description="bench ingest: runs with and without the "
                                    "statistics pass (interleaved; the fastest of each counts)")
    reader_batch_size: int = Field(2048, ge=1)
    seeds: int = Field(3, ge=1, description="bench census: seeds 0..seeds-1")
    train_rows: int = Field(100_000, ge=1000, description="bench train: synthetic rows per day")
    serve_rows_per_day: int = Field(20_000, ge=1000, description="bench serve: training data of its model")
    serve_requests: int = Field(1000, ge=10, description="bench serve: HTTP requests per concurrency level")
    serve_workers: list[int] = Field([1, 2], min_length=1, description="bench serve: the server's "
                                     "worker processes (serve.workers), each count driven in turn; "
                                     "the goals are judged at the last")
    distributed_rows_per_day: int = Field(5000, ge=1000, description="bench distributed: synthetic "
                                          "rows per day (4 days)")
    distributed_epochs: int = Field(2, ge=1, description="bench distributed: epochs of each run")
    scale_rows: list[int] = Field([1_000_000, 10_000_000, 50_000_000], min_length=1,
                                  description="bench scale: synthetic log sizes (rows)")
    scale_days: int = Field(10, ge=3, description="bench scale: days the rows are spread over")
    scale_memory: bool = Field(True, description="bench scale: also train in memory where it fits")
    scale_run: bool = Field(True, description="bench scale: the largest size's logs also go through "
                            "a whole `mtlrec run` (its wall time and peak RSS)")


def _data_kind(value: Any) -> str:
    return value.get("kind", "logs") if isinstance(value, dict) else getattr(value, "kind", "logs")


AnyData = Annotated[
    Annotated[DataSpec, Tag("logs")] | Annotated[MultiMnistSpec, Tag("multimnist")]
    | Annotated[QM9Spec, Tag("qm9")] | Annotated[MoleculeSpec, Tag("molecules")],
    Discriminator(_data_kind),
]
#: the model architectures that fit each kind of data
ARCHS = {"logs": ("hps", "mmoe", "ple"), "multimnist": ("lenet",), "qm9": ("mpnn",), "molecules": ("mpnn",)}


class Config(Strict):
    seed: int
    paths: Paths
    data: AnyData
    ingest: IngestOptions = IngestOptions()
    synth: SynthConfig
    model: ModelConfig
    method: MethodConfig
    trainer: TrainerConfig = TrainerConfig()
    train: TrainStageConfig = TrainStageConfig()
    evaluate: EvaluateConfig
    bench: BenchConfig = BenchConfig()
    registry: RegistryConfig
    export: ExportConfig = ExportConfig()
    gate: GateConfig = GateConfig()
    serve: ServeConfig
    score: ScoreConfig = ScoreConfig()
    retrain: RetrainConfig
    monitor: MonitorConfig

    @model_validator(mode="after")
    def _model_fits_data(self) -> "Config":
        archs = ARCHS[self.data.kind]
        if self.model.arch not in archs:
            raise ValueError(f"model={self.model.arch} does not fit data={self.data.name} "
                             f"({self.data.kind} data): use model={' or model='.join(archs)}")
        return self

    @model_validator(mode="after")
    def _dtjs_reaches_its_tables(self) -> "Config":
        """DTJS differentiates through the gradient of the dense parameters, tables with dense
        gradients included: torchrec's unsharded EmbeddingBag has no double backward."""
        unsharded = getattr(self.model, "embedding_impl", None) == "torchrec" and \
            self.trainer.sharding.tables == "replicated"
        if self.method.outer == "dtjs" and unsharded:
            raise ValueError("method.outer=dtjs needs the second derivative of the embedding lookup, "
                             "which torchrec's unsharded EmbeddingBagCollection lacks: use "
                             "model.embedding_impl=fused, or shard the tables under torchrun "
                             "(trainer.sharding.tables)")
        return self

    @model_validator(mode="after")
    def _data_root_known(self) -> "Config":
        if UNSET_DATA_ROOT in self.data.model_dump_json():
            raise ValueError(
                f"data={self.data.name} reads from paths.data_root, which has no default outside "
                f"a checkout of mtlrec: set the environment variable {DATA_ROOT_ENV} to the folder "
                "holding the data sets (census-income/, aliexpress-sample/, mnist/, qm9/), or "
                "pass paths.data_root=<folder>")
        return self


# ------------------------------------------------------------------ composing


def _seq(prefix: str, first: int, last: int) -> list[str]:
    """`${seq:numerical_,1,63}` → [numerical_1, …, numerical_63]."""
    return [f"{prefix}{i}" for i in range(int(first), int(last) + 1)]


def _data_root() -> str:
    """`${data_root:}`: $MTLREC_DATA_ROOT (absolute), else the checkout's ../shared/data."""
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return str(Path(env).expanduser().resolve())
    root = checkout_root()
    return str(root.parent / "shared" / "data") if root is not None else UNSET_DATA_ROOT


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("seq"):
        OmegaConf.register_new_resolver("seq", _seq)
    if not OmegaConf.has_resolver("data_root"):
        OmegaConf.register_new_resolver("data_root", _data_root)


def _upsert(override: str) -> str:
    """`a.b=1` → `++a.b=1`: a key the YAML leaves at its typed default can still be set;
    pydantic, not Hydra's struct mode, then rejects unknown keys (listing the valid ones)."""
    key = override.split("=", 1)[0]
    if "=" in override and "." in key and not key.startswith(("+", "~")):
        return "++" + override
    return override


# Parts of the multi-task step that may be named at the top level: `aggregate=pcgrad`
# means `method.aggregate=pcgrad` (DESIGN.md: a preset plus free combinations).
METHOD_PARTS = ("loss", "weighting", "aggregate", "optimizer", "schedule", "outer", "grad_on")


def _method_part(override: str) -> str:
    key = override.split("=", 1)[0]
    return f"method.{override}" if "=" in override and key in METHOD_PARTS else override


def user_config_dirs(extra: list[str] | tuple[str, ...] = ()) -> list[Path]:
    """`extra` (e.g. --config-dir values) first, then $MTLREC_CONFIG_DIR (os.pathsep-separated);
    each must be a folder."""
    env = [d for d in os.environ.get(CONFIG_DIR_ENV, "").split(os.pathsep) if d]
    dirs = []
    for name in [*extra, *env]:
        path = Path(name).expanduser().resolve()
        if not path.is_dir():
            origin = "--config-dir" if name in extra else CONFIG_DIR_ENV
            raise ConfigError(f"{origin} {name!r} is not a folder (it should hold data/, model/ "
                              "or method/ YAML files)")
        if path not in dirs:
            dirs.append(path)
    return dirs


@contextlib.contextmanager
def _search_tree(user_dirs: list[Path]) -> Iterator[tuple[Path, dict[str, Path]]]:
    """(folder Hydra composes from, {"data/shop": the user's file}) — the package's conf/
    itself, or a view of it in which the user folders' group files replace the package's
    (earlier folders win)."""
    if not user_dirs:
        yield CONF_DIR, {}
        return
    chosen: dict[str, Path] = {}
    for folder in reversed(user_dirs):
        for group in USER_GROUPS:
            for path in sorted((folder / group).glob("*.yaml")):
                chosen[f"{group}/{path.stem}"] = path
    with tempfile.TemporaryDirectory(prefix="mtlrec-conf-") as tmp:
        view = Path(tmp)
        for path in CONF_DIR.rglob("*.yaml"):
            target = view / path.relative_to(CONF_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
        for name, path in chosen.items():
            target = view / f"{name}.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            target.symlink_to(path)
        yield view, chosen


def compose_dict(overrides: list[str], config_dirs: list[Path] | None = None) -> dict[str, Any]:
    """Hydra composition + interpolation, as a plain dict (no validation yet).

    A preset recombined with other parts is named after both (`adatask+pcgrad`), unless
    `method.name` is given, so runs and tables say what actually ran.
    """
    _register_resolvers()
    _check_top_level_keys(overrides)
    dirs = user_config_dirs() if config_dirs is None else config_dirs
    expanded = [_method_part(o) for o in overrides]
    parts = [o.split("=", 1)[1] for o in expanded
             if o.startswith("method.") and o.split("=", 1)[0].removeprefix("method.") in METHOD_PARTS]
    try:
        with _search_tree(dirs) as (tree, user_files):
            with initialize_config_dir(config_dir=str(tree), version_base=None):
                cfg = compose(config_name="config", overrides=[_upsert(o) for o in expanded],
                              return_hydra_config=True)
            if parts and not any(o.startswith("method.name=") for o in expanded):
                cfg.method.name = "+".join([cfg.method.name, *parts])  # before run_dir resolves
            data_file = user_files.get(f"data/{cfg.hydra.runtime.choices.get('data')}")
            with open_dict(cfg):
                del cfg["hydra"]
            out = OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_explain_hydra(exc, overrides)) from None
    if data_file is not None:
        _relative_to(out["data"], data_file.parent, _data_model(out["data"]), "data", overrides)
    return out  # type: ignore[return-value]


def load(overrides: list[str] | tuple[str, ...] = (), config_dirs: list[Path] | None = None) -> Config:
    """The validated config; `config_dirs` default to $MTLREC_CONFIG_DIR."""
    raw = compose_dict(list(overrides), config_dirs)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain_validation(exc)) from None


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


# What only the stages after training read (evaluation, export, serving, a benchmark's own
# loop, whether training was forced): two configs that differ only there train the same run.
AFTER_TRAINING = ("train", "evaluate", "bench", "registry", "export", "gate", "serve", "score", "retrain")


def training_settings(config_text: str | None) -> dict | None:
    """A run's saved configuration (`to_yaml`) less what does not change what is trained,
    so that a finished run is reused by a sweep or benchmark that asks for more seeds or
    another report folder."""
    if config_text is None:
        return None
    settings = yaml.safe_load(config_text)
    for section in AFTER_TRAINING:
        settings.pop(section, None)
    settings.get("paths", {}).pop("reports", None)
    return settings


# ------------------------------------------------------------------ paths in user files


def _data_model(data: dict) -> type[BaseModel]:
    """The data spec type of a composed `data` dict (DataSpec for an unknown kind: then
    validation reports the kind)."""
    return _tagged_members(Config.model_fields["data"]).get(_data_kind(data), DataSpec)


def _relative_to(values: dict, folder: Path, model: type[BaseModel], prefix: str,
                  overrides: list[str]) -> None:
    """Make the relative file paths (`FilePath` fields) of a user's data file relative to
    its folder, in place; a path given on the command line stays relative to the
    working directory, as a shell user expects."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    for name, field in model.model_fields.items():
        value, key = values.get(name), f"{prefix}.{name}"
        if isinstance(value, str) and _is_file_path(field) and key not in given \
                and not Path(value).expanduser().is_absolute():
            values[name] = str(folder / value)
        nested = _model_in(field.annotation)
        if isinstance(value, dict) and nested is not None:
            _relative_to(value, folder, nested, key, overrides)


def _is_file_path(field: FieldInfo) -> bool:
    """A `FilePath` field: pydantic keeps the marker in the field's metadata, or inside
    the annotation for `FilePath | None`."""
    def marked(annotation: Any) -> bool:
        if typing.get_origin(annotation) is Annotated:
            return any(isinstance(m, RelativeToFile) for m in typing.get_args(annotation)[1:])
        return any(marked(a) for a in typing.get_args(annotation))
    return any(isinstance(m, RelativeToFile) for m in field.metadata) or marked(field.annotation)


# ------------------------------------------------------------------ errors users read


def _explain_hydra(exc: Exception, overrides: list[str]) -> str:
    """Hydra's message without its search-path listing (a temporary folder when user
    config folders are in play; `--config-dir` says where to look)."""
    message, _, options = str(exc).split("Config search path:")[0].strip().partition("Available options")
    if options:  # "in 'model':\n\thps\n\tmmoe" → "in 'model': hps, mmoe"
        group, _, names = options.partition(":")
        message = f"{message.strip()}; available options{group}: {', '.join(names.split())}"
    return f"{message} (overrides: {' '.join(overrides)})"


def _check_top_level_keys(overrides: list[str]) -> None:
    """`mtlrec serve port=8001` → "did you mean serve.port?" rather than Hydra's advice to
    append a new key with `+port`."""
    valid = set(Config.model_fields) | set(METHOD_PARTS)
    for item in overrides:
        key, sep, _ = item.partition("=")
        if not sep or "." in key or key.startswith(("+", "~")) or key in valid:
            continue
        raise ConfigError(f"{key}: unknown key{_did_you_mean(key, all_keys())}; top-level keys: "
                          f"{sorted(valid)}")


def _explain_validation(exc: ValidationError) -> str:
    lines, seen = [], set()
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        same = (tuple("#" if p.isdigit() else p for p in loc), err["type"])
        if same in seen:  # one mistake copied into every entry of a `names:` shorthand
            continue
        seen.add(same)
        where = ".".join(_locate(loc)[0]) or "configuration"
        if err["type"] == "extra_forbidden":
            valid = _keys_at(loc[:-1])
            near = _did_you_mean(loc[-1], [".".join([*_locate(loc[:-1])[0], k]) for k in valid])
            lines.append(f"{where}: unknown key{near}; valid keys here: {valid}")
        else:
            lines.append(f"{where}: {err['msg']}")
    return "invalid configuration: " + "; ".join(lines)


def _did_you_mean(key: str, candidates: list[str]) -> str:
    """ "; did you mean a.b?" for the candidates whose last part is `key` or close to it."""
    last = {c.rsplit(".", 1)[-1]: c for c in reversed(candidates)}
    exact = [c for c in candidates if c.rsplit(".", 1)[-1] == key]
    close = exact or [last[m] for m in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(last), 3)]
    return f"; did you mean {' or '.join(close)}?" if close else ""


def all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config (each member of a tagged union included)."""
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        members = list(_tagged_members(field).values()) or [_model_in(field.annotation)]
        nested = [m for m in members if m is not None]
        if not nested:
            out.append(key)
        for member in nested:
            out += [k for k in all_keys(member, key + ".") if k not in out]
    return out


def _locate(loc: list[str]) -> tuple[list[str], Any]:
    """Walk an error location through the config types: (the location as users write it,
    without the tags of tagged unions such as data kinds and model archs; the config type
    found there, or None)."""
    shown: list[str] = []
    current: Any = Config
    for part in loc:
        if isinstance(current, dict) and part in current:  # the tag of a tagged union
            current = current[part]
            continue
        shown.append(part)
        if part.isdigit():  # a list index: the list's element type stays current
            continue
        field = current.model_fields.get(part) if _is_model(current) else None
        current = None if field is None else (
            _tagged_members(field) or _model_in(field.annotation))
    return shown, current


def _keys_at(loc: list[str]) -> list[str]:
    """Field names of the config object at `loc`."""
    current = _locate(loc)[1]
    return sorted(current.model_fields) if _is_model(current) else []


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _tagged_members(field: FieldInfo) -> dict[str, Any]:
    """{tag: model} of a field holding a tagged union — `AnyData` (a Tag on each member)
    or `ModelConfig` (a Literal `arch` on each member); empty for any other field."""
    members = typing.get_args(field.annotation)
    if isinstance(field.discriminator, str):
        return {typing.get_args(m.model_fields[field.discriminator].annotation)[0]: m
                for m in members if _is_model(m)}
    out = {}
    for arg in members:
        if typing.get_origin(arg) is Annotated:
            model, *meta = typing.get_args(arg)
            out |= {m.tag: model for m in meta if isinstance(m, Tag)}
    return out


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside `X | None` or `list[X]`, if any."""
    if _is_model(annotation):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
