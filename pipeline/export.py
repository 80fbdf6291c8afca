"""`mtlrec export`: a trained run → bundle → MLflow registry → promotion gate → aliases.

`publish` is the tail of both the main job and `mtlrec retrain`. Every step can be
rerun after a crash and converges: a bundle that verifies is reused, a run has at most
one registered version (found by run id), alias moves are idempotent.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from mtlrec.features import raw
from mtlrec.features.errors import DataError
from mtlrec.features.folder import FeaturesFolder
from mtlrec.features.stream import make_loader, open_split
from mtlrec.features.transform import FeatureTransform, ModelInputs
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline import registry, tracking
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.evaluate import served_metrics
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.targets import build_ranker
from mtlrec.serving import bundle as bundle_mod
from mtlrec.serving.export import export_bundle
from mtlrec.serving.source import DIGEST_TAG

log = logging.getLogger(__name__)


def load_ranker(run: RunFolder, features: FeaturesFolder) -> MultiTaskRanker:
    """The run's multi-task ranker with its best weights, for the features it trained on."""
    info = features.info()
    return run.load_multi_task_model(lambda cfg, index: build_ranker(cfg, info, index), len(info.tasks))


def export_run(cfg: Config, run: RunFolder) -> bundle_mod.Bundle:
    """The run's bundle, exported and parity-checked (reused when one already verifies),
    loaded and verified once for its callers."""
    state = run.trained()
    if state.features is None:
        raise DataError(f"{run.path}: export is for rankers of click/conversion logs")
    key = registry.bundle_key()
    if run.bundle.exists():
        try:
            return bundle_mod.load(run.bundle, key=key)
        except bundle_mod.BundleError as exc:
            log.warning("export: re-exporting, the existing bundle does not verify: %s", exc)
    features = FeaturesFolder(Path(state.features)).require(cfg.data.name)
    ranker = load_ranker(run, features)
    metrics = {"validation": run.best_row(), "test": run.metrics()}
    identity = {"model_name": cfg.registry.model_name, "run_id": state.run_id,
                "data": cfg.data.name, "data_fingerprint": features.fingerprint,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    export_bundle(ranker, FeatureTransform.load(features.artifacts_dir),
                  first_rows(features, "valid", cfg.export.parity_rows, cfg.trainer.memory_budget_mb),
                  run.bundle, metrics=metrics, identity=identity, parity_rows=cfg.export.parity_rows,
                  tolerance=cfg.export.parity_tolerance, opset=cfg.export.opset, seed=cfg.seed,
                  key=key, reference_stats=features.reference_stats_file)
    return bundle_mod.load(run.bundle, key=key)


def first_rows(features: FeaturesFolder, split: str, rows: int, budget_mb: int) -> ModelInputs:
    """The split's first `rows` rows as model inputs, streamed (the split may not fit memory)."""
    data = open_split(features, split, mode="stream", budget_mb=budget_mb)
    batch = next(make_loader(data, rows, shuffle=False).iterate(), None)
    if batch is None:
        layout = data.layout
        return ModelInputs(np.zeros((0, layout.n_slots), np.int64), np.zeros((0, len(layout.numeric)), np.float32),
                           np.zeros((0, len(layout.max_len)), np.int64) if layout.max_len else None)
    return ModelInputs(batch.ids.numpy(), batch.dense.numpy(),
                       None if batch.lengths is None else batch.lengths.numpy())


def holdout_pattern(cfg: Config) -> str:
    """`gate.holdout`, or the newest day partition of the data's training source."""
    if cfg.gate.holdout:
        return cfg.gate.holdout
    days = raw.day_partitions(cfg.data.source.train)
    if not days:
        raise DataError(f"data.source.train={cfg.data.source.train!r} has no day=YYYY-MM-DD "
                        "partitions: set gate.holdout to the raw logs the gate compares on")
    return days[max(days)]


def publish(cfg: Config, run: RunFolder, holdout: str, *, drift: dict[str, dict] | None = None,
            blocked: list[str] | None = None) -> dict:
    """Export the run, register it, gate it against the champion on `holdout` (raw logs),
    and move the aliases. Returns what happened (version, action, gate result).

    `drift`: {day: its drift record (retrain)}, reported in the gate report and the run's
    MLflow metrics; `blocked`: reasons the version may not become champion whatever its
    metrics (a drifted day in its window, retrain.drift_action=block)."""
    exported = export_run(cfg, run)
    bundle_dir = exported.folder  # the verified version, not the link a re-export may move
    run_id = run.trained().run_id
    c, name = registry.client(cfg), cfg.registry.model_name
    c.log_artifacts(run_id, str(bundle_dir), run.bundle.name)
    source = f"{c.get_run(run_id).info.artifact_uri}/{run.bundle.name}"
    version = registry.register(c, name, source, run_id, {"data": cfg.data.name})
    # the exporting run's record of what it registered: a server refuses any other bundle
    c.set_model_version_tag(name, version, DIGEST_TAG, bundle_mod.digest(bundle_dir))
    champion = registry.alias_version(c, name, registry.CHAMPION)
    champion_version = str(champion.version) if champion else None
    if champion_version == version:
        return {"version": version, "action": "already champion", "gate": None}
    with tempfile.TemporaryDirectory(dir=run.path) as tmp:  # the holdout's good rows
        rows = raw.read(cfg.data, holdout, Path(tmp) / "holdout.parquet")
        candidate = served_metrics(exported, rows)
        holdout_info = {"files": rows.files, "rows": candidate["rows"]}
        if champion_version is None:
            result = registry.GateResult(True, {}, [])
        else:
            _, incumbent_bundle = registry.load_served(cfg, f"models:/{name}/{champion_version}")
            incumbent = served_metrics(incumbent_bundle, rows)
            result = registry.compare(candidate["tasks"], incumbent["tasks"], cfg.gate)
    if blocked:
        result = registry.GateResult(False, result.tasks, result.failures + list(blocked))
    if result.passed:
        registry.make_champion(c, name, version)
        action = "champion"
    else:
        registry.make_challenger(c, name, version)
        action = "challenger"
    summary = {"model": name, "version": version, "champion_before": champion_version,
               "action": action, "holdout": holdout_info, "candidate": candidate["tasks"],
               "gate": result.as_dict(), "epsilon": cfg.gate.auc_tolerance,
               "delta": cfg.gate.logloss_tolerance}
    report = registry.markdown(result, name, version, champion_version, cfg.gate, holdout_info)
    if drift:
        summary["drift"] = drift
        report += _drift_section(drift, run.gate)
        tracking.log_drift(c, run_id, drift)
    run.save_gate(summary, report)
    c.log_artifacts(run_id, str(run.gate), run.gate.name)
    c.set_model_version_tag(name, version, "mtlrec.gate", "passed" if result.passed else "failed")
    return summary


def _drift_section(drift: dict[str, dict], folder: Path) -> str:
    """The gate report's section on each new day's drift; its reports are copied beside it."""
    lines = ["", "## Drift of the new days", ""]
    folder.mkdir(parents=True, exist_ok=True)
    for day, record in drift.items():
        lines.append(f"- day {day}: " + ("; ".join(record["reasons"]) or "no drift"))
    for day, record in drift.items():
        for key, paths in record.get("reports", {}).items():
            lines += ["", f"### Day {day} vs {key}", ""]
            for kind, path in paths.items():
                if kind == "json":
                    continue
                copied = folder / Path(path).name
                shutil.copyfile(path, copied)
                if kind != "markdown":
                    lines += [f"![{kind}]({copied.name})", ""]
    return "\n".join(lines) + "\n"
