"""Labels of every kind from a conf file: regression (log1p, standardised on the training
split), multiclass, optional labels, `mask_by`, sample weights — ingested, trained on and
scored per kind; missing labels leave a task out of the step without touching its state."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

import httpx

from helpers import TINY_SHOP_MODEL, Server, TinyShop, preset, read_quarantine, small_spec, tiny_shop_logs, write_csv
from mtlrec.features.folder import FeatureInfo
from mtlrec.features.ingest import ingest
from mtlrec.pipeline.cli import main
from mtlrec.training.config import TrainerConfig
from mtlrec.training.metrics import auc, logloss_from_logits
from mtlrec.training.mtl.step import make_step
from mtlrec.training.step import Pass
from mtlrec.training.tasks import BinaryTask, MulticlassTask, RegressionTask, TaskSet, validation_score

HEADER = ["sid", "cat_a", "num_x", "click", "conversion", "spend", "page", "rating", "w"]
LABELS = [
    {"name": "ctr", "column": "click"},
    {"name": "cvr", "column": "conversion", "mask_by": "ctr"},
    {"name": "spend", "kind": "regression", "column": "spend", "log1p": True, "unit": "EUR"},
    {"name": "page", "kind": "multiclass", "column": "page", "classes": ["home", "search", "cart"]},
    {"name": "rating", "kind": "regression", "column": "rating", "optional": True, "standardize": False},
]
BAD = {  # sid → (row values changed, the reason it must give)
    "90": ({"spend": "abc"}, "spend: label must be a finite number, got 'abc'"),
    "91": ({"spend": "-3"}, "label 'spend' is learnt as log1p and must be >= 0, got '-3'"),
    "92": ({"page": "checkout"}, "page: value 'checkout' is not one of the classes of label 'page'"),
    "93": ({"page": ""}, "page: missing required value"),
    "94": ({"w": "-1"}, "w: weight must be a finite number >= 0, got '-1'"),
    "95": ({"click": "1", "conversion": ""}, "conversion: missing required value"),
}


def _rows() -> list[dict[str, str]]:
    rows = []
    for i in range(60):
        click = i % 3 == 0
        rows.append({"sid": str(i), "cat_a": f"a{i % 4}", "num_x": str(i % 7), "click": str(int(click)),
                     "conversion": str(int(click and i % 2 == 0)) if click else ("" if i % 4 == 1 else "0"),
                     "spend": f"{(i * 7) % 23 * 1.5}", "page": ["home", "search", "cart"][i % 3],
                     "rating": "" if i % 5 == 0 else str(i % 5), "w": str(1 + i % 3)})
    for sid, (change, _) in BAD.items():
        rows.append(rows[0] | {"sid": sid} | change)
    return rows


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mixed")
    rows = _rows()
    source = write_csv(folder / "logs.csv", [[r[c] for c in HEADER] for r in rows], header=HEADER)
    spec = small_spec(str(source), categorical=[{"name": "cat_a"}], numeric=[{"name": "num_x"}],
                      labels=LABELS, weight="w", checks={"implies": [], "max_reject_ratio": 0.5})
    out = ingest(spec, folder / "features")
    return rows, out


def test_each_kind_is_validated_and_bad_labels_are_quarantined_with_their_reason(mixed):
    _, out = mixed
    quarantine = read_quarantine(out.path)
    reasons = dict(zip(quarantine["sid"].to_list(), quarantine["reason"].to_list()))
    assert set(reasons) == set(BAD)
    for sid, (_, reason) in BAD.items():
        assert reason in reasons[sid]


def test_model_ready_labels_are_typed_masked_and_standardised_on_the_training_split(mixed):
    rows, out = mixed
    raw = {r["sid"]: r for r in rows if r["sid"] not in BAD}
    data = pl.read_parquet(out.data_dir, hive_partitioning=True)
    assert data.height == len(raw)
    train_spend = [math.log1p(float(raw[s]["spend"])) for s in data.filter(pl.col("split") == "train")["sid"].cast(str)]
    mean, std = float(np.mean(train_spend)), float(np.std(train_spend))
    for r in data.iter_rows(named=True):
        row = raw[str(r["sid"])]
        click = row["click"] == "1"
        assert r["ctr"] == float(click)
        assert (r["cvr"] is None) == (not click)  # CVR only on the click space
        if click:
            assert r["cvr"] == float(row["conversion"])
        assert r["spend"] == pytest.approx((math.log1p(float(row["spend"])) - mean) / std, abs=1e-5)
        assert r["page"] == ["home", "search", "cart"].index(row["page"])
        assert r["rating"] == (None if row["rating"] == "" else float(row["rating"]))  # kept, not standardised
        assert r["__weight"] == float(row["w"])
    info = FeatureInfo.load(out.artifacts_dir)
    assert [(t.kind, t.width, t.may_be_missing) for t in info.task_info] == [
        ("binary", 1, False), ("binary", 1, True), ("regression", 1, False), ("multiclass", 3, False),
        ("regression", 1, True)]
    spend = info.task_info[2]
    assert (spend.mean, spend.std, spend.log1p, spend.unit) == (pytest.approx(mean), pytest.approx(std), True, "EUR")
    assert info.weighted


def test_weighted_auc_and_logloss_equal_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500).astype(float)
    z = rng.integers(-3, 4, 500).astype(float)  # many ties
    w = rng.uniform(0.1, 3.0, 500)
    assert auc(y, z, w) == pytest.approx(roc_auc_score(y, z, sample_weight=w), abs=1e-12)
    assert auc(y, z, np.ones(500)) == pytest.approx(auc(y, z), abs=1e-12)
    p = 1 / (1 + np.exp(-z))
    assert logloss_from_logits(y, z, w) == pytest.approx(log_loss(y, p, sample_weight=w), rel=1e-9)
    integer = rng.integers(1, 4, 500)  # a weight of n counts as n copies of the row
    assert auc(y, z, integer) == pytest.approx(auc(np.repeat(y, integer), np.repeat(z, integer)), abs=1e-12)


def test_a_mixed_task_set_replays_each_kind_and_skips_missing_labels():
    kinds = TaskSet((BinaryTask("click", logit_offset=math.log(0.5)),
                     RegressionTask("dwell", mean=1.0, std=2.0, log1p=True, loss_name="huber", huber_delta=0.5),
                     MulticlassTask("intent", ("a", "b", "c"))), may_skip=True)
    out = torch.tensor([[0.3, 0.5, 1.0, 0.0, -1.0], [-1.0, -2.0, 0.0, 2.0, 0.0], [2.0, 0.1, 0.0, 0.0, 3.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [0.0, float("nan"), 2.0], [1.0, 1.0, 2.0]])
    losses = kinds.loss(out, labels)
    expected = torch.stack([
        torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], labels[:, 0], reduction="none"),
        torch.nn.functional.huber_loss(out[:, 1], torch.nan_to_num(labels[:, 1]), reduction="none", delta=0.5),
        torch.nn.functional.cross_entropy(out[:, 2:], labels[:, 2].long(), reduction="none")], dim=1)
    assert torch.allclose(losses, expected)
    weights = kinds.row_weights(labels, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [1.0, 1.0, 0.5]]))
    assert weights.tolist() == [[1.0, 1.0, 1.0], [2.0, 0.0, 2.0], [1.0, 1.0, 0.5]]
    metrics = kinds.metrics(labels.numpy(), out.numpy())
    # dwell: rows 0 and 2 only; in seconds expm1(v·2 + 1)
    err = [abs(math.expm1(0.5 * 2 + 1) - math.expm1(0 * 2 + 1)), abs(math.expm1(0.1 * 2 + 1) - math.expm1(1 * 2 + 1))]
    assert metrics["dwell"]["mae"] == pytest.approx(np.mean(err))
    assert metrics["intent"]["accuracy"] == pytest.approx(2 / 3)  # row 1 predicts b, not c
    # the click's probability is calibrated by the offset: σ(z + log 0.5)
    p = 1 / (1 + np.exp(-(out[:, 0].numpy() + math.log(0.5))))
    assert metrics["click"]["mean_prediction"] == pytest.approx(float(p.mean()))
    assert kinds.select == "skill"  # kinds differ: AUC, R², accuracy, each higher-is-better
    assert validation_score(kinds, metrics, kinds.names) == pytest.approx(
        np.mean([metrics["click"]["auc"], metrics["dwell"]["r2"], metrics["intent"]["accuracy"]]))


class _Model(torch.nn.Module):
    """A shared layer and one linear head per task of `keep`."""

    def __init__(self, shared: torch.nn.Linear, heads: torch.nn.ModuleList, keep: list[int]) -> None:
        super().__init__()
        self.shared, self.heads, self.keep = shared, heads, keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.shared(x))
        return torch.cat([self.heads[k](h) for k in self.keep], dim=1)

    def shared_parameters(self, include_embeddings: bool = False) -> list[torch.nn.Parameter]:
        return list(self.shared.parameters())


@pytest.mark.parametrize("name", ["mgda", "dbmtl", "grouped"])
def test_a_task_without_labels_in_a_batch_is_left_out_and_its_state_untouched(name):
    """MGDA would be zeroed by a zero row, DB-MTL would take log 0: while task 1 has no
    label, the step equals the step of a model of tasks 0 and 2 alone (MGDA, DB-MTL: same
    parameters), and task 1's state stays what it was when it last had labels."""
    torch.manual_seed(0)
    x, y = torch.randn(32, 6), torch.randn(32, 3)
    shared, heads = torch.nn.Linear(6, 8), torch.nn.ModuleList(torch.nn.Linear(8, 1) for _ in range(3))
    full = _Model(shared, heads, [0, 1, 2])
    pair = _Model(copy.deepcopy(shared), torch.nn.ModuleList([copy.deepcopy(heads[0]), copy.deepcopy(heads[2])]), [0, 1])
    method = preset(name, diagnostics_every=0, grouped={"warmup_steps": 0, "regroup_every": 1})
    cfg = TrainerConfig(lr=0.01)
    step_full, step_pair = make_step(method, full, cfg, 3, 0), make_step(method, pair, cfg, 2, 0)
    kinds = TaskSet((RegressionTask("a"), RegressionTask("b"), RegressionTask("c")), may_skip=True)
    unlabelled = y.clone()
    unlabelled[:, 1] = float("nan")
    for i, labels in enumerate([unlabelled, unlabelled, y, unlabelled, unlabelled]):
        w = kinds.row_weights(labels, None)
        before = copy.deepcopy(step_full.states)
        losses = step_full.train_batch(lambda split: Pass(kinds.loss(full(x), labels), weights=w),
                                       labelled=w.sum(0))
        assert torch.isfinite(losses).all() and all(torch.isfinite(p).all() for p in full.parameters())
        if i >= 3:  # task 1 lost its labels again: its state is frozen
            for part, state in step_full.states.items():
                if isinstance(state, dict) and 1 in state:
                    assert _equal(state[1], before[part][1]), f"{part}: state of the unlabelled task changed"
            if name == "grouped":
                affinity, old = step_full.states["schedule"]["affinity"], before["schedule"]["affinity"]
                assert torch.equal(affinity[:, 1], old[:, 1]) and torch.equal(affinity[1], old[1])
        if i < 2 and name != "grouped":  # a grouped step shuffles its 3 groups, the pair's 2
            step_pair.train_batch(lambda split: Pass(kinds.subset([0, 2]).loss(pair(x), y[:, [0, 2]])))
            for a, b in zip(full.shared.parameters(), pair.shared.parameters()):
                assert torch.allclose(a, b, atol=1e-6)
            for k, j in ((0, 0), (2, 1)):
                assert torch.allclose(full.heads[k].weight, pair.heads[j].weight, atol=1e-6)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_mixed_kinds_train_evaluate_export_serve_and_score_from_one_conf_file(tmp_path):
    """data=synth_mixed: CTR, CTCVR, dwell time (regression, log1p, Huber, on clicks only,
    optional) and intent (3 classes) in one MMoE; every kind learns something; the bundle
    answers each task in its kind (a probability, seconds, class probabilities) over HTTP
    and in batch, and scoring the test day's raw logs through it gives the offline metrics."""
    args = [f"paths.work_dir={tmp_path}", "data=synth_mixed", "synth.rows_per_day=12000", "synth.days=3",
            "synth.ctr=0.2", "synth.cvr=0.3", "synth.signal=2.5", "trainer.lr=0.003", "model.expert_hidden=[16]",
            "model.tower_hidden=[8]", "trainer.max_epochs=2", "trainer.batch_size=256", "trainer.threads=1"]
    for stage in ("synth", "ingest"):
        assert main([stage, *args]) == 0
    for stage in ("train", "evaluate"):  # the STL baseline: one model per task, each of its kind
        assert main([stage, *args, "method=stl", "model=hps"]) == 0
    for stage in ("train", "evaluate", "export"):
        assert main([stage, *args]) == 0
    metrics = json.loads(next(tmp_path.glob("runs/synth_mixed/mmoe-*/evaluation/metrics.json")).read_text())
    stl = json.loads(next(tmp_path.glob("runs/synth_mixed/hps-stl-*/evaluation/metrics.json")).read_text())
    headline = {"ctr": "auc", "ctcvr": "auc", "dwell": "mae", "intent": "accuracy"}
    assert metrics["headline"] == headline and metrics["stl"] == {t: stl["tasks"][t][m] for t, m in headline.items()}
    expected = 100 * np.mean([(-1 if m == "mae" else 1) * (metrics["tasks"][t][m] - stl["tasks"][t][m])
                              / stl["tasks"][t][m] for t, m in headline.items()])
    assert metrics["delta_m_pct"] == pytest.approx(expected)  # each metric in its own direction
    tasks = metrics["tasks"]
    assert tasks["ctr"]["auc"] > 0.55 and tasks["ctcvr"]["auc"] > 0.55
    assert tasks["dwell"]["r2"] > 0.05 and metrics["units"] == {"dwell": "s"}
    assert tasks["intent"]["accuracy"] > 0.38  # chance: about 1/3
    assert {"mean_auc", "mean_mae", "mean_accuracy", "mean_skill"} <= set(metrics)

    test_day = next(tmp_path.glob("landing/synth/day=2026-11-03.csv"))
    model = "model=models:/synth_mixed-ranker@champion"
    assert main(["evaluate", *args, model, f"evaluate.logs='{test_day}'"]) == 0
    served = json.loads(next(tmp_path.glob("evaluations/*.json")).read_text())["tasks"]
    for task, name in (("ctr", "auc"), ("ctcvr", "logloss"), ("dwell", "mae"), ("intent", "accuracy")):
        assert served[task][name] == pytest.approx(tasks[task][name], rel=1e-4), (task, name)

    raw = pl.read_csv(test_day, n_rows=50, schema_overrides={"search_id": pl.String, "tags": pl.String} | {
        f"categorical_{j}": pl.String for j in range(1, 17)})
    raw.write_parquet(tmp_path / "in.parquet")
    assert main(["score", *args, model, f"input={tmp_path / 'in.parquet'}", f"output={tmp_path / 'out.parquet'}"]) == 0
    scores = pl.read_parquet(tmp_path / "out.parquet")
    assert scores.columns == ["search_id", "ctr", "ctcvr", "dwell", "intent:browse", "intent:buy", "intent:other"]
    assert np.allclose(scores.select("intent:browse", "intent:buy", "intent:other").sum_horizontal(), 1, atol=1e-5)
    assert (scores["dwell"] > 0).all() and scores["ctr"].is_between(0, 1).all()

    server = Server(["serve", *args, model])
    try:
        rows = raw.drop("click", "conversion", "dwell", "intent", "day").head(5).to_dicts()
        answer = httpx.post(server.url + "/predict", json={"rows": rows}).json()["scores"]
        for row, batch in zip(answer, scores.head(5).iter_rows(named=True)):
            assert row["ctr"] == pytest.approx(batch["ctr"], abs=1e-6)
            assert row["dwell"] == pytest.approx(batch["dwell"], rel=1e-5)
            assert row["intent"] == pytest.approx({c: batch[f"intent:{c}"] for c in ("browse", "buy", "other")}, abs=1e-6)
        outputs = httpx.get(server.url + "/v2/models/synth_mixed-ranker").json()["outputs"]
        assert outputs[3] == {"name": "intent", "datatype": "FP32", "shape": [-1, 3],
                              "parameters": {"classes": ["browse", "buy", "other"]}}
    finally:
        server.stop()


