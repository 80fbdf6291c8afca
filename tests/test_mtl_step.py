"""The composed step on real models: parts that act inside training (DTJS's α, grouped
updates, gradients on the representation, vectorised per-task gradients), and every
method on census-income MMoE."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from helpers import COMBINATIONS, PRESETS, preset, shared_file
from mtlrec.features.batches import SplitData
from mtlrec.features.ingest import ingest
from mtlrec.models.config import model_config
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.pipeline import config
from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.loop import Trainer
from mtlrec.training.tasks import binary_tasks
from mtlrec.training.mtl.gradients import per_task_gradients
from mtlrec.training.mtl.step import make_step
from mtlrec.training.step import Pass

def small_model(info, arch="mmoe", **kw) -> MultiTaskRanker:
    torch.manual_seed(0)
    return MultiTaskRanker(model_config(arch=arch, expert_hidden=[32], tower_hidden=[16],
                                        **({"n_experts": 3} if arch == "mmoe" else {}), **kw),
                           info.table_sizes, len(info.numeric), len(info.tasks))


@pytest.fixture(scope="module")
def census(tmp_path_factory):
    shared_file("census-income/census-income.data.gz")
    cfg = config.load(["data=census"])
    out = ingest(cfg.data, tmp_path_factory.mktemp("census") / "features")
    return out.info(), SplitData(out, "train"), SplitData(out, "valid")


def _fit(info, train, valid, method, steps=300, batch=256, model=None, diagnostics=None):
    model = model or small_model(info)
    cfg = TrainerConfig(max_epochs=1, batch_size=batch, lr=3e-3, device="cpu")
    trainer = Trainer(model, make_step(method, model, cfg, len(info.tasks), 0), cfg, info.tasks,
                      list(range(len(info.tasks))), seed=0,
                      on_diagnostics=None if diagnostics is None else diagnostics.append)
    return trainer, trainer.fit(train.head(steps * batch), valid)


@pytest.mark.parametrize("spec", PRESETS + COMBINATIONS)
def test_every_method_trains_census_mmoe_without_nan_and_beats_a_constant(census, spec):
    info, train, valid = census
    method = preset(spec, diagnostics_every=100, dtjs={"every": 50, "dev_batch_size": 512})
    trainer, result = _fit(info, train, valid, method)
    assert np.isfinite(result.history[0]["train_loss"])
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    for task in info.tasks:  # a constant predictor scores AUC 0.5 on every task
        assert result.history[0][f"valid_{task}_auc"] > 0.8, task


def test_dtjs_alpha_moves_and_diagnostics_record_phi_and_superloss(census):
    info, train, valid = census
    method = preset("dtjs", diagnostics_every=20, dtjs={"every": 10, "terms": 2, "dev_batch_size": 256})
    records: list[dict] = []
    trainer, _ = _fit(info, train, valid, method, steps=60, diagnostics=records)
    alpha = torch.stack([trainer.step.states["aggregator"][t]["value"] for t in (0, 1)]).t()
    start = torch.rand(2, 2, generator=torch.Generator().manual_seed(0))  # the step's init
    assert not torch.allclose(alpha, start)
    assert len(records) == 10  # every min(20, 60 // 10) = 6 steps: at least 10 an epoch
    assert all(0 < v < 2 for v in records[-1]["dtjs_phi"])
    assert sum(records[-1]["superloss_sigma"][0]["counts"]) == 256


def _grouped_run(census, steps=61):
    info, train, valid = census
    method = preset("grouped", diagnostics_every=10, grouped={"warmup_steps": 20, "beta": 0.05})
    records: list[dict] = []
    trainer, _ = _fit(info, train, valid, method, steps=steps, diagnostics=records)
    return trainer.step.states["schedule"], records


def test_grouped_updates_build_affinity_and_record_their_groups(census):
    state, records = _grouped_run(census)
    assert state["affinity"].abs().sum() > 0
    assert sorted(t for g in state["groups"] for t in g) == [0, 1]  # a partition of the tasks
    assert [r["step"] for r in records] == list(range(6, 61, 6))  # every min(10, 61 // 10) steps
    for r in records:
        assert sorted(t for g in r["groups"] for t in g) == [0, 1]
        assert len(r["affinity"]) == 2 and all(len(row) == 2 for row in r["affinity"])
    assert records[-1]["affinity"] != records[1]["affinity"]  # the affinity keeps learning


def test_grouped_updates_merge_census_two_tasks_after_the_warm_up(census):
    """Census's two tasks barely conflict: after the warm-up (every task alone) they help
    each other, so regrouping (every step) puts them in one group at some step."""
    _, records = _grouped_run(census)
    assert all(r["groups"] == [[0], [1]] for r in records if r["step"] <= 20)
    changes = [c for r in records for c in r.get("group_changes", [])]
    assert all(c["step"] > 20 for c in changes)
    assert [[0, 1]] in [c["groups"] for c in changes] + [r["groups"] for r in records]


def _census_batch(census, n=512):
    info, train, _ = census
    return info, train.batch(torch.arange(n))


@pytest.mark.parametrize("arch", ["hps", "mmoe", "ple"])
def test_representation_split_is_the_same_model(census, arch):
    info, batch = _census_batch(census)
    model = small_model(info, arch=arch).eval()
    whole = model(batch.sparse, batch.dense)
    assert torch.allclose(model.decode(model.encode(batch.sparse, batch.dense)), whole)


def test_gradients_on_the_representation_reach_the_shared_parameters_like_autograd(census):
    """EW through the split path (heads, then the encoder from the leaves) gives the same
    gradients as one backward of the summed loss."""
    info, batch = _census_batch(census)
    model = small_model(info)
    reference = copy.deepcopy(model)
    labels = batch.labels
    step = make_step(MethodConfig(name="ew", grad_on="representation", diagnostics_every=1), model,
                     TrainerConfig(), 2, 0)

    def forward(split):
        rep = model.encode(batch.sparse, batch.dense)
        leaves = [t.detach().requires_grad_() for t in rep]
        return Pass(binary_tasks(['a', 'b']).loss(model.decode(leaves), labels), rep, leaves)

    step.train_batch(forward)  # .grad keeps the gradients the step applied
    binary_tasks(['a', 'b']).loss(reference(batch.sparse, batch.dense), labels).mean(0).sum().backward()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


@pytest.mark.parametrize("arch", ["hps", "mmoe", "ple"])
def test_vectorised_per_task_gradients_equal_the_loop(census, arch):
    info, batch = _census_batch(census)
    model = small_model(info, arch=arch)
    losses = binary_tasks(['a', 'b']).loss(model(batch.sparse, batch.dense), batch.labels).mean(0)
    shared = model.shared_parameters(include_embeddings=True)
    looped = per_task_gradients(losses, shared, batched=False)
    batched = per_task_gradients(losses, shared, batched=True)
    assert torch.allclose(looped, batched, atol=1e-6)
    assert looped.shape == (2, sum(p.numel() for p in shared))


def test_adatask_memory_is_k_copies_of_the_shared_state_only(census):
    info, train, valid = census
    model = small_model(info)
    trainer, _ = _fit(info, train, valid, preset("adatask", diagnostics_every=0), steps=3, model=model)
    adatask = trainer.step.optimizers.adatask
    shared = {id(p) for p in model.shared_parameters(include_embeddings=False)}
    assert {id(p) for g in adatask.param_groups for p in g["params"]} == shared
    for p in model.shared_parameters(include_embeddings=False):
        assert adatask.state[p]["exp_avg"].shape == (2, *p.shape)


def test_validation_names_impossible_combinations(census):
    with pytest.raises(ValueError, match="grad_on=representation"):
        preset("adatask", grad_on="representation")
    model = small_model(census[0])
    for stateful in ("dbmtl", "mocograd"):  # their EMA / momentum spans batches of different samples
        with pytest.raises(ValueError, match=f"aggregate={stateful} averages task gradients across batches"):
            make_step(preset(stateful, grad_on="representation"), model, TrainerConfig(), 2, 0)
    with pytest.raises(ValueError, match="outer=dtjs .* needs aggregate=dtjs"):
        preset("pcgrad", outer="dtjs")
    with pytest.raises(ValueError, match="DTJS's α update"):
        preset("dtjs", schedule="grouped")
    with pytest.raises(ValueError, match="aggregate=pcgard is not a known method: choose one of sum, pcgrad"):
        make_step(preset("ew", aggregate="pcgard"), model, TrainerConfig(), 2, 0)
    with pytest.raises(ValueError, match="weighting=uw defines"):
        preset("uw", aggregate="pcgrad")


def test_dtjs_alpha_updates_15_times_an_epoch_at_the_scheduled_learning_rate(census, monkeypatch):
    """The outer loop's cadence comes from the epoch's length, and the hypergradient's
    η is the learning rate the schedule set for this epoch (cosine: halved in epoch 1 of 2)."""
    from mtlrec.training.mtl import dtjs

    seen: list[float] = []
    real = dtjs.hypergradient

    def recording(*args):
        seen.append(args[4])  # lr
        return real(*args)

    monkeypatch.setattr(dtjs, "hypergradient", recording)
    info, train, valid = census
    model = small_model(info)
    cfg = TrainerConfig(max_epochs=2, batch_size=128, lr=3e-3, lr_schedule="cosine", device="cpu")
    method = preset("dtjs", diagnostics_every=0, dtjs={"terms": 0, "dev_batch_size": 64})
    trainer = Trainer(model, make_step(method, model, cfg, 2, 0), cfg, info.tasks, [0, 1], seed=0)
    trainer.fit(train.head(60 * 128), valid.head(2000))  # 60 batches an epoch: every 4th
    assert seen == pytest.approx([3e-3] * 15 + [1.5e-3] * 15)
