"""The MLflow model registry: register bundles, gate them against the champion, move aliases.

Aliases (MLflow 3 has no stages): `champion` is what servers load, `previous` the
champion it replaced (what `rollback` returns to), `challenger` a candidate that failed
the gate. Each version carries the tag `mtlrec.replaced` (the champion it replaced), so
repeated rollbacks walk back through the history.

The gate is ours to write (`mlflow.validate_evaluation_results` can only demand an
improvement): on the same holdout rows, every task's candidate AUC must be at least the
champion's − ε and its logloss at most the champion's + δ (`gate.*`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from mtlrec.features.errors import DataError
from mtlrec.pipeline import tracking
from mtlrec.pipeline.config import Config, GateConfig
from mtlrec.serving import bundle
from mtlrec.serving.source import Source

log = logging.getLogger(__name__)
CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
REPLACED_TAG = "mtlrec.replaced"
BUNDLE_KEY_ENV = "MTLREC_BUNDLE_KEY"


def client(cfg: Config) -> mlflow.MlflowClient:
    uri = tracking.tracking_uri(cfg.paths.work_dir)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def cache_dir(cfg: Config) -> Path:
    """Where registered bundles are downloaded to (by servers, scoring and the gate)."""
    return Path(cfg.paths.work_dir) / "serving-cache"


def bundle_key() -> bytes | None:
    """$MTLREC_BUNDLE_KEY: export signs bundles with it; serve, score, promote and rollback
    then refuse bundles unsigned or signed otherwise."""
    key = os.environ.get(BUNDLE_KEY_ENV)
    return key.encode() if key else None


def model_source(cfg: Config, uri: str | None = None) -> Source:
    """A served model: `uri` (default `serve.model`), a registry URI or a bundle folder."""
    return Source(uri or cfg.serve.model, tracking.tracking_uri(cfg.paths.work_dir), cache_dir(cfg),
                  bundle_key())


def load_served(cfg: Config, uri: str | None = None) -> tuple[str, bundle.Bundle]:
    """(version, verified bundle) that `uri` (default `serve.model`) points at now."""
    source = model_source(cfg, uri)
    version = source.version()
    return version, source.load(version, threads=0)


def champion(cfg: Config) -> tuple[str, bundle.Bundle] | None:
    """(version, verified bundle) of the champion now, or None before there is one (or
    when its bundle does not load: then nothing is compared with it)."""
    try:
        return load_served(cfg, f"models:/{cfg.registry.model_name}@{CHAMPION}")
    except DataError:
        return None


def check_version(cfg: Config, version: str, becomes: str) -> None:
    """Refuse to make `version` the champion (`becomes` says how) unless its bundle loads
    and passes every check a server would run."""
    name = cfg.registry.model_name
    try:
        load_served(cfg, f"models:/{name}/{version}")
    except DataError as exc:
        champion = alias_version(client(cfg), name, CHAMPION)
        stays = f"version {champion.version}" if champion else "none"
        raise DataError(f"{name} version {version} cannot {becomes}: {exc}; the champion stays "
                        f"{stays}") from None


def alias_version(c: mlflow.MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register(c: mlflow.MlflowClient, name: str, source: str, run_id: str, tags: dict[str, str]) -> str:
    """The version registered for `run_id`, created on first call only (a rerun after a
    crash finds it instead of registering the same model twice)."""
    try:
        c.create_registered_model(name, description="mtlrec multi-task ranker (ONNX bundle)")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    found = c.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if found:
        return str(found[0].version)
    version = c.create_model_version(name, source=source, run_id=run_id, tags=tags)
    log.info("registry: %s version %s from run %s", name, version.version, run_id)
    return str(version.version)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    tasks: dict[str, dict]  # per task: candidate/champion AUC and logloss, differences, verdicts
    failures: list[str]  # one sentence per failed check: task, metric, by how much

    def as_dict(self) -> dict:
        return {"passed": self.passed, "tasks": self.tasks, "failures": self.failures}


@dataclass(frozen=True)
class GateCheck:
    """One metric the gate compares: the candidate may be worse than the champion by at
    most `tolerance` (a GateConfig field), absolute or relative to the champion's value."""

    metric: str
    label: str  # as reports name it
    higher_is_better: bool
    tolerance: str
    relative: bool = False


# per task, every check whose metric the task has (binary: AUC and logloss; regression:
# MAE; multiclass: accuracy and cross-entropy)
GATE_CHECKS = (GateCheck("auc", "AUC", True, "auc_tolerance"),
               GateCheck("logloss", "logloss", False, "logloss_tolerance"),
               GateCheck("mae", "MAE", False, "mae_tolerance", relative=True),
               GateCheck("accuracy", "accuracy", True, "accuracy_tolerance"),
               GateCheck("cross_entropy", "cross-entropy", False, "logloss_tolerance"))


