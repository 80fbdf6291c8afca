"""The training loop: learning, early stopping, atomic checkpoints and exact resume."""

from __future__ import annotations

import pytest
import torch

from mtlrec.features.batches import SplitData
from mtlrec.features.ingest import ingest
from mtlrec.features.synth import SynthParams, generate
from mtlrec.models.config import model_config
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline import config
from mtlrec.training.loop import Trainer
from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.mtl.step import make_step

CARDS = (5000, 2000, 1000, 500, 200, 100, 50, 20, 10, 8, 6, 5, 4, 3, 2, 2)


@pytest.fixture(scope="module")
def synth_splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(SynthParams(days=3, rows_per_day=4000, cardinalities=CARDS, ctr=0.2, cvr=0.3), root / "landing")
    spec = config.load([f"synth.out_dir={root / 'landing'}"]).data
    out = ingest(spec, root / "features")
    return out.info(), SplitData(out, "train"), SplitData(out, "valid")


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


def _trainer(info, ckpt, epochs=3, on_epoch=None, seed=0, patience=10, lr=1e-3, method=EW):
    torch.manual_seed(seed)
    model = MultiTaskRanker(model_config(arch="mmoe", n_experts=2, expert_hidden=[16], tower_hidden=[8],
                                        dropout=0.1), info.table_sizes, len(info.numeric), len(info.tasks))
    cfg = TrainerConfig(max_epochs=epochs, batch_size=256, patience=patience, device="cpu",
                        lr_schedule="cosine", lr=lr)
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
