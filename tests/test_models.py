"""Models: shapes, parameter groups, the two embedding implementations, ESMM."""

from __future__ import annotations

import pytest
import torch

from mtlrec.features.batches import Batch
from mtlrec.models.config import model_config
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.training.config import MethodConfig, TrainerConfig
from mtlrec.training.mtl.optimizers import Optimizers

SIZES = {"a": 10, "b": 7, "c": 3}


def _batch(n: int = 16, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, s, (n,), generator=g) for s in SIZES.values()], dim=1)
    return Batch(list(SIZES), ids, torch.randn(n, 4, generator=g), torch.zeros(n, 2))


@pytest.mark.parametrize("arch", ["hps", "mmoe", "ple"])
def test_logits_shape_and_parameter_groups(arch):
    torch.manual_seed(0)
    model = MultiTaskRanker(model_config(arch=arch, **({"levels": 2} if arch == "ple" else {})), SIZES, n_dense=4, n_tasks=2)
    batch = _batch()
    logits = model(batch.sparse, batch.dense)
    assert logits.shape == (16, 2)
    shared, t0, t1 = model.shared_parameters(), model.task_parameters(0), model.task_parameters(1)
    ids = [{id(p) for p in g} for g in (shared, t0, t1)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set().union(*ids) == {id(p) for p in model.parameters()}
    # task k's loss reaches no other task's parameters
    model.zero_grad()
    logits[:, 0].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in t1)
    assert any(p.grad is not None and p.grad.any() for p in t0)
    assert all(p.grad is not None for p in model.shared_parameters(include_embeddings=False))


def test_kjt_and_plain_ids_give_the_same_logits():
    model = MultiTaskRanker(model_config(arch="mmoe"), SIZES, n_dense=4, n_tasks=2)
    batch = _batch()
    assert torch.allclose(model(batch.sparse, batch.dense), model(batch.ids, batch.dense))


def test_fused_and_torchrec_embeddings_agree_with_the_same_weights():
    torch.manual_seed(0)
    fused = MultiTaskRanker(model_config(arch="mmoe"), SIZES, 4, 2)
    ebc = MultiTaskRanker(model_config(arch="mmoe", embedding_impl="torchrec"), SIZES, 4, 2)
    ebc.load_state_dict({k: v for k, v in fused.state_dict().items() if not k.startswith("embeddings")},
                        strict=False)
    with torch.no_grad():
        for src, dst in zip(fused.embeddings.state_tables(), ebc.embeddings.state_tables()):
            dst.copy_(src)
    batch = _batch()
    assert torch.allclose(fused(batch.sparse, batch.dense), ebc(batch.sparse, batch.dense), atol=1e-6)


def test_esmm_ctcvr_is_the_product_of_ctr_and_cvr():
    model = MultiTaskRanker(model_config(arch="hps", esmm=True), SIZES, 4, 2)
    batch = _batch()
    logits = model(batch.sparse, batch.dense)
    hidden = model.backbone(model.representation(batch.sparse, batch.dense))
    p_ctr = torch.sigmoid(model.towers[0](hidden[0]).squeeze(-1))
    p_cvr = torch.sigmoid(model.towers[1](hidden[1]).squeeze(-1))
    assert torch.allclose(torch.sigmoid(logits[:, 1]), p_ctr * p_cvr, atol=1e-6)
    assert (torch.sigmoid(logits[:, 1]) <= torch.sigmoid(logits[:, 0]) + 1e-7).all()
    with pytest.raises(ValueError, match="esmm needs exactly 2 tasks"):
        MultiTaskRanker(model_config(arch="hps", esmm=True), SIZES, 4, 3)


def test_sparse_embedding_gradients_touch_only_the_batch_rows():
    def make_optimizers(model, cfg):
        return Optimizers(model, cfg, MethodConfig(name="ew"), [], 2).all

    model = MultiTaskRanker(model_config(arch="hps", embedding_grad="sparse"), SIZES, 4, 2)
    batch = _batch(n=4)
    model(batch.sparse, batch.dense).sum().backward()
    grad = model.embeddings.table.weight.grad
    assert grad.is_sparse
    touched = set((batch.ids + model.embeddings.offsets).flatten().tolist())
    assert set(grad.coalesce().indices()[0].tolist()) == touched
    optimizers = make_optimizers(model, TrainerConfig())
    assert [type(o).__name__ for o in optimizers] == ["Adam", "SparseAdam"]
    dense = MultiTaskRanker(model_config(arch="hps"), SIZES, 4, 2)  # auto: small tables → dense
    assert not dense.embeddings.table.sparse
    assert len(make_optimizers(dense, TrainerConfig())) == 1
