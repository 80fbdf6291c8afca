"""The training loop: learning, early stopping, atomic checkpoints and exact resume."""

from __future__ import annotations

import itertools

import pyarrow.parquet as pq
import pytest
import torch

from mtlrec.features.batches import RowLayout, SplitData
from mtlrec.features.folder import FeaturesFolder
from mtlrec.features.ingest import ingest
from mtlrec.features.stream import StreamSplit
from mtlrec.features.synth import SynthParams, generate
from mtlrec.models.config import model_config
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline import config
from mtlrec.training import checkpoint
from mtlrec.training.loop import Trainer
from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.mtl.step import make_step

CARDS = (5000, 2000, 1000, 500, 200, 100, 50, 20, 10, 8, 6, 5, 4, 3, 2, 2)


@pytest.fixture(scope="module")
def synth_features(tmp_path_factory) -> FeaturesFolder:
    root = tmp_path_factory.mktemp("synth")
    # without the multi-valued tags: the thresholds below were set on these logs (the
    # pipeline tests train on the default logs, tags included)
    generate(SynthParams(days=3, rows_per_day=4000, cardinalities=CARDS, ctr=0.2, cvr=0.3, tags=0),
             root / "landing")
    spec = config.load([f"synth.out_dir={root / 'landing'}"]).data
    spec = spec.model_copy(update={"categorical": [f for f in spec.categorical if not f.multi]})
    return ingest(spec, root / "features")


@pytest.fixture(scope="module")
def synth_splits(synth_features):
    return synth_features.info(), SplitData(synth_features, "train"), SplitData(synth_features, "valid")


@pytest.fixture(scope="module")
def streamed_splits(synth_features, tmp_path_factory):
    """The same rows rewritten in row groups of 500 and streamed in windows of ~2 groups."""
    info = synth_features.info()
    folder = FeaturesFolder(tmp_path_factory.mktemp("streamed"))
    for name in ("train", "valid"):
        table = pq.read_table(synth_features.data_dir / f"split={name}")
        (folder.data_dir / f"split={name}").mkdir(parents=True)
        pq.write_table(table.drop_columns([c for c in table.column_names if c.startswith("day")]),
                       folder.data_dir / f"split={name}" / "part.parquet", row_group_size=500)
    folder.artifacts_dir.mkdir()
    info.save(folder.artifacts_dir)
    window = 1100 * 4 * RowLayout.of(info).row_bytes
    return (info, StreamSplit(folder, "train", budget_bytes=window),
            StreamSplit(folder, "valid", budget_bytes=window))


EW = MethodConfig(name="ew")
METHODS = {
    "pcgrad": MethodConfig(name="pcgrad", aggregate="pcgrad"),
    "dbmtl": MethodConfig(name="dbmtl", loss="log", aggregate="dbmtl"),
    "mocograd": MethodConfig(name="mocograd", aggregate="mocograd"),
    "log+mocograd": MethodConfig(name="log+mocograd", loss="log", aggregate="mocograd"),
    "mgda": MethodConfig(name="mgda", aggregate="mgda"),
    "cagrad": MethodConfig(name="cagrad", aggregate="cagrad"),
    "imtl_g": MethodConfig(name="imtl_g", aggregate="imtl_g"),
    "rlw": MethodConfig(name="rlw", weighting="rlw"),
    "gls": MethodConfig(name="gls", weighting="gls"),
    "gradvac": MethodConfig(name="gradvac", aggregate="gradvac"),
}


def _trainer(info, ckpt, epochs=3, on_epoch=None, seed=0, patience=10, lr=1e-3, method=EW,
             checkpoint_minutes=10.0):
    torch.manual_seed(seed)
    model = MultiTaskRanker(model_config(arch="mmoe", n_experts=2, expert_hidden=[16], tower_hidden=[8],
                                        dropout=0.1), info.table_sizes, len(info.numeric), len(info.tasks),
                            info.pooling)
    cfg = TrainerConfig(max_epochs=epochs, batch_size=256, patience=patience, device="cpu",
                        lr_schedule="cosine", lr=lr, checkpoint_minutes=checkpoint_minutes)
    return Trainer(model, make_step(method, model, cfg, 2, 0), cfg, info.tasks, [0, 1], seed=7, checkpoint_path=ckpt,
                   on_epoch=on_epoch)


def test_training_learns_the_ground_truth(synth_splits, tmp_path):
    info, train, valid = synth_splits
    result = _trainer(info, tmp_path / "c.pt", epochs=3, lr=1e-2).fit(train, valid)
    assert result.best_valid_score > 0.6
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 1.05