def test_negative_downsampling_is_calibrated_back_to_the_full_data_rate(tmp_path):
    """`data.sampling` keeps 20% of the training rows without a click: the CTR is learnt on
    the downsampled rows and scored p / (p + (1 − p)/r) (its logit + log r), CTCVR is learnt
    with weight 1/r on the kept non-click rows. On the full-data test day, with a schedule
    that converges, both mean predictions are within 5% of the base rate, offline and as
    served."""
    sampling = "data.sampling={task:ctr,negative_rate:0.2}"
    shop = TinyShop(tmp_path, ["data=tinyshop", "model=hps", "model.expert_hidden=[16]", "model.tower_hidden=[8]",
                               "trainer.max_epochs=10", "trainer.patience=10", "trainer.lr_schedule=cosine",
                               "trainer.batch_size=256", "trainer.lr=0.003", "trainer.threads=1", sampling])
    tiny_shop_logs(shop.landing, days=4, rows_per_day=20_000)
    assert shop.cli("ingest") == 0
    manifest = json.loads(next(tmp_path.glob("work/features/tinyshop/manifest.json")).read_text())
    train, dropped = manifest["split_rows"]["train"], manifest["rows_downsampled"]
    data = pl.read_csv(sorted(shop.landing.glob("day=*.csv"))[:2])  # the training days
    negatives = int((data["click"] == 0).sum())
    assert train + dropped == data.height and dropped == pytest.approx(0.8 * negatives, rel=0.03)
    for stage in ("train", "evaluate", "export"):
        assert shop.cli(stage) == 0
    tasks = json.loads(next(tmp_path.glob("work/runs/tinyshop/hps-*/evaluation/metrics.json")).read_text())["tasks"]
    for task in ("ctr", "ctcvr"):
        assert tasks[task]["calibration"] == pytest.approx(1.0, abs=0.05), task
    test_day = sorted(shop.landing.glob("day=*.csv"))[-1]
    assert shop.cli("evaluate", f"model=models:/{TINY_SHOP_MODEL}@champion", f"evaluate.logs='{test_day}'") == 0
    served = json.loads(next(tmp_path.glob("work/evaluations/*.json")).read_text())["tasks"]
    for task in ("ctr", "ctcvr"):
        assert served[task]["calibration"] == pytest.approx(tasks[task]["calibration"], rel=1e-3), task


