"""QM9: 11 regression targets per molecule, the molecular benchmark of the MTL literature.

The targets, split and scaling follow the MPNN setting of Gilmer et al. (2017), "Neural
Message Passing for Quantum Chemistry" (ICML), as used for multi-task learning by
Nash-MTL, DB-MTL, MoCoGrad, DTJS and LibMTL: μ, α, HOMO, LUMO, ⟨R²⟩, ZPVE, U0, U, H, G,
c_v (the HOMO–LUMO gap is left out: it is LUMO − HOMO). U0, U, H and G are atomisation
energies by default: the total energy minus the reference energies of the isolated
atoms (published with QM9, Ramakrishnan et al. 2014), as in those papers' PyG targets
12–15; total energies are ~−400 Ha with a spread set by the atom count, atomisation
energies are what a model of bonds can learn.

Input: `qm9.parquet` (one row per molecule: `index`, `smiles`, `elements`,
`positions_angstrom`, properties in the units of their column names). It has no bond
table, so graphs (see `qm9_graphs`) are built from the 3-D positions.

Split: a seeded permutation of the rows; 110,000 train, 10,000 validation, the rest
(10,831) test. Targets are standardised with the mean and standard deviation of the
training split only (`TargetStats`, kept so that MAE is reported in original units).
This module is numpy + pyarrow only; the torch_geometric adapter is `qm9_graphs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mtlrec.features.errors import DataError

ELEMENTS = ("H", "C", "N", "O", "F")  #: the elements of QM9; element ids index this tuple
HARTREE_TO_MEV = 27_211.386_246  #: the papers report energies in meV (PyG stores eV)


@dataclass(frozen=True)
class Target:
    """One task: its name, source column and unit, and the unit the MTL papers report.

    paper_scale converts a value (or an MAE) from `unit` to `paper_unit`.
    """

    name: str
    column: str
    unit: str
    paper_unit: str
    paper_scale: float = 1.0


TARGETS = (
    Target("mu", "mu_debye", "D", "D"),
    Target("alpha", "alpha_bohr3", "bohr^3", "bohr^3"),
    Target("homo", "homo_hartree", "Ha", "meV", HARTREE_TO_MEV),
    Target("lumo", "lumo_hartree", "Ha", "meV", HARTREE_TO_MEV),
    Target("r2", "r2_bohr2", "bohr^2", "bohr^2"),
    Target("zpve", "zpve_hartree", "Ha", "meV", HARTREE_TO_MEV),
    Target("u0", "u0_hartree", "Ha", "meV", HARTREE_TO_MEV),
    Target("u298", "u298_hartree", "Ha", "meV", HARTREE_TO_MEV),
    Target("h298", "h298_hartree", "Ha", "meV", HARTREE_TO_MEV),
    Target("g298", "g298_hartree", "Ha", "meV", HARTREE_TO_MEV),
    Target("cv", "cv_cal_mol_k", "cal/(mol K)", "cal/(mol K)"),
)

#: Energies of the isolated atoms H, C, N, O, F in hartree (B3LYP/6-31G(2df,p)), from
#: QM9's atomref table (Ramakrishnan et al. 2014, figshare 1057643).
ATOM_REFERENCE = {
    "u0_hartree": (-0.500273, -37.846772, -54.583861, -75.064579, -99.718730),
    "u298_hartree": (-0.498857, -37.845355, -54.582445, -75.063163, -99.717314),
    "h298_hartree": (-0.497912, -37.844411, -54.581501, -75.062219, -99.716370),
    "g298_hartree": (-0.510927, -37.861317, -54.598897, -75.079532, -99.733544),
}

SPLIT_SIZES = {"train": 110_000, "valid": 10_000}  # test: the rest
_COLUMNS = ("index", "elements", "positions_angstrom", *(t.column for t in TARGETS))


@dataclass(frozen=True)
class TargetStats:
    """Per-target mean and standard deviation of the training split, in original units."""

    mean: np.ndarray  # float64 [11]
    std: np.ndarray  # float64 [11]

    def standardise(self, raw: np.ndarray) -> np.ndarray:
        return ((raw - self.mean) / self.std).astype(np.float32)

    def restore(self, z: np.ndarray) -> np.ndarray:
        """Standardised values [N, 11] → original units (float64)."""
        return np.asarray(z, dtype=np.float64) * self.std + self.mean

    def mae(self, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
        """Per-target MAE [11] in original units, from standardised predictions and targets."""
        error = np.asarray(pred, np.float64) - np.asarray(true, np.float64)
        return np.abs(error).mean(0) * self.std

    def to_dict(self) -> dict[str, dict[str, float]]:
        """{target name: {"mean", "std", "unit"}}: JSON-ready, to store next to a model."""
        return {t.name: {"mean": float(m), "std": float(s), "unit": t.unit}
                for t, m, s in zip(TARGETS, self.mean, self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, dict[str, float]]) -> "TargetStats":
        return cls(np.array([d[t.name]["mean"] for t in TARGETS]),
                   np.array([d[t.name]["std"] for t in TARGETS]))


@dataclass(frozen=True)
class QM9Split:
    """Molecules of one split, atoms stored contiguously.

    index: int64 [N], the molecule's QM9 id (the file's `index` column).
    atom_ptr: int64 [N + 1], molecule i's atoms are rows atom_ptr[i]:atom_ptr[i + 1].
    elements: int64 [A], element ids (positions in ELEMENTS).
    positions: float32 [A, 3], Å.
    targets: float32 [N, 11], standardised with the training statistics.
    """

    index: np.ndarray
    atom_ptr: np.ndarray
    elements: np.ndarray
    positions: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return self.index.shape[0]

    def molecule(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(element ids [n], positions [n, 3]) of molecule i."""
        a, b = self.atom_ptr[i], self.atom_ptr[i + 1]
        return self.elements[a:b], self.positions[a:b]


