"""QM9 (Gilmer et al. 2017): targets, split, train-only standardisation, graphs; MPNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch_geometric.loader import DataLoader

from helpers import shared_file
from mtlrec.features import qm9
from mtlrec.features.errors import DataError
from mtlrec.features.qm9_graphs import (EDGE_FEATURES, NODE_FEATURES, QM9Graphs,
                                        molecule_graph)
from mtlrec.models.mpnn import MPNN

torch.set_num_threads(1)
N = 64


@pytest.fixture(scope="module")
def path() -> Path:
    return shared_file("qm9/qm9.parquet")


@pytest.fixture(scope="module")
def raw(path: Path) -> pa.Table:
    """The file read independently of the module under test."""
    return pq.read_table(path)


@pytest.fixture(scope="module")
def data(path: Path) -> qm9.QM9:
    return qm9.load_qm9(path, seed=0, limit=N)


def _atomization_by_hand(raw: pa.Table, row: int) -> list[float]:
    """U0, U, H, G of one row minus the QM9 atom references, in a plain Python loop."""
    elements = raw.column("elements")[row].as_py()
    out = []
    for column in ("u0_hartree", "u298_hartree", "h298_hartree", "g298_hartree"):
        refs = dict(zip(qm9.ELEMENTS, qm9.ATOM_REFERENCE[column]))
        out.append(raw.column(column)[row].as_py() - sum(refs[e] for e in elements))
    return out


def test_eleven_targets_in_literature_order():
    assert [t.name for t in qm9.TARGETS] == [
        "mu", "alpha", "homo", "lumo", "r2", "zpve", "u0", "u298", "h298", "g298", "cv"]
    assert "gap_hartree" not in {t.column for t in qm9.TARGETS}


def test_split_sizes_disjoint_and_deterministic(raw):
    n = raw.num_rows
    rows = qm9.split_indices(n, seed=0)
    assert [len(rows[s]) for s in ("train", "valid", "test")] == [110_000, 10_000, n - 120_000]
    every = np.concatenate(list(rows.values()))
    assert len(np.unique(every)) == n and every.min() == 0 and every.max() == n - 1
    again, other = qm9.split_indices(n, seed=0), qm9.split_indices(n, seed=1)
    assert all(np.array_equal(rows[s], again[s]) for s in rows)
    assert not np.array_equal(rows["test"], other["test"])
    with pytest.raises(DataError, match="split needs more than 120000"):
        qm9.split_indices(120_000)


def test_subset_is_the_first_molecules_of_each_split(raw, data):
    ids = raw.column("index").to_numpy()
    rows = qm9.split_indices(raw.num_rows, seed=0)
    seen = set()
    for name, split in data.splits.items():
        assert len(split) == N
        assert np.array_equal(split.index, ids[rows[name][:N]])
        seen |= set(split.index.tolist())
    assert len(seen) == 3 * N  # the subsets are disjoint too


def test_standardisation_uses_training_statistics_only(raw, data):
    rows = qm9.split_indices(raw.num_rows, seed=0)
    stats = data.stats
    for j, target in enumerate(qm9.TARGETS):
        if target.column in qm9.ATOM_REFERENCE:
            continue  # checked per molecule below
        column = raw.column(target.column).to_numpy()
        assert stats.mean[j] == pytest.approx(column[rows["train"]].mean(), rel=1e-9)
        assert stats.std[j] == pytest.approx(column[rows["train"]].std(), rel=1e-9)
        assert stats.mean[j] != pytest.approx(column.mean(), rel=1e-9, abs=0)
    # every split, validation and test included, is scaled with the training stats:
    # restoring with them gives back the file's values
    for split in data.splits.values():
        original = stats.restore(split.targets)
        position = {int(i): r for r, i in enumerate(raw.column("index").to_numpy())}
        for k in (0, N // 2, N - 1):
            row = position[int(split.index[k])]
            expected = [raw.column(t.column)[row].as_py() for t in qm9.TARGETS[:6]]
            assert np.allclose(original[k, :6], expected, rtol=1e-5, atol=1e-6)
            assert np.allclose(original[k, 6:10], _atomization_by_hand(raw, row), rtol=1e-5)
            cv = raw.column("cv_cal_mol_k")[row].as_py()
            assert original[k, 10] == pytest.approx(cv, rel=1e-5)
    assert np.abs(data.splits["train"].targets).max() < 50


def test_mae_is_in_original_units_and_stats_round_trip(data):
    stats = data.stats
    true = data.splits["valid"].targets
    pred = true + 0.5
    assert np.allclose(stats.mae(pred, true), 0.5 * stats.std, rtol=1e-5)
    back = qm9.TargetStats.from_dict(stats.to_dict())
    assert np.array_equal(back.mean, stats.mean) and np.array_equal(back.std, stats.std)
    assert stats.to_dict()["homo"]["unit"] == "Ha"


def test_total_energies_when_atomization_is_off(path, raw, data):
    totals = qm9.load_qm9(path, seed=0, limit=4, atomization=False)
    position = {int(i): r for r, i in enumerate(raw.column("index").to_numpy())}
    row = position[int(totals.splits["test"].index[0])]
    u0 = totals.stats.restore(totals.splits["test"].targets)[0, 6]
    assert u0 == pytest.approx(raw.column("u0_hartree")[row].as_py(), rel=1e-7)
    assert totals.stats.mean[6] < -300 < data.stats.mean[6]  # ~−410 Ha vs ~−2.8 Ha


def test_bad_files_name_the_problem(tmp_path, raw):
    small = raw.slice(0, 5)
    pq.write_table(small.drop_columns(["cv_cal_mol_k"]), tmp_path / "no_cv.parquet")
    with pytest.raises(DataError, match=r"no_cv.parquet: QM9 file lacks columns \['cv_cal_mol_k"):
        qm9.load_qm9(tmp_path / "no_cv.parquet")
    lists = small.column("elements").to_pylist()
    column = small.schema.get_field_index("elements")

    def with_elements(values: list[list[str]], name: str) -> Path:
        typed = pa.array(values, type=small.schema.field("elements").type)
        pq.write_table(small.set_column(column, "elements", typed), tmp_path / name)
        return tmp_path / name

    chlorine = with_elements([lists[0][:1] + ["Cl"] + lists[0][2:]] + lists[1:], "cl.parquet")
    with pytest.raises(DataError, match=r"cl.parquet: column elements holds \['Cl'\]"):
        qm9.load_qm9(chlorine)
    short = with_elements(lists[:2] + [lists[2][:-1]] + lists[3:], "short.parquet")
    index = small.column("index")[2].as_py()
    with pytest.raises(DataError, match=f"short.parquet: molecule index={index} has a different "
                                        "number of elements and positions"):
        qm9.load_qm9(short)


# ---------------------------------------------------------------- graphs


def test_methane_graph(raw):
    row = raw.column("smiles").to_pylist().index("C")
    elements = np.array([qm9.ELEMENTS.index(e) for e in raw.column("elements")[row].as_py()])
    positions = np.array(raw.column("positions_angstrom")[row].as_py(), dtype=np.float32)
    g = molecule_graph(elements, positions, np.arange(11), molecule_id=1)
    assert g.num_nodes == 5 and g.edge_index.shape == (2, 20)  # complete graph, no self-loops
    assert g.x.shape == (5, len(NODE_FEATURES)) and g.edge_attr.shape == (20, len(EDGE_FEATURES))
    carbon = int(np.flatnonzero(elements == 1)[0])
    assert g.x[carbon].tolist() == [0, 1, 0, 0, 0, 6, 4, 4]  # C, Z=6, 4 bonds, all to H
    bonds = g.edge_index[:, g.edge_attr[:, 1] == 1]
    assert bonds.shape[1] == 8 and (bonds == carbon).any(0).all()  # 4 C–H bonds, both ways
    assert torch.allclose(g.edge_attr[g.edge_attr[:, 1] == 1, 0], torch.tensor(1.09), atol=0.01)
    assert g.y.shape == (1, 11) and g.idx.tolist() == [1]


def test_split_graphs_are_consistent(data):
    graphs = QM9Graphs(data.splits["valid"])
    near = QM9Graphs(data.splits["valid"], cutoff=2.0)
    for i in range(0, N, 7):
        g, h = graphs[i], near[i]
        n = g.num_nodes
        assert g.pos.shape == (n, 3) and g.z.shape == (n,)
        assert g.edge_index.min() >= 0 and g.edge_index.max() < n
        assert (g.edge_index[0] != g.edge_index[1]).all()
        assert g.edge_index.shape[1] == n * (n - 1)
        src, dst = g.edge_index
        assert torch.allclose(g.edge_attr[:, 0], (g.pos[src] - g.pos[dst]).norm(dim=1), atol=1e-5)
        assert torch.equal(g.y[0], torch.from_numpy(data.splits["valid"].targets[i]))
        assert int(g.idx) == data.splits["valid"].index[i]
        assert 0 < h.edge_index.shape[1] < g.edge_index.shape[1]
        assert (h.edge_attr[:, 0] <= 2.0).all()
        assert (g.x[:, 6] >= 1).all()  # every atom has at least one covalent bond
        assert (g.x[g.z == 1, 6] == 1).all()  # hydrogens have exactly one


# ---------------------------------------------------------------- model


def _batch(data: qm9.QM9, n: int, cutoff: float | None = None):
    return next(iter(DataLoader(QM9Graphs(data.splits["train"], cutoff=cutoff), batch_size=n)))


def test_mpnn_shapes_and_parameter_groups(data):
    torch.manual_seed(0)
    model = MPNN(len(NODE_FEATURES), len(EDGE_FEATURES))
    batch = _batch(data, 4)
    z = model.representation(batch)
    out = model(batch)
    assert z.shape == (4, 64) and out.shape == (4, 11) and batch.y.shape == (4, 11)
    assert torch.equal(model.heads(z), out)
    assert torch.equal(model.decode(model.encode(batch)), out)
    groups = [model.shared_parameters()] + [model.task_parameters(k) for k in range(11)]
    ids = [{id(p) for p in g} for g in groups]
    assert sum(len(i) for i in ids) == len(set().union(*ids))  # pairwise disjoint
    assert set().union(*ids) == {id(p) for p in model.parameters()}
    model.zero_grad()
    out[:, 3].sum().backward()
    others = [p for k in range(11) if k != 3 for p in groups[1 + k]]
    assert all(p.grad is None or not p.grad.any() for p in others)
    assert all(p.grad is not None and p.grad.any() for p in groups[4])
    assert all(p.grad is not None for p in groups[0])


def test_mpnn_overfits_a_few_molecules(data):
    # hidden 16 and a 3 Å cutoff keep the edge network cheap on one core; the test is
    # about learning through messages, edges and readout, not about the paper's width
    torch.manual_seed(0)
    model = MPNN(len(NODE_FEATURES), len(EDGE_FEATURES), hidden=16)
    batch = _batch(data, 16, cutoff=3.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        return torch.nn.functional.mse_loss(model(batch), batch.y)

    start = loss().item()
    for _ in range(40):
        opt.zero_grad()
        loss().backward()
        opt.step()
    end = loss().item()
    assert end < 0.5 * start, (start, end)


@pytest.mark.parametrize("grad_on, encoder_backwards", [("representation", 1), ("shared", 11)])
def test_per_task_gradients_on_the_representation_take_one_encoder_backward(data, grad_on, encoder_backwards):
    """The K = 11 fast path (issue 14): with grad_on=representation the 11 per-task
    gradients go through the linear heads only and the encoder runs backward once; on the
    shared parameters each task needs its own pass through the encoder. Counted on the
    encoder's first parameter, whose gradient every encoder backward computes."""
    from mtlrec.training.config import MethodConfig, TrainerConfig
    from mtlrec.training.mtl.step import make_step
    from mtlrec.training.step import Pass

    torch.manual_seed(0)
    model = MPNN(len(NODE_FEATURES), len(EDGE_FEATURES), hidden=16)
    batch = _batch(data, 8, cutoff=3.0)
    step = make_step(MethodConfig(name="pcgrad", aggregate="pcgrad", grad_on=grad_on, diagnostics_every=0),
                     model, TrainerConfig(), 11, 0)
    first = next(model.encoder.parameters())
    backwards = []
    first.register_hook(lambda g: backwards.append(1))

    def forward(split: bool) -> Pass:
        if not split:
            return Pass((model(batch) - batch.y) ** 2)
        rep = model.encode(batch)
        leaves = [t.detach().requires_grad_() for t in rep]
        return Pass((model.decode(leaves) - batch.y) ** 2, rep, leaves)

    step.train_batch(forward)
    assert len(backwards) == encoder_backwards
