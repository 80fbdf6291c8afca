"""Multi-valued categorical fields: KeyedJaggedTensor lengths through both embedding
implementations (forward, gradients, sparse gradients), a row-by-row reference, and the
padded export twin in PyTorch and in onnxruntime."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torchrec import KeyedJaggedTensor

from mtlrec.models.config import model_config
from mtlrec.models.embedding import make_embeddings
from mtlrec.models.export import PaddedEmbeddings, export_twin, slot_widths
from mtlrec.models.ranker import MultiTaskRanker
from mtlrec.serving.export import export_onnx

SIZES = {"a": 11, "tags": 23, "b": 5, "cats": 17, "c": 3}
POOLING = {"tags": "mean", "cats": "sum"}
MAX_LEN = {"tags": 4, "cats": 3}
DIM, BATCH, N_DENSE = 8, 64, 4

Bags = dict[str, list[list[int]]]  # field → one list of ids per row, fields in table order


def _bags(batch: int, seed: int) -> Bags:
    """Random bags: one id per single-valued field, 0..max_len ids per multi-valued one
    (row 0 always empty, so every multi-valued field has an empty bag)."""
    g = torch.Generator().manual_seed(seed)
    bags = {}
    for name, size in SIZES.items():
        if name in POOLING:
            counts = torch.randint(0, MAX_LEN[name] + 1, (batch,), generator=g)
            counts[0] = 0
        else:
            counts = torch.ones(batch, dtype=torch.int64)
        bags[name] = [torch.randint(0, size, (int(n),), generator=g).tolist() for n in counts]
    return bags


def _kjt(bags: Bags, keys: list[str] | None = None) -> KeyedJaggedTensor:
    keys = keys or list(bags)
    values = [i for k in keys for row in bags[k] for i in row]
    lengths = [len(row) for k in keys for row in bags[k]]
    return KeyedJaggedTensor(keys=keys, values=torch.tensor(values, dtype=torch.int64),
                             lengths=torch.tensor(lengths, dtype=torch.int32))


def _padded(bags: Bags, pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The twin's inputs: ids [B, S] (padding slots hold id `pad`), lengths [B, M]."""
    widths = slot_widths(list(bags), MAX_LEN)
    batch = len(next(iter(bags.values())))
    ids = torch.full((batch, sum(widths)), pad, dtype=torch.int64)
    start = 0
    for rows, width in zip(bags.values(), widths):
        for b, row in enumerate(rows):
            ids[b, start:start + len(row)] = torch.tensor(row, dtype=torch.int64)
        start += width
    lengths = torch.tensor([[len(bags[k][b]) for k in bags if k in POOLING] for b in range(batch)])
    return ids, lengths


def _reference(tables: list[torch.Tensor], bags: Bags) -> torch.Tensor:
    """[B, F, D] row by row: the sum (or mean) of each bag's rows, zeros for an empty bag."""
    batch = len(next(iter(bags.values())))
    out = torch.zeros(batch, len(bags), DIM)
    for j, (name, rows) in enumerate(bags.items()):
        for b, row in enumerate(rows):
            if row:
                total = tables[j][row].sum(dim=0)
                out[b, j] = total / len(row) if POOLING.get(name) == "mean" else total
    return out


def _pair(grad: str = "dense", pooling: dict[str, str] | None = POOLING):
    """A fused and a torchrec module holding the same weights."""
    torch.manual_seed(0)
    fused = make_embeddings(SIZES, DIM, "fused", grad, pooling)
    ebc = make_embeddings(SIZES, DIM, "torchrec", pooling=pooling)
    with torch.no_grad():
        for src, dst in zip(fused.state_tables(), ebc.state_tables()):
            dst.copy_(src)
    return fused, ebc


def _table_grad(module) -> torch.Tensor:
    """The gradient of every table, stacked in the fused layout."""
    if hasattr(module, "table"):
        return module.table.weight.grad
    return torch.cat([w.grad for w in module.state_tables()])


