"""Molecules from SMILES (`data.kind: molecules`): a CSV or Parquet file with a SMILES
column and any number of target columns → graphs for the MPNN (RDKit + torch-geometric).

A row is bad when its SMILES does not parse (RDKit) or a target holds something other
than a number (regression) or 0/1 (binary); bad rows are kept aside with their reason
(`Molecules.quarantine`), never silently dropped. A missing (empty, null or NaN) target
value is a missing label: the row stays, and that task skips it.

Per graph (Gilmer et al. 2017's atom and bond features, from RDKit instead of geometry):
  x [n, 21] float32: one-hot element (H C N O F P S Cl Br I, other), atomic number,
    degree, number of hydrogens, formal charge, aromatic, in a ring, one-hot
    hybridisation (sp, sp2, sp3);
  edge_index [2, E] int64, each bond in both directions;
  edge_attr [E, 6] float32: one-hot bond type (single, double, triple, aromatic),
    conjugated, in a ring;
  y [1, K] float32: the targets (regression ones standardised on the training split,
    NaN where missing).
With `explicit_h` the hydrogens are atoms of the graph (as in QM9's positional graphs);
without, they are counted on their heavy atom only.

Splits: `random` (seeded), or `scaffold` — molecules grouped by their Bemis–Murcko
scaffold, the groups largest first filling train, then valid, then test (the split of
MoleculeNet and Chemprop, which tests on scaffolds never seen in training).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from rdkit import Chem, RDLogger
from rdkit.Chem.Scaffolds import MurckoScaffold
from torch.utils.data import Dataset
from torch_geometric.data import Data

from mtlrec.features.errors import DataError
from mtlrec.features.spec import MoleculeSpec

log = logging.getLogger(__name__)
RDLogger.DisableLog("rdApp.*")  # a bad SMILES is reported as a row problem, not on stderr

ELEMENTS = ("H", "C", "N", "O", "F", "P", "S", "Cl", "Br", "I")
_HYBRIDISATION = (Chem.HybridizationType.SP, Chem.HybridizationType.SP2, Chem.HybridizationType.SP3)
_BONDS = (Chem.BondType.SINGLE, Chem.BondType.DOUBLE, Chem.BondType.TRIPLE, Chem.BondType.AROMATIC)
NODE_FEATURES = (*(f"is_{e}" for e in ELEMENTS), "is_other", "atomic_number", "degree", "hydrogens",
                 "formal_charge", "aromatic", "in_ring", "sp", "sp2", "sp3")
EDGE_FEATURES = ("single", "double", "triple", "aromatic", "conjugated", "in_ring")


def parse(smiles: str, explicit_h: bool = True) -> Chem.Mol | None:
    """The molecule of a SMILES string (hydrogens added with `explicit_h`), None when RDKit
    cannot parse or sanitise it."""
    mol = Chem.MolFromSmiles(smiles) if smiles else None
    if mol is None:
        return None
    return Chem.AddHs(mol) if explicit_h else mol


def graph(mol: Chem.Mol, y: np.ndarray | None = None) -> Data:
    """One molecule as a `Data` graph (fields in the module docstring)."""
    x = np.zeros((mol.GetNumAtoms(), len(NODE_FEATURES)), np.float32)
    for i, atom in enumerate(mol.GetAtoms()):
        symbol = atom.GetSymbol()
        x[i, ELEMENTS.index(symbol) if symbol in ELEMENTS else len(ELEMENTS)] = 1.0
        hybrid = atom.GetHybridization()
        x[i, len(ELEMENTS) + 1:] = [
            atom.GetAtomicNum(), atom.GetDegree(), atom.GetTotalNumHs(includeNeighbors=True),
            atom.GetFormalCharge(), atom.GetIsAromatic(), atom.IsInRing(),
            *(hybrid == h for h in _HYBRIDISATION)]
    src, dst, attr = [], [], []
    for bond in mol.GetBonds():
        a, b = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        kind = bond.GetBondType()
        features = [*(kind == t for t in _BONDS), bond.GetIsConjugated(), bond.IsInRing()]
        src += [a, b]
        dst += [b, a]
        attr += [features, features]
    data = Data(x=torch.from_numpy(x),
                edge_index=torch.tensor([src, dst], dtype=torch.int64).reshape(2, -1),
                edge_attr=torch.tensor(attr, dtype=torch.float32).reshape(-1, len(EDGE_FEATURES)))
    if y is not None:
        data.y = torch.from_numpy(np.asarray(y, dtype=np.float32).reshape(1, -1))
    return data


@dataclass(frozen=True)
class Molecules:
    """The good rows of a molecules file: their SMILES, raw targets [N, K] (NaN: missing),
    and the split each belongs to; the bad rows with their reasons."""

    smiles: list[str]
    targets: np.ndarray
    splits: dict[str, np.ndarray]  # split → row positions
    quarantine: pl.DataFrame  # row, smiles, reason

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std of every target on the training split's labelled rows (std 1 where
        it has no spread)."""
        train = self.targets[self.splits["train"]]
        mean = np.nan_to_num(np.nanmean(train, axis=0)) if len(train) else np.zeros(self.targets.shape[1])
        std = np.nan_to_num(np.nanstd(train, axis=0), nan=1.0) if len(train) else np.ones(self.targets.shape[1])
        return mean, np.where(std > 1e-12, std, 1.0)


