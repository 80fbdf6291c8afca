"""The GPU path (skipped without CUDA; `scripts/gpu_bench.sh` runs it on a GPU machine,
where only torch, numpy, pyarrow, torchrec and pydantic are at hand: this file imports
nothing else, and no conftest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtlrec.features.batches import RowLayout, Rows, SplitData
from mtlrec.models.config import model_config
from mtlrec.models.embedding import make_embeddings
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.loop import Trainer
from mtlrec.training.mtl.step import make_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SIZES = {"a": 50, "b": 20, "tags": 30}
LAYOUT = RowLayout(["a", "b", "tags"], ["x", "y"], ["ctr", "ctcvr"], {"tags": 4})


def _split(n: int, seed: int) -> SplitData:
    """Rows with a learnable signal: ctr depends on field a and on x."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(0, 50, (n,), generator=g), torch.randint(0, 20, (n,), generator=g)
    tags = torch.randint(0, 30, (n, 4), generator=g)
    lengths = torch.randint(1, 5, (n, 1), generator=g)
    dense = torch.randn(n, 2, generator=g)
    p = torch.sigmoid(2.0 * (a % 2).float() - 1.0 + dense[:, 0])
    ctr = (torch.rand(n, generator=g) < p).float()
    labels = torch.stack([ctr, ctr * (torch.rand(n, generator=g) < 0.5).float()], 1)
    ids = torch.cat([a[:, None], b[:, None], tags], 1)
    return SplitData.from_rows(LAYOUT, Rows(ids, lengths, dense, labels))


def _ranker(seed: int = 0) -> MultiTaskRanker:
    torch.manual_seed(seed)
    return MultiTaskRanker(model_config(arch="mmoe", n_experts=2, expert_hidden=[32], tower_hidden=[16]),
                           SIZES, 2, 2, {"tags": "mean"})


@pytest.mark.parametrize("bf16", [False, True])
def test_training_on_the_gpu_learns(bf16):
    train, valid = _split(20_000, 0), _split(4_000, 1)
    model = _ranker()
    cfg = TrainerConfig(max_epochs=2, batch_size=512, lr=1e-2, device="cuda", bf16=bf16)
    trainer = Trainer(model.cuda(), make_step(MethodConfig(name="ew"), model, cfg, 2, 0), cfg,
                      ["ctr", "ctcvr"], [0, 1], seed=0)
    result = trainer.fit(train, valid)
    assert next(model.parameters()).is_cuda
    assert result.history[-1]["valid_ctr_auc"] > 0.7  # the signal is learnable; 0.5 = constant


def test_pinned_batches_copy_to_the_gpu_unchanged():
    batch = _split(100, 2).batch(torch.arange(100))
    pinned = batch.pin_memory()
    assert pinned.ids.is_pinned() and pinned.lengths.is_pinned()
    moved = pinned.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(moved.ids.cpu(), batch.ids) and torch.equal(moved.lengths.cpu(), batch.lengths)


@pytest.mark.parametrize("impl", ["fused", "torchrec"])
def test_jagged_embeddings_on_the_gpu_equal_the_cpu(impl):
    torch.manual_seed(0)
    cpu = make_embeddings(SIZES, 8, impl, "dense", {"tags": "mean"})
    gpu = make_embeddings(SIZES, 8, impl, "dense", {"tags": "mean"}).cuda()
    for src, dst in zip(cpu.state_tables(), gpu.state_tables()):
        dst.data.copy_(src.data)
    kjt = _split(64, 3).batch(torch.arange(64)).sparse
    np.testing.assert_allclose(gpu(kjt.to(torch.device("cuda"))).cpu().detach().numpy(),
                               cpu(kjt).detach().numpy(), atol=1e-6)


def test_bf16_autocast_predictions_stay_close_to_float32():
    model, data = _ranker().cuda().eval(), _split(2_000, 4)
    batch = data.batch(torch.arange(2_000)).to("cuda")
    with torch.no_grad():
        full = torch.sigmoid(model(*batch.inputs))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = torch.sigmoid(model(*batch.inputs).float())
    assert (full - half).abs().max().item() < 2e-2
