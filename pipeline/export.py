"""`mtlrec export`: a trained run → bundle → MLflow registry → promotion gate → aliases.

`publish` is the tail of both the main job and `mtlrec retrain`. Every step can be
rerun after a crash and converges: a bundle that verifies is reused, a run has at most
one registered version (found by run id), alias moves are idempotent.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

import torch

from mtlrec.features import raw
from mtlrec.features.batches import FeatureInfo, SplitData
from mtlrec.features.errors import DataError
from mtlrec.features.ingest import ARTIFACTS_DIR, DATA_DIR, MANIFEST_FILE
from mtlrec.features.transform import FeatureTransform
from mtlrec.models.config import ModelConfig
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline import registry, tracking
from mtlrec.pipeline.config import Config
from mtlrec.pipeline.evaluate import served_metrics
from mtlrec.pipeline.targets import build_ranker
from mtlrec.pipeline.train import RUN_FILE
from mtlrec.serving import bundle as bundle_mod
from mtlrec.serving.export import export_bundle
from mtlrec.serving.source import Source

log = logging.getLogger(__name__)
BUNDLE_DIR = "bundle"
GATE_DIR = "gate"


def trained_state(run_dir: Path) -> dict:
    path = Path(run_dir) / RUN_FILE
    state = json.loads(path.read_text()) if path.is_file() else {}
    if state.get("status") != "trained":
        raise DataError(f"{run_dir} holds no finished training run: run `mtlrec train` first")
    if not (Path(run_dir) / "model.pt").is_file():
        raise DataError(f"{run_dir}: export needs one multi-task model (model.pt); an STL run "
                        "trains one model per task")
    return state


def load_ranker(run_dir: Path, info: FeatureInfo) -> MultiTaskRanker:
    model_cfg = ModelConfig.model_validate_json((Path(run_dir) / "model_config.json").read_text())
    model = build_ranker(model_cfg, info, len(info.tasks))
    model.load_state_dict(torch.load(Path(run_dir) / "model.pt", weights_only=True))
    return model.eval()


def export_run(cfg: Config, run_dir: Path) -> Path:
    """The run's bundle, exported and parity-checked (reused when one already verifies)."""
    run_dir = Path(run_dir)
    state = trained_state(run_dir)
    out = run_dir / BUNDLE_DIR
    if (out / bundle_mod.BUNDLE_FILE).is_file():
        try:
            bundle_mod.load(out)
            return out
        except bundle_mod.BundleError as exc:
            log.warning("export: re-exporting, the existing bundle does not verify: %s", exc)
    features = Path(state["features"])
    info = FeatureInfo.load(features / ARTIFACTS_DIR)
    valid = SplitData(features / DATA_DIR, "valid", info)
    evaluation = run_dir / "evaluation" / "metrics.json"
    history = json.loads((run_dir / "history.json").read_text())["all"]
    metrics = {"validation": max(history, key=lambda row: row["valid_mean_auc"]),
               "test": json.loads(evaluation.read_text()) if evaluation.is_file() else None}
    identity = {"model_name": cfg.registry.model_name, "run_id": state["run_id"],
                "data": cfg.data.name,
                "data_fingerprint": json.loads((features / MANIFEST_FILE).read_text())["fingerprint"],
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    export_bundle(load_ranker(run_dir, info), FeatureTransform.load(features / ARTIFACTS_DIR),
                  valid.ids.numpy(), valid.dense.numpy(), out, metrics=metrics, identity=identity,
                  parity_rows=cfg.export.parity_rows, tolerance=cfg.export.parity_tolerance,
                  opset=cfg.export.opset, seed=cfg.seed)
    return out


def holdout_pattern(cfg: Config) -> str:
    """`gate.holdout`, or the newest day partition of the data's training source."""
    if cfg.gate.holdout:
        return cfg.gate.holdout
    days = raw.day_partitions(cfg.data.source.train)
    if not days:
        raise DataError(f"data.source.train={cfg.data.source.train!r} has no day=YYYY-MM-DD "
                        "partitions: set gate.holdout to the raw logs the gate compares on")
    return days[max(days)]


def publish(cfg: Config, run_dir: Path, holdout: str) -> dict:
    """Export the run, register it, gate it against the champion on `holdout` (raw logs),
    and move the aliases. Returns what happened (version, action, gate result)."""
    run_dir = Path(run_dir)
    bundle_dir = export_run(cfg, run_dir)
    run_id = trained_state(run_dir)["run_id"]
    c, name = registry.client(cfg), cfg.registry.model_name
    c.log_artifacts(run_id, str(bundle_dir), BUNDLE_DIR)
    source = f"{c.get_run(run_id).info.artifact_uri}/{BUNDLE_DIR}"
    version = registry.register(c, name, source, run_id, {"data": cfg.data.name})
    champion = registry.alias_version(c, name, registry.CHAMPION)
    champion_version = str(champion.version) if champion else None
    if champion_version == version:
        return {"version": version, "action": "already champion", "gate": None}
    rows = raw.read(cfg.data, holdout)
    candidate = served_metrics(bundle_mod.load(bundle_dir), rows)
    holdout_info = {"files": rows.files, "rows": candidate["rows"]}
    if champion_version is None:
        result = registry.GateResult(True, {}, [])
    else:
        theirs = Source(f"models:/{name}/{champion_version}", tracking.tracking_uri(cfg.paths.work_dir),
                        registry.cache_dir(cfg))
        incumbent = served_metrics(bundle_mod.load(theirs.fetch(champion_version)), rows)
        result = registry.compare(candidate["tasks"], incumbent["tasks"], cfg.gate)
    if result.passed:
        registry.make_champion(c, name, version)
        action = "champion"
    else:
        registry.make_challenger(c, name, version)
        action = "challenger"
    report = run_dir / GATE_DIR
    report.mkdir(exist_ok=True)
    summary = {"model": name, "version": version, "champion_before": champion_version,
               "action": action, "holdout": holdout_info, "candidate": candidate["tasks"],
               "gate": result.as_dict(), "epsilon": cfg.gate.auc_tolerance,
               "delta": cfg.gate.logloss_tolerance}
    (report / "gate.json").write_text(json.dumps(summary, indent=2))
    (report / "gate.md").write_text(registry.markdown(result, name, version, champion_version,
                                                      cfg.gate, holdout_info))
    c.log_artifacts(run_id, str(report), GATE_DIR)
    c.set_model_version_tag(name, version, "mtlrec.gate", "passed" if result.passed else "failed")
    return summary