def _read(spec: MoleculeSpec) -> pl.DataFrame:
    path = Path(spec.path)
    if not path.is_file():
        raise DataError(f"data.path {path}: no such file")
    columns = [spec.smiles, *(t.source for t in spec.targets)]
    try:
        frame = (pl.read_parquet(path, columns=columns) if path.suffix == ".parquet"
                 else pl.read_csv(path, columns=columns, infer_schema=False))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"{path}: cannot read the columns {columns}: {exc}") from None
    return frame


def load(spec: MoleculeSpec) -> Molecules:
    """Read, validate and split the molecules of `spec`."""
    frame = _read(spec)
    smiles = frame[spec.smiles].cast(pl.String).to_list()
    values, problems = [], [[] for _ in smiles]
    for t in spec.targets:
        raw = frame[t.source]
        if raw.dtype == pl.String:  # an empty field is a missing label
            raw = raw.str.strip_chars().replace("", None)
        number = raw.cast(pl.Float64, strict=False)
        bad = (raw.is_not_null() & (number.is_null() | number.is_infinite())).to_numpy()  # NaN: missing
        if t.kind == "binary":
            bad |= (number.is_not_null() & ~number.is_in([0.0, 1.0])).to_numpy()
        for i in np.flatnonzero(bad):
            problems[i].append(f"{t.source}: {'0 or 1' if t.kind == 'binary' else 'a number'} "
                               f"expected, got {str(raw[int(i)])[:80]!r}")
        values.append(np.where(bad, np.nan, number.fill_null(np.nan).to_numpy()))
    for i, s in enumerate(smiles):
        if parse(s or "", explicit_h=False) is None:
            problems[i].append(f"{spec.smiles}: RDKit cannot parse the SMILES {str(s)[:80]!r}")
    good = np.array([not p for p in problems], dtype=bool)
    quarantine = pl.DataFrame({"row": np.flatnonzero(~good), "smiles": [smiles[i] for i in np.flatnonzero(~good)],
                               "reason": ["; ".join(problems[i]) for i in np.flatnonzero(~good)]},
                              schema={"row": pl.Int64, "smiles": pl.String, "reason": pl.String})
    if len(smiles) and (~good).mean() > spec.max_reject_ratio:
        raise DataError(f"{spec.path}: {int((~good).sum())} of {len(smiles)} rows are bad "
                        f"(> data.max_reject_ratio = {spec.max_reject_ratio}); e.g. "
                        f"{quarantine.head(3).to_dicts()}")
    if quarantine.height:
        log.warning("molecules: %d bad rows of %d left out, e.g. row %d: %s", quarantine.height, len(smiles),
                    quarantine["row"][0], quarantine["reason"][0])
    kept = [s for s, ok in zip(smiles, good) if ok]
    targets = np.stack(values, axis=1)[good].astype(np.float64) if values else np.zeros((len(kept), 0))
    return Molecules(kept, targets, _split(spec, kept), quarantine)


def _split(spec: MoleculeSpec, smiles: list[str]) -> dict[str, np.ndarray]:
    n, s = len(smiles), spec.split
    n_valid, n_test = int(round(s.valid_fraction * n)), int(round(s.test_fraction * n))
    if s.method == "random":
        order = np.random.default_rng(s.seed).permutation(n)
        return {"train": order[n_valid + n_test:], "valid": order[:n_valid], "test": order[n_valid:n_valid + n_test]}
    groups: dict[str, list[int]] = {}
    for i, smi in enumerate(smiles):
        groups.setdefault(MurckoScaffold.MurckoScaffoldSmiles(smiles=smi, includeChirality=False), []).append(i)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))  # largest first, ties by row
    out: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    n_train = n - n_valid - n_test
    for group in ordered:
        name = ("train" if len(out["train"]) + len(group) <= n_train else
                "valid" if len(out["valid"]) + len(group) <= n_valid else "test")
        out[name] += group
    return {k: np.array(v, dtype=np.int64) for k, v in out.items()}


class MoleculeGraphs(Dataset):
    """One split's molecules as graphs, built when indexed; `targets` [N, K] standardised
    (regression) or 0/1 (binary), NaN where missing."""

    def __init__(self, smiles: list[str], targets: np.ndarray, explicit_h: bool = True) -> None:
        self.smiles, self.targets, self.explicit_h = smiles, targets.astype(np.float32), explicit_h

    def __len__(self) -> int:
        return len(self.smiles)

    def __getitem__(self, i: int) -> Data:
        mol = parse(self.smiles[i], self.explicit_h)
        if mol is None:  # parsed at load: cannot happen unless RDKit changed under us
            raise DataError(f"molecule {i}: RDKit cannot parse {self.smiles[i]!r}")
        return graph(mol, self.targets[i])