@dataclass(frozen=True)
class QM9:
    """The splits {"train", "valid", "test"} and the training statistics of their targets."""

    splits: dict[str, QM9Split]
    stats: TargetStats


def split_indices(n_rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Row positions of train (110,000), valid (10,000) and test (the rest), seeded.

    Each split keeps the order of the permutation, so its first n rows are a random
    sample (the file is ordered by heavy-atom count, a prefix of it would not be).
    """
    n_train, n_valid = SPLIT_SIZES["train"], SPLIT_SIZES["valid"]
    if n_rows <= n_train + n_valid:
        raise DataError(f"QM9 has {n_rows} molecules; the split needs more than "
                        f"{n_train + n_valid}")
    order = np.random.default_rng(seed).permutation(n_rows)
    return {"train": order[:n_train], "valid": order[n_train:n_train + n_valid],
            "test": order[n_train + n_valid:]}


def _read(path: Path) -> pa.Table:
    try:
        missing = [c for c in _COLUMNS if c not in pq.read_schema(path).names]
        if missing:
            raise DataError(f"{path}: QM9 file lacks columns {missing}")
        table = pq.read_table(path, columns=list(_COLUMNS))
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{path}: cannot read QM9 ({e})") from e
    for name in _COLUMNS:
        if table.column(name).null_count:
            raise DataError(f"{path}: column {name} has {table.column(name).null_count} nulls")
    return table


def _atoms(path: Path, table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(atom_ptr [N + 1], element ids [A], positions [A, 3]) of the whole file, validated."""
    elements = table.column("elements").combine_chunks()
    positions = table.column("positions_angstrom").combine_chunks()
    n_elements = pc.list_value_length(elements).to_numpy()
    if not np.array_equal(n_elements, pc.list_value_length(positions).to_numpy()):
        row = int(np.argmax(n_elements != pc.list_value_length(positions).to_numpy()))
        raise DataError(f"{path}: molecule index={table.column('index')[row]} has a different "
                        "number of elements and positions")
    symbols = elements.flatten()
    ids = pc.index_in(symbols, value_set=pa.array(ELEMENTS))
    if ids.null_count:
        bad = symbols.filter(pc.is_null(ids)).unique().to_pylist()
        raise DataError(f"{path}: column elements holds {bad}, expected only {list(ELEMENTS)}")
    coords = positions.flatten()
    if not (pc.list_value_length(coords).to_numpy() == 3).all():
        raise DataError(f"{path}: column positions_angstrom has atoms without exactly "
                        "3 coordinates")
    xyz = coords.flatten().to_numpy().astype(np.float32).reshape(-1, 3)
    atom_ptr = np.concatenate([[0], np.cumsum(n_elements)]).astype(np.int64)
    return atom_ptr, ids.to_numpy().astype(np.int64), xyz


def _raw_targets(table: pa.Table, atom_ptr: np.ndarray, element_ids: np.ndarray,
                 atomization: bool) -> np.ndarray:
    """float64 [N, 11] in the file's units; U0, U, H, G minus the atom references if asked."""
    raw = np.stack([table.column(t.column).to_numpy() for t in TARGETS], axis=1).astype(np.float64)
    if atomization:
        n, k = len(atom_ptr) - 1, len(ELEMENTS)
        molecule = np.repeat(np.arange(n), np.diff(atom_ptr))
        counts = np.bincount(molecule * k + element_ids, minlength=n * k).reshape(n, k)
        for j, t in enumerate(TARGETS):
            if t.column in ATOM_REFERENCE:
                raw[:, j] -= counts @ np.asarray(ATOM_REFERENCE[t.column])
    return raw


def _take(rows: np.ndarray, index: np.ndarray, atom_ptr: np.ndarray, element_ids: np.ndarray,
          xyz: np.ndarray, targets: np.ndarray) -> QM9Split:
    sizes = atom_ptr[rows + 1] - atom_ptr[rows]
    ptr = np.concatenate([[0], np.cumsum(sizes)])
    atoms = np.repeat(atom_ptr[rows] - ptr[:-1], sizes) + np.arange(ptr[-1])
    return QM9Split(index[rows], ptr, element_ids[atoms], xyz[atoms], targets[rows])


def load_qm9(path: Path, *, seed: int = 0, atomization: bool = True,
             limit: int | None = None) -> QM9:
    """The three splits of `qm9.parquet` with standardised targets, and the training stats.

    atomization: U0, U, H, G as atomisation energies (the literature's targets).
    limit: keep the first `limit` molecules of each split (statistics still come from the
      whole training split, so a subset sees the same values as the full data).
    """
    path = Path(path)
    table = _read(path)
    index = table.column("index").to_numpy().astype(np.int64)
    if len(np.unique(index)) != len(index):
        raise DataError(f"{path}: column index has duplicate molecule ids")
    atom_ptr, element_ids, xyz = _atoms(path, table)
    raw = _raw_targets(table, atom_ptr, element_ids, atomization)
    if not np.isfinite(raw).all():
        bad = TARGETS[int(np.argmax(~np.isfinite(raw).all(0)))].column
        raise DataError(f"{path}: column {bad} has non-finite values")
    rows = split_indices(len(table), seed)
    train = raw[rows["train"]]
    stats = TargetStats(train.mean(0), train.std(0))
    targets = stats.standardise(raw)
    splits = {name: _take(r[:limit], index, atom_ptr, element_ids, xyz, targets)
              for name, r in rows.items()}
    return QM9(splits, stats)
