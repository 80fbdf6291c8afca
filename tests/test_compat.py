"""A champion exported before the spine change (tests/fixtures/legacy_champion, made by
commit 5e20ca2) still serves, scores and warm-starts retraining, and its
model_config.json (every architecture's keys, as files of that time list them) still
loads. The data set is defined only in a user config folder (tests/fixtures/userconf)."""

from __future__ import annotations


import httpx
import numpy as np
import polars as pl
import pytest
import torch

from helpers import FIXTURES, TINY_SHOP_MODEL, Server, TinyShop, tiny_shop_logs
from mtlrec.features.folder import FeatureInfo
from mtlrec.models.config import MMoEConfig, load_model_config
from mtlrec.pipeline.retrain import warm_start_from
from mtlrec.pipeline.run_folder import RunFolder
from mtlrec.pipeline.targets import build_ranker
from mtlrec.serving import bundle

LEGACY = FIXTURES / "legacy_champion"
NAME = TINY_SHOP_MODEL
SMALL = ["data=tinyshop", "model.embedding_dim=4", "model.n_experts=2", "model.expert_hidden=[8]",
         "model.tower_hidden=[4]", "trainer.max_epochs=1", "trainer.batch_size=128",
         "gate.auc_tolerance=0.5", "gate.logloss_tolerance=1.0"]


def test_a_model_config_written_before_the_per_architecture_types_loads():
    text = (LEGACY / "model_config.json").read_text()
    assert '"levels"' in text and '"hidden"' in text  # it lists every architecture's keys
    cfg = load_model_config(text)
    assert isinstance(cfg, MMoEConfig)
    assert (cfg.embedding_dim, cfg.n_experts, cfg.expert_hidden, cfg.tower_hidden) == (4, 2, [8], [4])


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> TinyShop:
    """The tiny shop, whose MLflow registry has the legacy champion as version 1."""
    shop = TinyShop(tmp_path_factory.mktemp("compat"), SMALL)
    shop.work.mkdir()
    client = shop.client()
    experiment = client.create_experiment("tinyshop", artifact_location=(shop.work / "mlartifacts").as_uri())
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(LEGACY))  # as that commit's train + export logged it
    client.set_terminated(run.info.run_id)
    client.create_registered_model(NAME)
    version = client.create_model_version(NAME, f"{run.info.artifact_uri}/bundle", run.info.run_id)
    client.set_registered_model_alias(NAME, "champion", version.version)
    return shop


def _expected_scores(rows: pl.DataFrame) -> np.ndarray:
    """The legacy bundle's own scores of raw rows, through its transform and onnxruntime."""
    model = bundle.load(LEGACY / "bundle")
    typed = rows.with_columns(pl.col("price", "age").cast(pl.Float64), pl.col("click", "buy").cast(pl.Float32))
    return model.score(typed)[0]


def test_the_legacy_champion_scores_a_parquet_file(work, tmp_path):
    day = pl.read_csv(tiny_shop_logs(tmp_path / "new", 1, seed=99, start="2026-11-20")[0],
                      schema_overrides={"rid": pl.String})
    day.write_parquet(tmp_path / "in.parquet")
    assert work.cli("score", f"input={tmp_path / 'in.parquet'}", f"output={tmp_path / 'out.parquet'}") == 0
    scored = pl.read_parquet(tmp_path / "out.parquet")
    assert scored["rid"].to_list() == day["rid"].to_list()
    np.testing.assert_allclose(scored.select("ctr", "ctcvr").to_numpy(), _expected_scores(day), atol=1e-6)


@pytest.mark.slow
def test_the_legacy_champion_serves_over_http(work, tmp_path):
    day = pl.read_csv(tiny_shop_logs(tmp_path / "new", 1, seed=98, start="2026-11-21")[0],
                      schema_overrides={"rid": pl.String}).head(50)
    server = Server(["--config-dir", str(work.conf), "serve", f"paths.work_dir={work.work}",
                     "data=tinyshop", "serve.poll_seconds=0"])
    try:
        rows = day.select("shop", "item", "price", "age").to_dicts()
        response = httpx.post(f"{server.url}/predict", json={"rows": rows}, timeout=30)
    finally:
        server.stop()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "1"
    got = np.array([[s["ctr"], s["ctcvr"]] for s in body["scores"]])
    np.testing.assert_allclose(got, _expected_scores(day), atol=1e-6)


@pytest.mark.slow
def test_the_legacy_champion_warm_starts_retraining(work):
    tiny_shop_logs(work.landing, 4, seed=11, start="2026-11-05")
    assert work.cli("retrain") == 0
    job = work.work / "retrain" / "tinyshop" / "jobs" / "2026-11-08"
    champion = RunFolder(job / "champion")
    assert champion.state().registered_version == "1"
    # the warm start copies the legacy weights into a model of the job's own vocabulary
    info = FeatureInfo.load(job / "features" / "artifacts")
    fresh = build_ranker(champion.model_config(), info)
    warm_start_from(champion)(fresh)
    legacy = torch.load(LEGACY / "model" / "model.pt", weights_only=True)
    for name, tensor in fresh.state_dict().items():
        if not name.startswith("embeddings."):
            assert torch.equal(tensor, legacy[name]), name
    versions = work.client().search_model_versions(f"name = '{NAME}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]  # the retrained model was published