RESUMABLE = {
    "ew": EW, "mocograd": METHODS["mocograd"],
    "adatask+pcgrad": MethodConfig(name="adatask+pcgrad", optimizer="adatask_adam", aggregate="pcgrad"),
    "dtjs": MethodConfig(name="dtjs", loss="superloss", aggregate="dtjs", outer="dtjs",
                         dtjs={"every": 5, "dev_batch_size": 128}),
    "grouped": MethodConfig(name="grouped", schedule="grouped", grouped={"warmup_steps": 10, "regroup_every": 5}),
    "uw": MethodConfig(name="uw", weighting="uw"), "famo": MethodConfig(name="famo", weighting="famo"),
    "gradnorm": MethodConfig(name="gradnorm", aggregate="gradnorm"),
    "dwa": MethodConfig(name="dwa", weighting="dwa"),
}


@pytest.mark.parametrize("method", RESUMABLE.values(), ids=RESUMABLE.keys())
def test_interrupted_and_resumed_run_matches_uninterrupted(synth_splits, tmp_path, method):
    info, train, valid = synth_splits
    straight = _trainer(info, tmp_path / "a.pt", method=method)
    ref = straight.fit(train, valid)

    def crash(epoch: int, row: dict) -> None:
        if epoch == 1:
            raise KeyboardInterrupt("killed after epoch 1")

    with pytest.raises(KeyboardInterrupt):
        _trainer(info, tmp_path / "b.pt", on_epoch=crash, method=method).fit(train, valid)
    # different init: the checkpoint (weights, optimizer, the method's momentum) wins
    resumed = _trainer(info, tmp_path / "b.pt", seed=123, method=method)
    got = resumed.fit(train, valid)
    assert [h["valid_mean_auc"] for h in got.history] == pytest.approx(
        [h["valid_mean_auc"] for h in ref.history], abs=1e-6)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k
    assert not list(tmp_path.glob(".*.tmp-*"))  # no half-written checkpoint left behind


def _crash_at(trainer: Trainer, batch: int) -> Trainer:
    """The trainer, killed when it starts its `batch`-th training batch of the run."""
    real, calls = trainer.step.train_batch, itertools.count()

    def train_batch(*args, **kwargs):
        if next(calls) == batch:
            raise KeyboardInterrupt(f"killed at batch {batch}")
        return real(*args, **kwargs)

    trainer.step.train_batch = train_batch
    return trainer


MID_EPOCH = {k: RESUMABLE[k] for k in ("ew", "mocograd", "dtjs", "grouped", "famo")}


@pytest.mark.parametrize("method", MID_EPOCH.values(), ids=MID_EPOCH.keys())
@pytest.mark.parametrize("data", ["memory", "stream"])
def test_a_run_killed_mid_epoch_resumes_at_that_batch(synth_splits, streamed_splits, tmp_path, method,
                                                      data):
    info, train, valid = streamed_splits if data == "stream" else synth_splits
    straight = _trainer(info, tmp_path / "a.pt", epochs=2, method=method)
    ref = straight.fit(train, valid)
    per_epoch = -(-len(train) // 256)
    killed = _crash_at(_trainer(info, tmp_path / "b.pt", epochs=2, method=method, checkpoint_minutes=0),
                       per_epoch + per_epoch // 2)  # in the middle of the second epoch
    with pytest.raises(KeyboardInterrupt):
        killed.fit(train, valid)
    assert checkpoint.load(tmp_path / "b.pt")["progress"]["batch"] == per_epoch // 2
    resumed = _trainer(info, tmp_path / "b.pt", epochs=2, seed=123, method=method)
    got = resumed.fit(train, valid)
    assert [h["valid_mean_auc"] for h in got.history] == pytest.approx(
        [h["valid_mean_auc"] for h in ref.history], abs=1e-6)
    assert got.history[-1]["train_loss"] == pytest.approx(ref.history[-1]["train_loss"], rel=1e-6)
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_early_stopping_restores_the_best_epoch(synth_splits, tmp_path):
    info, train, valid = synth_splits
    result = _trainer(info, tmp_path / "c.pt", epochs=6, patience=0).fit(train, valid)
    aucs = [h["valid_mean_auc"] for h in result.history]
    assert result.best_valid_score == max(aucs)
    assert result.epochs_run == len(aucs) and result.epochs_run <= 6
    if result.epochs_run < 6:
        assert aucs[-1] <= max(aucs[:-1])
    # a finished run resumed does not train further
    again = _trainer(info, tmp_path / "c.pt", epochs=6, patience=0).fit(train, valid)
    assert again.epochs_run == result.epochs_run


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_without_nan_and_beats_a_constant(synth_splits, tmp_path, name):
    info, train, valid = synth_splits
    result = _trainer(info, tmp_path / "m.pt", epochs=2, lr=1e-2, method=METHODS[name]).fit(train, valid)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    assert result.best_valid_score > 0.55  # a constant predictor scores 0.5
