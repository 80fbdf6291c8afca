"""Faults and hostile input in the pipeline, through the real CLI and a real MLflow registry:
a rejected day never stops retraining, a corrupt checkpoint or manifest never blocks a
run, a diverging run never reaches the registry, the serving cache never keeps a refused
download, promote/rollback check the bundle first, and what is served is the bundle the
exporting run recorded (digest in the registry, HMAC with MTLREC_BUNDLE_KEY).

The data is the tiny shop of tests/fixtures/userconf (a user config folder)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from helpers import FIXTURES, TINY_SHOP_MODEL, TinyShop, tiny_shop_logs
from mtlrec.pipeline.cli import main

NAME = TINY_SHOP_MODEL
TINY = ["data=tinyshop", "model.embedding_dim=4", "model.n_experts=2", "model.expert_hidden=[8]",
        "model.tower_hidden=[4]", "trainer.max_epochs=2", "trainer.batch_size=128",
        "trainer.lr=0.02", "gate.auc_tolerance=0.5", "gate.logloss_tolerance=1.0"]
KEY = "a-test-signing-key"


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("mtlrec ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _bad_day(landing: Path, day: str, bad_share: float) -> None:
    """A day whose first `bad_share` of rows convert without a click (quarantined)."""
    path = tiny_shop_logs(landing / ".tmp", 1, seed=5, start=day)[0]
    frame = pl.read_csv(path, schema_overrides={"rid": pl.String})
    n_bad = int(bad_share * frame.height)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) < n_bad).then(0).otherwise(pl.col("click")).alias("click"),
        pl.when(pl.int_range(pl.len()) < n_bad).then(1).otherwise(pl.col("buy")).alias("buy"),
        pl.col("rid").str.replace(r"^", "bad"))
    frame.write_csv(landing / path.name)
    shutil.rmtree(landing / ".tmp")


# ------------------------------------------------------------------ retraining


@pytest.mark.slow
def test_a_rejected_day_is_recorded_skipped_and_taken_in_on_request(tmp_path, capsys):
    shop = TinyShop(tmp_path, TINY)
    tiny_shop_logs(shop.landing, 3, start="2026-11-01")
    _bad_day(shop.landing, "2026-11-04", 0.3)
    tiny_shop_logs(shop.landing, 1, seed=8, start="2026-11-05")
    assert shop.cli("retrain") == 0
    out = capsys.readouterr().out
    assert "rejected day 2026-11-04" in out and "retrain.accept_day=2026-11-04" in out
    manifest = json.loads((shop.work / "retrain" / "tinyshop" / "manifest.json").read_text())
    rejected = manifest["days"]["2026-11-04"]
    assert rejected["status"] == "rejected" and "max_reject_ratio" in rejected["reason"]
    assert pl.read_parquet(rejected["quarantine"]).height == 180  # 30% of 600, with reasons
    assert manifest["days"]["2026-11-05"]["status"] == "taken"  # the next good day goes on
    assert manifest["jobs"]["2026-11-05"]["status"] == "done"
    assert shop.cli("retrain") == 0  # a later run skips the rejected day, and reminds
    again = capsys.readouterr().out
    assert "up to date" in again and "rejected day 2026-11-04" in again
    assert shop.cli("retrain", "retrain.accept_day=2026-11-04") == 0
    manifest = json.loads((shop.work / "retrain" / "tinyshop" / "manifest.json").read_text())
    accepted = manifest["days"]["2026-11-04"]
    assert accepted["status"] == "accepted" and accepted["rows_good"] == 420
    stored = pl.read_parquet(shop.work / "retrain" / "tinyshop" / "store" / "day=2026-11-04.parquet")
    assert stored.height == 420
    assert shop.cli("retrain", "retrain.accept_day=2026-11-05") == 2  # only a rejected day
    _one_line_error(capsys, "2026-11-05", "not rejected")


def test_a_corrupt_retrain_manifest_is_named_not_a_traceback(tmp_path, capsys):
    shop = TinyShop(tmp_path, TINY)
    tiny_shop_logs(shop.landing, 1)
    manifest = shop.work / "retrain" / "tinyshop" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text('{"days": {"2026-11-01": ')
    assert shop.cli("retrain") == 2
    _one_line_error(capsys, str(manifest))


# ------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> TinyShop:
    """The tiny shop ingested and trained (2 epochs), not exported."""
    shop = TinyShop(tmp_path_factory.mktemp("trained"), TINY)
    tiny_shop_logs(shop.landing, 4)
    assert shop.cli("ingest") == 0 and shop.cli("train") == 0
    return shop


def _interrupted_copy(trained: TinyShop, tmp_path: Path) -> TinyShop:
    """A copy of the trained work folder marked as interrupted after its last epoch."""
    shop = TinyShop(tmp_path, TINY)
    shutil.rmtree(shop.conf)
    shutil.copytree(trained.conf, shop.conf)
    shutil.copytree(trained.work, shop.work, symlinks=True)
    state = json.loads((shop.run.path / "run.json").read_text()) | {"status": "running"}
    (shop.run.path / "run.json").write_text(json.dumps(state))
    (shop.run.path / "run.json").write_text(
        (shop.run.path / "run.json").read_text().replace(str(trained.work), str(shop.work)))
    return shop


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(trained, tmp_path, capsys):
    shop = _interrupted_copy(trained, tmp_path)
    checkpoint = shop.run.checkpoint("all")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # a half-written file
    assert shop.cli("train", "trainer.max_epochs=3") == 0  # resumes from the epoch before
    history = shop.run.history()["all"]
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert history[:1] == trained.run.history()["all"][:1]  # the previous checkpoint's epoch


def test_a_corrupt_checkpoint_without_a_previous_one_says_which_file_to_remove(trained, tmp_path, capsys):
    shop = _interrupted_copy(trained, tmp_path)
    checkpoint = shop.run.checkpoint("all")
    for path in checkpoint.parent.glob(checkpoint.stem + "*"):
        path.write_bytes(b"not a checkpoint")
    assert shop.cli("train") == 2
    _one_line_error(capsys, str(checkpoint), "remove", "train.force=true")


def test_a_corrupt_features_manifest_is_rebuilt_by_ingest_and_named_by_train(trained, tmp_path, capsys):
    shop = _interrupted_copy(trained, tmp_path)
    manifest = shop.work / "features" / "tinyshop" / "manifest.json"
    manifest.write_text("{not json")
    assert shop.cli("train", "train.force=true") == 2
    _one_line_error(capsys, "manifest.json", "mtlrec ingest")
    assert shop.cli("ingest") == 0  # an unreadable record is not trusted: rebuilt
    assert json.loads(manifest.read_text())["rows_good"] == 2400


def test_a_diverging_run_stops_at_once_and_never_reaches_the_registry(trained, tmp_path, capsys):
    shop = _interrupted_copy(trained, tmp_path)
    assert shop.cli("train", "train.force=true", "trainer.lr=1e308") == 2
    line = _one_line_error(capsys, "non-finite", "step", "last finite loss")
    assert "ctr" in line or "ctcvr" in line
    assert not shop.run.is_trained()
    assert shop.cli("export") == 2  # nothing to export, nothing registered
    assert not shop.client().search_registered_models()


def test_a_non_finite_option_is_a_config_error(capsys):
    assert main(["config", "trainer.lr=inf"]) == 2
    _one_line_error(capsys, "trainer.lr", "finite")


def test_a_corrupt_run_state_is_named(trained, tmp_path, capsys):
    shop = _interrupted_copy(trained, tmp_path)
    (shop.run.path / "run.json").write_text("{")
    assert shop.cli("evaluate") == 2
    _one_line_error(capsys, "run.json", "train.force=true")


# ------------------------------------------------------------------ registry and serving


@pytest.fixture(scope="module")
def published(trained, tmp_path_factory) -> TinyShop:
    """The trained tiny shop exported and signed (MTLREC_BUNDLE_KEY): champion v1."""
    shop = TinyShop(tmp_path_factory.mktemp("published"), TINY)
    shutil.rmtree(shop.conf)
    shutil.copytree(trained.conf, shop.conf)
    shutil.copytree(trained.work, shop.work, symlinks=True)
    for state_file in (shop.run.path / "run.json",):
        state_file.write_text(state_file.read_text().replace(str(trained.work), str(shop.work)))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MTLREC_BUNDLE_KEY", KEY)
        assert shop.cli("export") == 0
    return shop


def _scored(shop: TinyShop, tmp_path: Path, *overrides: str) -> int:
    day = pl.read_csv(tiny_shop_logs(tmp_path / "new", 1, seed=3, start="2026-11-30")[0],
                      schema_overrides={"rid": pl.String})
    day.write_parquet(tmp_path / "in.parquet")
    return shop.cli("score", f"input={tmp_path / 'in.parquet'}", f"output={tmp_path / 'out.parquet'}",
                    *overrides)


def _artifact_bundle(shop: TinyShop, version: str) -> Path:
    source = shop.client().get_model_version(NAME, version).source
    return Path(source.removeprefix("file://"))


def test_promote_of_an_unknown_version_is_a_clear_error(published, capsys):
    assert published.cli("promote", "version=99") == 2
    _one_line_error(capsys, NAME, "99")


def _register(shop: TinyShop, bundle: Path) -> str:
    """A new version, logged by a run of its own, from a copy of `bundle`."""
    c = shop.client()
    run = c.create_run(c.get_experiment_by_name("tinyshop").experiment_id)
    c.log_artifacts(run.info.run_id, str(bundle), "bundle")
    version = c.create_model_version(NAME, f"{run.info.artifact_uri}/bundle", run.info.run_id)
    return str(version.version)


def _damaged_copy(bundle: Path, into: Path) -> Path:
    broken = shutil.copytree(bundle, into)
    data = bytearray((broken / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (broken / "model.onnx").write_bytes(bytes(data))
    return broken


def test_promote_and_rollback_load_the_bundle_first(published, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MTLREC_BUNDLE_KEY", KEY)
    broken = _register(published, _damaged_copy(published.run.bundle.resolve(), tmp_path / "b"))
    assert published.cli("promote", f"version={broken}") == 2
    _one_line_error(capsys, f"version {broken}", "model.onnx")
    assert published.aliases()["champion"] == "1"
    c = published.client()  # a champion whose `previous` is the broken version
    good = _register(published, published.run.bundle.resolve())
    c.set_model_version_tag(NAME, good, "mtlrec.bundle_sha256",
                            c.get_model_version(NAME, "1").tags["mtlrec.bundle_sha256"])
    c.set_registered_model_alias(NAME, "champion", good)
    c.set_registered_model_alias(NAME, "previous", broken)
    assert published.cli("rollback") == 2
    _one_line_error(capsys, f"version {broken}", "rolled back to")
    assert published.aliases()["champion"] == good
    c.set_registered_model_alias(NAME, "champion", "1")  # as the module's other tests expect
    c.delete_registered_model_alias(NAME, "previous")


def test_the_serving_cache_never_keeps_a_refused_download(published, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MTLREC_BUNDLE_KEY", KEY)
    good = published.run.bundle.resolve()
    version = _register(published, good)
    published.client().set_model_version_tag(NAME, version, "mtlrec.bundle_sha256",
                                             published.client().get_model_version(NAME, "1").tags[
                                                 "mtlrec.bundle_sha256"])
    stored = _artifact_bundle(published, version) / "model.onnx"
    original = stored.read_bytes()
    stored.write_bytes(original[:100])  # the registry's copy is damaged
    assert _scored(published, tmp_path, f"model=models:/{NAME}/{version}") == 2
    _one_line_error(capsys, "model.onnx")
    stored.write_bytes(original)  # … and fixed
    assert _scored(published, tmp_path, f"model=models:/{NAME}/{version}") == 0


def test_a_bundle_altered_with_recomputed_checksums_is_refused(published, tmp_path, capsys, monkeypatch):
    """The checksums sit beside the files: whoever alters a file can recompute them (here
    the metrics the gate and the server report; the bundle still loads and passes parity).
    The digest the exporting run recorded in the registry, and the HMAC, still tell."""
    tampered = shutil.copytree(published.run.bundle.resolve(), tmp_path / "t")
    (tampered / "metrics.json").write_text(json.dumps({"validation": {"valid_mean_auc": 0.99}}))
    manifest = json.loads((tampered / "bundle.json").read_text())
    manifest["files"]["metrics.json"] = hashlib.sha256((tampered / "metrics.json").read_bytes()).hexdigest()
    (tampered / "bundle.json").write_text(json.dumps(manifest, indent=2))
    version = _register(published, tampered)
    c = published.client()
    c.set_model_version_tag(NAME, version, "mtlrec.bundle_sha256", c.get_model_version(NAME, "1").tags[
        "mtlrec.bundle_sha256"])  # the record of the bundle the exporting run wrote
    assert _scored(published, tmp_path, f"model=models:/{NAME}/{version}") == 2
    _one_line_error(capsys, "digest")
    monkeypatch.setenv("MTLREC_BUNDLE_KEY", KEY)
    assert _scored(published, tmp_path, f"model=models:/{NAME}/{version}") == 2
    _one_line_error(capsys)


def test_with_a_key_unsigned_and_mis_signed_bundles_are_refused(published, tmp_path, capsys, monkeypatch):
    assert _scored(published, tmp_path, "model=models:/tinyshop-ranker@champion") == 0  # no key: served
    monkeypatch.setenv("MTLREC_BUNDLE_KEY", "another key")
    assert _scored(published, tmp_path, "model=models:/tinyshop-ranker@champion") == 2
    _one_line_error(capsys, "MTLREC_BUNDLE_KEY")
    monkeypatch.setenv("MTLREC_BUNDLE_KEY", KEY)
    assert _scored(published, tmp_path, "model=models:/tinyshop-ranker@champion") == 0
    unsigned = FIXTURES / "legacy_champion" / "bundle"  # exported before signing existed
    assert _scored(published, tmp_path, f"model={unsigned}") == 2
    _one_line_error(capsys, "unsigned")
    assert published.cli("rollback") == 2  # nothing to roll back to: a clear error either way
    _one_line_error(capsys)


def test_a_version_whose_source_lies_outside_the_artifact_store_is_refused(published, tmp_path, capsys):
    outside = shutil.copytree(published.run.bundle.resolve(), tmp_path / "elsewhere")
    c = published.client()
    run = c.create_run(c.get_experiment_by_name("tinyshop").experiment_id)
    version = c.create_model_version(NAME, outside.as_uri(), run.info.run_id)
    assert _scored(published, tmp_path, f"model=models:/{NAME}/{version.version}") == 2
    _one_line_error(capsys, "outside", "artifact")
