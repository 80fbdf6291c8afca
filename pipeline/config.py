"""Configuration: Hydra composes `conf/` with command-line overrides, pydantic types it.

`load(["data=census", "trainer.max_epochs=3"])` returns a validated `Config`; any
unknown key or option is a `ConfigError` that names it and lists what is valid. The
resolved YAML (`to_yaml`) is saved next to every output.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, model_validator

from mtlrec import PROJECT_ROOT
from mtlrec.configbase import Strict
from mtlrec.features.ingest import IngestOptions
from mtlrec.features.spec import DataSpec, MultiMnistSpec, QM9Spec
from mtlrec.models.config import ModelConfig
from mtlrec.training.config import MethodConfig, TrainerConfig

CONF_DIR = PROJECT_ROOT / "conf"


class ConfigError(ValueError):
    """A config or command-line mistake; the message names the key and the valid choices."""


class Paths(Strict):
    data_root: str
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
    model_name: str = Field(min_length=1, description="MLflow registered model name")
    version: int | None = Field(None, ge=1, description="mtlrec promote: version made champion")


class ExportConfig(Strict):
    parity_rows: int = Field(10_000, ge=10_000, description="rows compared torch vs onnxruntime")
    parity_tolerance: float = Field(1e-5, gt=0, le=1e-3)
    opset: int = Field(18, ge=17)


class GateConfig(Strict):
    """Promotion gate: a candidate replaces the champion when, on the same holdout rows,
    every task has AUC >= champion - auc_tolerance and logloss <= champion + logloss_tolerance
    (negative tolerances demand an improvement)."""

    auc_tolerance: float = 0.002
    logloss_tolerance: float = 0.001
    holdout: str | None = Field(None, description="raw logs both models are scored on "
                                "(default: the newest day partition of data.source.train)")


class ServeConfig(Strict):
    model: str = Field(description="models:/<name>@<alias>, models:/<name>/<version> or a bundle folder")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_rows: int = Field(1000, ge=1)
    max_body_mb: float = Field(8, gt=0)
    poll_seconds: float = Field(30, ge=0, description="registry poll period; 0 = no hot reload")
    threads: int = Field(1, ge=0, description="onnxruntime intra-op threads (0 = all cores)")


class ScoreConfig(Strict):
    input: str | None = None
    output: str | None = None
    chunk_rows: int = Field(100_000, ge=1)
    id_column: str | None = None


class RetrainConfig(Strict):
    window_days: int = Field(4, ge=3, description="days per job: train days + validation + holdout")
    warm_start: bool = True
    dir: str


class SynthConfig(Strict):
    out_dir: str
    format: typing.Literal["csv", "parquet"] = "csv"
    days: int = Field(3, ge=1)
    rows_per_day: int = Field(100_000, ge=1)
    start_day: str = "2026-11-01"
    ctr: float = Field(0.04, gt=0, lt=1)
    cvr: float = Field(0.08, gt=0, lt=1)
    conflict_rho: float = Field(0.0, ge=-1, le=1)
    seed: int = 2026


class BenchConfig(Strict):
    rows: int = Field(2_000_000, ge=1)
    days: int = Field(4, ge=1)
    pandas: bool = True
    reader_batch_size: int = Field(2048, ge=1)
    seeds: int = Field(3, ge=1, description="bench census: seeds 0..seeds-1")
    train_rows: int = Field(100_000, ge=1000, description="bench train: synthetic rows per day")
    serve_rows_per_day: int = Field(20_000, ge=1000, description="bench serve: training data of its model")
    serve_requests: int = Field(1000, ge=10, description="bench serve: HTTP requests per concurrency level")


def _data_kind(value: Any) -> str:
    return value.get("kind", "logs") if isinstance(value, dict) else getattr(value, "kind", "logs")


AnyData = Annotated[
    Annotated[DataSpec, Tag("logs")] | Annotated[MultiMnistSpec, Tag("multimnist")]
    | Annotated[QM9Spec, Tag("qm9")],
    Discriminator(_data_kind),
]
#: the model architectures that fit each kind of data
ARCHS = {"logs": ("hps", "mmoe", "ple"), "multimnist": ("lenet",), "qm9": ("mpnn",)}


class Config(Strict):
    seed: int
    paths: Paths
    data: AnyData
    ingest: IngestOptions
    synth: SynthConfig
    model: ModelConfig
    method: MethodConfig
    trainer: TrainerConfig
    train: TrainStageConfig
    evaluate: EvaluateConfig
    bench: BenchConfig
    registry: RegistryConfig
    export: ExportConfig
    gate: GateConfig
    serve: ServeConfig
    score: ScoreConfig
    retrain: RetrainConfig

    @model_validator(mode="after")
    def _model_fits_data(self) -> "Config":
        archs = ARCHS[self.data.kind]
        if self.model.arch not in archs:
            raise ValueError(f"model={self.model.arch} does not fit data={self.data.name} "
                             f"({self.data.kind} data): use model={' or model='.join(archs)}")
        return self


def _seq(prefix: str, first: int, last: int) -> list[str]:
    """`${seq:numerical_,1,63}` → [numerical_1, …, numerical_63]."""
    return [f"{prefix}{i}" for i in range(int(first), int(last) + 1)]


def _register_resolvers() -> None:
    if not OmegaConf.has_resolver("seq"):
        OmegaConf.register_new_resolver("seq", _seq)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


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


def compose_dict(overrides: list[str]) -> dict[str, Any]:
    """Hydra composition + interpolation, as a plain dict (no validation yet).

    A preset recombined with other parts is named after both (`adatask+pcgrad`), unless
    `method.name` is given, so runs and tables say what actually ran.
    """
    _register_resolvers()
    expanded = [_method_part(o) for o in overrides]
    parts = [o.split("=", 1)[1] for o in expanded
             if o.startswith("method.") and o.split("=", 1)[0].removeprefix("method.") in METHOD_PARTS]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            cfg = compose(config_name="config", overrides=[_upsert(o) for o in expanded])
        if parts and not any(o.startswith("method.name=") for o in expanded):
            cfg.method.name = "+".join([cfg.method.name, *parts])  # before run_dir resolves
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_explain_hydra(exc, overrides)) from None


def load(overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw = compose_dict(list(overrides))
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_explain_validation(exc)) from None


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save(cfg: Config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))


def _explain_hydra(exc: Exception, overrides: list[str]) -> str:
    return f"{str(exc).strip()}\n(overrides: {' '.join(overrides)})"


def _explain_validation(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [p for p in err["loc"]]
        shown = loc[:1] + loc[2:] if loc[:1] == ["data"] and loc[1:2] and loc[1] in ARCHS else loc
        where = ".".join(str(p) for p in shown) or "configuration"  # without the data kind tag
        if err["type"] == "extra_forbidden":
            valid = _keys_at(Config, [str(p) for p in loc[:-1]])
            lines.append(f"{where}: unknown key; valid keys here: {valid}")
        else:
            lines.append(f"{where}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _keys_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the config object at `path` (list indices and union tags skipped)."""
    current: Any = model
    for part in path:
        if part.isdigit():
            continue
        if isinstance(current, dict):  # a tagged union: the part is the tag
            current = current.get(part)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = _tagged_members(field.annotation) or _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return sorted(current.model_fields)
    return []


def _tagged_members(annotation: Any) -> dict[str, Any]:
    """{tag: model} of a discriminated union such as `AnyData` (empty for anything else)."""
    out = {}
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is Annotated:
            model, *meta = typing.get_args(arg)
            out |= {m.tag: model for m in meta if isinstance(m, Tag)}
    return out


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside `X | None` or `list[X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
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