def compare(candidate: dict[str, dict], champion: dict[str, dict], gate: GateConfig) -> GateResult:
    """The gate on per-task metrics ({task: {"auc": …, "logloss": …}}, or a regression or
    multiclass task's) of the same rows: for each check of GATE_CHECKS the row holds
    candidate_<m>, champion_<m>, <m>_diff and <m>_ok."""
    if set(candidate) != set(champion):
        return GateResult(False, {}, [f"tasks differ: candidate {sorted(candidate)}, "
                                      f"champion {sorted(champion)}"])
    tasks, failures = {}, []
    for task, mine in candidate.items():
        theirs, row = champion[task], {}
        for check in GATE_CHECKS:
            if check.metric not in mine or check.metric not in theirs:
                continue
            m, ours, best = check.metric, mine[check.metric], theirs[check.metric]
            slack = getattr(gate, check.tolerance) * (abs(best) if check.relative else 1.0)
            bound = best - slack if check.higher_is_better else best + slack
            ok = ours >= bound if check.higher_is_better else ours <= bound
            row |= {f"candidate_{m}": ours, f"champion_{m}": best, f"{m}_diff": ours - best, f"{m}_ok": ok}
            if not ok:
                side, sign, off = ("<", "−", "short") if check.higher_is_better else (">", "+", "over")
                failures.append(f"{task}: {check.label} {ours:.5g} {side} champion {best:.5g} {sign} "
                                f"{slack:.5g} (gate.{check.tolerance}; {off} by {abs(ours - bound):.5g})")
        tasks[task] = row
    return GateResult(not failures, tasks, failures)


def make_champion(c: mlflow.MlflowClient, name: str, version: str) -> str | None:
    """`champion` → version; the old champion keeps `previous`. Returns the old one."""
    old = alias_version(c, name, CHAMPION)
    old_version = str(old.version) if old else None
    if old_version == version:
        return None
    c.set_registered_model_alias(name, CHAMPION, version)
    if old_version is not None:
        c.set_registered_model_alias(name, PREVIOUS, old_version)
        c.set_model_version_tag(name, version, REPLACED_TAG, old_version)
    challenger = alias_version(c, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        c.delete_registered_model_alias(name, CHALLENGER)
    log.info("registry: %s champion is now version %s (was %s)", name, version, old_version)
    return old_version


def make_challenger(c: mlflow.MlflowClient, name: str, version: str) -> None:
    c.set_registered_model_alias(name, CHALLENGER, version)


def rollback(c: mlflow.MlflowClient, name: str) -> tuple[str, str]:
    """`champion` back to `previous`; returns (from, to). `previous` then moves one step
    further back (the version the restored champion had replaced), or is removed."""
    current, previous = alias_version(c, name, CHAMPION), alias_version(c, name, PREVIOUS)
    if current is None or previous is None:
        raise DataError(f"registered model {name!r} has no {'champion' if current is None else 'previous'}"
                        " alias: nothing to roll back to")
    c.set_registered_model_alias(name, CHAMPION, str(previous.version))
    c.set_model_version_tag(name, str(current.version), "mtlrec.rolled_back", "true")
    before = previous.tags.get(REPLACED_TAG)
    if before and before != str(current.version):
        c.set_registered_model_alias(name, PREVIOUS, before)
    else:
        c.delete_registered_model_alias(name, PREVIOUS)
    return str(current.version), str(previous.version)


def markdown(result: GateResult, name: str, version: str, champion: str | None, gate: GateConfig,
             holdout: dict) -> str:
    lines = [f"# Promotion gate: {name} version {version}", ""]
    if champion is None:
        lines += ["No champion yet: this version becomes the champion.", ""]
    else:
        verdict = "**passed**: it becomes the champion" if result.passed else \
            "**failed**: it stays the challenger"
        lines += [f"Candidate version {version} vs champion version {champion} on "
                  f"{holdout['rows']:,} holdout rows ({', '.join(Path(f).name for f in holdout['files'])}); "
                  f"ε = {gate.auc_tolerance} (AUC), δ = {gate.logloss_tolerance} (logloss, cross-entropy), "
                  f"{gate.mae_tolerance:.0%} (MAE, relative), {gate.accuracy_tolerance} (accuracy): {verdict}.", "",
                  "| task | metric | candidate | champion | Δ | verdict |",
                  "| --- | --- | ---: | ---: | ---: | --- |"]
        for task, r in result.tasks.items():
            for check in GATE_CHECKS:
                m = check.metric
                if f"{m}_ok" in r:
                    lines.append(f"| {task} | {check.label} | {r[f'candidate_{m}']:.5g} | {r[f'champion_{m}']:.5g} | "
                                 f"{r[f'{m}_diff']:+.4g} | {'ok' if r[f'{m}_ok'] else 'FAIL'} |")
        if result.failures:
            lines += ["", "Failed checks:", *[f"- {f}" for f in result.failures]]
    return "\n".join(lines) + "\n"