def test_fused_and_torchrec_agree_on_jagged_bags_forward_and_backward():
    fused, ebc = _pair()
    kjt = _kjt(_bags(BATCH, seed=1))
    assert (kjt.lengths() == 0).any() and (kjt.lengths() > 1).any()
    upstream = torch.randn(BATCH, len(SIZES), DIM, generator=torch.Generator().manual_seed(2))
    outs, grads = [], []
    for module in (fused, ebc):
        out = module(kjt)
        (out * upstream).sum().backward()
        outs.append(out.detach())
        grads.append(_table_grad(module))
    assert outs[0].shape == (BATCH, len(SIZES), DIM)
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)
    assert grads[0].abs().sum() > 0


def test_both_equal_a_row_by_row_reference_with_empty_bags_as_zeros():
    fused, ebc = _pair()
    bags = _bags(BATCH, seed=3)
    expected = _reference([t.detach() for t in fused.state_tables()], bags)
    with torch.no_grad():
        for module in (fused, ebc):
            assert torch.allclose(module(_kjt(bags)), expected, atol=1e-6)
    empty = [b for b, row in enumerate(bags["tags"]) if not row]
    assert empty and not expected[empty, list(SIZES).index("tags")].any()


@pytest.mark.parametrize("impl", ["fused", "torchrec"])
def test_keys_in_another_order_or_plain_ids_with_multi_valued_fields_are_refused(impl):
    module = make_embeddings(SIZES, DIM, impl, pooling=POOLING)
    shuffled = ["b", "a", "tags", "cats", "c"]
    with pytest.raises(ValueError) as error:
        module(_kjt(_bags(4, seed=4), keys=shuffled))
    assert str(list(SIZES)) in str(error.value) and str(shuffled) in str(error.value)
    with pytest.raises(ValueError, match=re.escape("multi-valued fields ['cats', 'tags']")):
        module(torch.zeros(4, len(SIZES), dtype=torch.int64))


def test_fused_fast_path_refuses_several_ids_in_an_undeclared_field():
    module = make_embeddings(SIZES, DIM, "fused")
    with pytest.raises(ValueError, match="not declared in pooling"):
        module(_kjt(_bags(4, seed=11)))


@pytest.mark.parametrize("impl", ["fused", "torchrec"])
def test_single_valued_fast_path_is_unchanged(impl):
    """ids [B, F] and a KJT of lengths 1 give today's lookup, and the jagged path of a
    module that declares a multi-valued field agrees with it on single ids."""
    fused, ebc = _pair(pooling=None)
    jagged, _ = _pair(pooling={"b": "sum"})
    g = torch.Generator().manual_seed(10)
    ids = torch.stack([torch.randint(0, n, (BATCH,), generator=g) for n in SIZES.values()], dim=1)
    bags = {name: [[int(i)] for i in ids[:, j]] for j, name in enumerate(SIZES)}
    module = fused if impl == "fused" else ebc
    with torch.no_grad():
        before = torch.stack([t[ids[:, j]] for j, t in enumerate(fused.state_tables())], dim=1)
        assert torch.allclose(module(ids), before, atol=1e-7)
        assert torch.allclose(module(_kjt(bags)), before, atol=1e-7)
        assert torch.allclose(jagged(_kjt(bags)), before, atol=1e-7)


def test_sparse_gradients_equal_dense_ones_and_feed_sparse_adam():
    sparse, _ = _pair(grad="sparse")
    dense, _ = _pair(grad="dense")
    assert sparse.table.sparse and not dense.table.sparse
    kjt = _kjt(_bags(BATCH, seed=5))
    upstream = torch.randn(BATCH, len(SIZES), DIM, generator=torch.Generator().manual_seed(6))
    for module in (sparse, dense):
        (module(kjt) * upstream).sum().backward()
    grad = sparse.table.weight.grad
    assert grad.is_sparse
    assert torch.allclose(grad.to_dense(), dense.table.weight.grad, atol=1e-6)
    before = sparse.table.weight.detach().clone()
    torch.optim.SparseAdam([sparse.table.weight], lr=0.1).step()
    changed = (sparse.table.weight.detach() != before).any(dim=1)
    assert torch.equal(changed, dense.table.weight.grad.abs().sum(dim=1) > 0)


