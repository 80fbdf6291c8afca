"""MultiMNIST and QM9 through the same trainer, methods and CLI as the rankers: task
kinds (loss, metrics), the image and graph splits, every method on small subsets, and
train → evaluate from the CLI with MLflow, Δm% vs STL and the report."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch
from torch import nn

from helpers import COMBINATIONS, PRESETS, preset, shared_file
from mtlrec.features.qm9 import TARGETS
from mtlrec.pipeline import config
from mtlrec.pipeline.cli import main
from mtlrec.pipeline.targets import load_target
from mtlrec.pipeline.tracking import tracking_uri
from mtlrec.training.config import TrainerConfig
from mtlrec.training.loop import Trainer
from mtlrec.training.mtl.step import make_step
from mtlrec.features.errors import DataError
from mtlrec.training.tasks import MulticlassTask, RegressionTask, TaskSet, binary_tasks, validation_score

TINY = {
    "multimnist": ["data=multimnist", "data.rows.train=256", "data.rows.valid=128", "data.rows.test=128"],
    "qm9": ["data=qm9", "data.edges=bonds", "data.rows.train=64", "data.rows.valid=32", "data.rows.test=32"],
}
DATA_FILES = {"multimnist": "mnist/train-images-idx3-ubyte.gz", "qm9": "qm9/qm9.parquet"}


# ------------------------------------------------------------------- task kinds


def test_class_tasks_loss_is_per_task_cross_entropy_and_accuracy_counts_argmax():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]],
                           [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]])  # [B=2, K=2, C=3]
    labels = torch.tensor([[0, 2], [0, 1]])
    kind = TaskSet((MulticlassTask("left", ("0", "1", "2")), MulticlassTask("right", ("0", "1", "2"))))
    expected = torch.stack([nn.functional.cross_entropy(logits[:, k], labels[:, k], reduction="none")
                            for k in range(2)], dim=1)
    assert torch.allclose(kind.loss(logits, labels), expected)
    metrics = kind.metrics(labels.numpy(), logits.numpy())
    assert metrics["left"]["accuracy"] == 0.5  # row 1 predicts class 1, label 0
    assert metrics["right"]["accuracy"] == 0.5  # row 1 predicts class 0, label 1
    assert validation_score(kind, metrics, ["left", "right"]) == 0.5


def test_regression_tasks_report_mae_in_original_units_and_select_on_std_units():
    kind = TaskSet((RegressionTask("a", std=10.0, unit="meV"), RegressionTask("b", std=0.5, unit="D")))
    labels = np.array([[0.0, 1.0], [1.0, 1.0]], np.float32)
    outputs = np.array([[0.5, 1.0], [1.0, 3.0]], np.float32)  # |err|: a 0.5, 0; b 0, 2
    metrics = kind.metrics(labels, outputs)
    assert metrics["a"]["mae"] == pytest.approx(2.5) and metrics["a"]["mae_std_units"] == pytest.approx(0.25)
    assert metrics["b"]["mae"] == pytest.approx(0.5) and metrics["b"]["mae_std_units"] == pytest.approx(1.0)
    assert metrics["a"]["rmse"] == pytest.approx(10 * np.sqrt(0.125)) and metrics["b"]["rmse"] == pytest.approx(0.5 * np.sqrt(2))
    assert validation_score(kind, metrics, ["a", "b"]) == pytest.approx(0.625)
    assert not kind.higher_is_better
    assert torch.equal(kind.loss(torch.tensor(outputs), torch.tensor(labels)),
                       torch.tensor([[0.25, 0.0], [0.0, 4.0]]))


# ------------------------------------------------------------------- configuration


def test_benchmark_data_picks_its_model_and_refuses_a_ranker():
    cfg = config.load(["data=qm9"])
    assert (cfg.data.kind, cfg.model.arch, cfg.trainer.batch_size) == ("qm9", "mpnn", 128)
    assert config.load(["data=multimnist"]).model.arch == "lenet"
    with pytest.raises(config.ConfigError, match="model=mmoe does not fit data=multimnist.*model=lenet"):
        config.load(["data=multimnist", "model=mmoe"])
    with pytest.raises(config.ConfigError, match=r"data\.rows\.train"):
        config.load(["data=qm9", "data.rows.train=0"])
    with pytest.raises(config.ConfigError, match=r"data\.edges"):
        config.load(["data=qm9", "data.edges=ring"])


# ------------------------------------------------------------------- splits


@pytest.fixture(scope="module", params=["multimnist", "qm9"])
def target(request, tmp_path_factory):
    shared_file(DATA_FILES[request.param])
    work = tmp_path_factory.mktemp(request.param)
    cfg = config.load([*TINY[request.param], f"paths.work_dir={work}"])
    return request.param, cfg, load_target(cfg)


def test_splits_are_seeded_prefixes_with_labels_matching_batches(target):
    name, cfg, t = target
    train = t.split("train")
    assert len(train) == cfg.data.rows.train
    rows = torch.tensor([5, 0, 17])
    batch = t.split("train").batch(rows)
    assert len(batch) == 3
    assert torch.equal(batch.labels, train.labels[rows])
    if name == "qm9":
        assert train.labels.shape[1] == len(TARGETS)
        assert batch.inputs[0].num_graphs == 3
        assert (batch.inputs[0].edge_attr[:, 1] == 1).all()  # bond graphs: every edge a bond
    else:
        assert batch.inputs[0].shape == (3, 1, 28, 28) and 0 <= batch.inputs[0].min() <= batch.inputs[0].max() <= 1
    assert torch.equal(load_target(cfg).split("test").labels, t.split("test").labels)  # reproducible


@pytest.mark.parametrize("spec", ["stl", *PRESETS, *COMBINATIONS])
def test_every_method_trains_the_benchmark_models_to_finite_weights(target, spec):
    name, _, t = target
    method = preset(spec, diagnostics_every=2, dtjs={"every": 2, "dev_batch_size": 16},
                    grouped={"warmup_steps": 2, "regroup_every": 2})
    index = [0] if method.single_task else list(range(len(t.tasks)))
    torch.manual_seed(0)
    model = t.model(config.load([f"data={name}"]).model, index)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainerConfig(max_epochs=1, batch_size=32 if name == "qm9" else 64, lr=1e-3, device="cpu")
    trainer = Trainer(model, make_step(method, model, cfg, len(index), 0), cfg,
                      [t.tasks[k] for k in index], index, seed=0, kind=t.kind.subset(index))
    result = trainer.fit(t.split("train"), t.split("valid"))
    assert np.isfinite(result.history[0]["train_loss"]) and np.isfinite(result.best_valid_score)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_multimnist_lenet_learns_both_digits():
    shared_file(DATA_FILES["multimnist"])
    cfg = config.load(["data=multimnist", "data.rows.train=3000", "data.rows.valid=500"])
    t = load_target(cfg)
    torch.manual_seed(0)
    model = t.model(cfg.model, [0, 1])
    trainer_cfg = TrainerConfig(max_epochs=2, batch_size=64, lr=3e-3, device="cpu")
    trainer = Trainer(model, make_step(cfg.method, model, trainer_cfg, 2, 0), trainer_cfg, t.tasks,
                      [0, 1], seed=0, kind=t.kind)
    trainer.fit(t.split("train"), t.split("valid"))
    metrics = trainer.evaluate(t.split("valid"))
    assert metrics["left"]["accuracy"] > 0.4 and metrics["right"]["accuracy"] > 0.4  # chance: 0.1


# ------------------------------------------------------------------- the CLI


@pytest.mark.slow
@pytest.mark.parametrize("name,method", [("multimnist", "dtjs"), ("qm9", "dbmtl")])
def test_cli_trains_and_evaluates_against_stl_with_mlflow_and_report(tmp_path, name, method):
    shared_file(DATA_FILES[name])
    args = [*TINY[name], f"paths.work_dir={tmp_path}", "trainer.max_epochs=2",
            "method.diagnostics_every=2"]
    assert main(["ingest", *args]) == 0  # benchmarks: builds and checks the data only
    for m in ("stl", method):
        assert main(["train", *args, f"method={m}"]) == 0
        assert main(["evaluate", *args, f"method={m}"]) == 0
    cfg = config.load([*args, f"method={method}"])
    run_dir = tmp_path / "runs" / name / f"{cfg.model.arch}-{method}-seed{cfg.seed}"
    metrics = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    stl = json.loads((tmp_path / "runs" / name / f"{cfg.model.arch}-stl-seed{cfg.seed}" / "evaluation"
                      / "metrics.json").read_text())
    t = load_target(cfg)
    assert list(metrics["tasks"]) == t.tasks and metrics["rows"] == cfg.data.rows.test
    metric = t.kind.tasks[0].metric  # one kind: accuracy (MultiMNIST) or MAE (QM9)
    values = {k: m[metric] for k, m in metrics["tasks"].items()}
    base = {k: m[metric] for k, m in stl["tasks"].items()}
    sign = 1 if t.kind.higher_is_better else -1
    expected = 100 * np.mean([sign * (values[k] - base[k]) / base[k] for k in t.tasks])
    assert metrics["delta_m_pct"] == pytest.approx(expected)
    if name == "qm9":  # MAE in the papers' units: std-unit MAE × training std × unit factor
        std = dict(zip([x.name for x in TARGETS], load_qm9_std(cfg)))
        for target_spec in TARGETS:
            m = metrics["tasks"][target_spec.name]
            assert m["mae"] == pytest.approx(m["mae_std_units"] * std[target_spec.name] * target_spec.paper_scale)
        assert metrics["units"]["u0"] == "meV"
    report = (run_dir / "evaluation" / "report.md").read_text()
    assert f"Δm% vs STL (test {metric}" in report and "## Gradient conflict (diagnostics-all)" in report
    assert (run_dir / "evaluation" / "diagnostics-all-conflict.png").stat().st_size > 0
    run = mlflow.MlflowClient(tracking_uri(tmp_path)).get_run(
        json.loads((run_dir / "run.json").read_text())["run_id"])
    assert f"test_{t.tasks[0]}_{metric}" in run.data.metrics
    assert "test_delta_m_pct" in run.data.metrics
    assert f"valid_mean_{t.kind.select}" in run.data.metrics
    assert any(k.startswith("grad_cosine.") for k in run.data.metrics)


def load_qm9_std(cfg) -> np.ndarray:
    from mtlrec.features.qm9 import load_qm9

    return load_qm9(cfg.data.path, seed=cfg.data.split_seed, limit=1).stats.std


def test_export_refuses_a_benchmark_run(tmp_path, capsys):
    assert main(["export", "data=multimnist", f"paths.work_dir={tmp_path}"]) == 2
    assert "export is for rankers" in capsys.readouterr().err


def test_a_task_without_a_defined_auc_is_left_out_of_selection_with_a_warning(caplog):
    """A task whose validation labels are all one class has no AUC: the score is the other
    tasks' mean (not NaN, which would leave every epoch unselected), and says so."""
    kind = binary_tasks(["click", "purchase"])
    labels = np.array([[0, 0], [1, 0], [1, 0], [0, 0]], np.float32)  # task "purchase": all 0
    outputs = np.array([[-1.0, 0.2], [2.0, 0.1], [0.5, -0.3], [0.1, 0.0]], np.float32)
    metrics = kind.metrics(labels, outputs)
    assert np.isnan(metrics["purchase"]["auc"]) and metrics["click"]["auc"] == 1.0
    with caplog.at_level("WARNING"):
        assert validation_score(kind, metrics, ["click", "purchase"]) == 1.0
    assert "purchase" in caplog.text and "selected on click" in caplog.text
    with pytest.raises(DataError, match="no task has a defined validation auc"):
        validation_score(kind, kind.metrics(labels[:, [1, 1]], outputs), ["click", "purchase"])