def test_a_streamed_split_carries_the_same_labels_and_weights_as_one_in_memory(mixed):
    """trainer.data=stream: the weights and missing labels of every batch equal those of
    the in-memory split's batches (both in file order)."""
    from mtlrec.features.batches import SplitData
    from mtlrec.features.stream import StreamSplit, make_loader
    _, out = mixed
    memory = SplitData(out, "train")
    stream = StreamSplit(out, "train", budget_bytes=1 << 20)
    assert memory.weights is not None
    assert torch.equal(stream.weights, memory.weights)
    assert torch.equal(torch.nan_to_num(stream.labels, -1), torch.nan_to_num(memory.labels, -1))
    batches = list(make_loader(stream, 7, shuffle=False))
    assert torch.equal(torch.cat([b.weights for b in batches]), memory.weights)


def test_the_gate_checks_each_task_by_its_own_metrics():
    """AUC and logloss for a binary task, MAE within 1% (relative) for a regression task,
    accuracy and cross-entropy for a multiclass one; each failure names task and metric."""
    from mtlrec.pipeline.config import GateConfig
    from mtlrec.pipeline.registry import compare
    champion = {"ctr": {"auc": 0.70, "logloss": 0.40}, "dwell": {"mae": 4.00, "rmse": 6.0},
                "intent": {"accuracy": 0.50, "cross_entropy": 1.00}}
    close = {"ctr": {"auc": 0.699, "logloss": 0.4005}, "dwell": {"mae": 4.039, "rmse": 9.0},
             "intent": {"accuracy": 0.499, "cross_entropy": 1.0009}}
    result = compare(close, champion, GateConfig())
    assert result.passed and set(result.tasks["dwell"]) == {"candidate_mae", "champion_mae", "mae_diff", "mae_ok"}
    worse = close | {"dwell": {"mae": 4.05, "rmse": 6.0}, "intent": {"accuracy": 0.49, "cross_entropy": 1.0}}
    result = compare(worse, champion, GateConfig())
    assert not result.passed and not result.tasks["dwell"]["mae_ok"] and not result.tasks["intent"]["accuracy_ok"]
    assert [f.split(" ")[:2] for f in result.failures] == [["dwell:", "MAE"], ["intent:", "accuracy"]]