def _ranker(impl: str) -> MultiTaskRanker:
    torch.manual_seed(0)
    cfg = model_config(arch="mmoe", n_experts=2, expert_hidden=[16], tower_hidden=[8],
                       embedding_dim=DIM, embedding_impl=impl)
    return MultiTaskRanker(cfg, SIZES, N_DENSE, 2, pooling=POOLING).eval()


def _expected(ranker: MultiTaskRanker, bags: Bags, dense: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(ranker(_kjt(bags), dense)).numpy()


@pytest.mark.parametrize("impl", ["fused", "torchrec"])
def test_export_twin_on_padded_ids_and_lengths_matches_the_ranker(impl):
    ranker = _ranker(impl)
    twin = export_twin(ranker, MAX_LEN)
    assert isinstance(twin.ranker.embeddings, PaddedEmbeddings)
    bags = _bags(BATCH, seed=7)
    ids, lengths = _padded(bags)
    assert ids.shape == (BATCH, 1 + 4 + 1 + 3 + 1) and lengths.shape == (BATCH, 2)
    dense = torch.randn(BATCH, N_DENSE)
    with torch.no_grad():
        got = twin(ids, lengths, dense).numpy()
        assert np.allclose(got, _expected(ranker, bags, dense), atol=1e-6)
        other_pad, _ = _padded(bags, pad=2)  # what the padding slots hold does not matter
        assert not torch.equal(other_pad, ids)
        assert np.array_equal(twin(other_pad, lengths, dense).numpy(), got)
    with pytest.raises(ValueError, match="exactly the multi-valued fields"):
        export_twin(ranker, {"tags": 4})


def _to_onnx(model: torch.nn.Module, n_slots: int, n_multi: int, path: Path) -> Path:
    example = (torch.zeros(8, n_slots, dtype=torch.int64),
               torch.zeros(8, n_multi, dtype=torch.int64), torch.zeros(8, N_DENSE))
    return export_onnx(model, example, ["ids", "lengths", "dense"], path, opset=18)


def test_exported_twin_runs_in_onnxruntime_without_a_loop(tmp_path):
    ranker = _ranker("fused")
    widths = slot_widths(list(SIZES), MAX_LEN)
    path = _to_onnx(export_twin(ranker, MAX_LEN), sum(widths), len(MAX_LEN), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert "Loop" not in ops and "Gather" in ops
    assert [i.name for i in graph.input] == ["ids", "lengths", "dense"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, seed in ((1, 8), (37, 9)):
        bags = _bags(batch, seed)
        ids, lengths = _padded(bags)
        dense = torch.randn(batch, N_DENSE, generator=torch.Generator().manual_seed(seed))
        got = session.run(["scores"], {"ids": ids.numpy(), "lengths": lengths.numpy(),
                                       "dense": dense.numpy()})[0]
        assert got.shape == (batch, 2)
        assert np.allclose(got, _expected(ranker, bags, dense), atol=1e-5)


def test_slot_widths_lay_out_the_padded_ids():
    assert slot_widths(list(SIZES), MAX_LEN) == [1, 4, 1, 3, 1]
    assert slot_widths(list(SIZES), {}) == [1] * len(SIZES)
    with pytest.raises(ValueError, match="not tables"):
        slot_widths(list(SIZES), {"nope": 2})
    with pytest.raises(ValueError, match="at least 1 slot"):
        slot_widths(list(SIZES), {"tags": 0})
