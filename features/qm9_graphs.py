"""The torch_geometric adapter of QM9: molecules (features.qm9) → `torch_geometric.data.Data`.

QM9's file has positions but no bond table (and no RDKit here to perceive bonds from
SMILES), so, as in Gilmer et al. (2017), "Neural Message Passing for Quantum
Chemistry", a molecule is a complete graph (or, with `cutoff`, all atom pairs within
`cutoff` Å) whose edges carry the interatomic distance. In place of the bond-type one-hot
of Gilmer et al. each edge also says whether the pair is covalently bonded, perceived
geometrically: d < r_i + r_j + 0.2 Å with the covalent radii of Cordero et al. (2008).
The tolerance sits in the gap of QM9's own distances (measured on 5,000 molecules: bonded
pairs lie below r_i + r_j + 0.15 Å, the closest non-bonded ones, across small rings,
above + 0.25 Å); Open Babel's + 0.45 Å bonds across those rings and makes ~5% of the
molecules over-valent, + 0.2 Å none, and leaves no atom without a bond.

Per graph:
  x [n, 8] float32: one-hot element (H, C, N, O, F), atomic number, number of covalent
    neighbours, number of covalently bonded hydrogens (the last two from the perceived
    bonds; Gilmer et al. use the same counts from RDKit);
  z [n] int64: atomic numbers; pos [n, 3] float32: positions in Å;
  edge_index [2, E] int64, both directions, no self-loops;
  edge_attr [E, 2] float32: distance in Å, covalent bond (0/1);
  y [1, 11] float32: standardised targets (batches collate to [B, 11]);
  idx [1] int64: the QM9 molecule id.

Graphs are built when indexed (≈0.2 ms each on one CPU core) instead of stored: the
complete graphs of all 130k molecules hold ~40M edges, while a batch needs only its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data

from mtlrec.features.qm9 import ELEMENTS, QM9Split

ATOMIC_NUMBERS = np.array([1, 6, 7, 8, 9])  # of ELEMENTS
COVALENT_RADII = np.array([0.31, 0.76, 0.71, 0.66, 0.57])  # Å, of ELEMENTS (C: sp3)
BOND_TOLERANCE = 0.2  # Å
NODE_FEATURES = (*(f"is_{e}" for e in ELEMENTS), "atomic_number", "covalent_degree", "bonded_h")
EDGE_FEATURES = ("distance", "covalent_bond")


def molecule_graph(elements: np.ndarray, positions: np.ndarray, y: np.ndarray | None = None,
                   *, cutoff: float | None = None, bonds_only: bool = False,
                   molecule_id: int | None = None) -> Data:
    """One molecule as a `Data` graph (fields in the module docstring).

    elements: element ids [n] (positions in ELEMENTS); positions: [n, 3] Å;
    y: targets [11] or None; cutoff: keep pairs within this distance (None: all pairs);
    bonds_only: keep only the covalently bonded pairs (~7× fewer edges than the complete
    graph, so ~7× cheaper edge networks: the CPU schedule).
    """
    pos = np.asarray(positions, dtype=np.float32)
    n = len(elements)
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    radii = COVALENT_RADII[elements]
    off_diagonal = ~np.eye(n, dtype=bool)
    bonded = (dist < radii[:, None] + radii[None, :] + BOND_TOLERANCE) & off_diagonal
    keep = bonded if bonds_only else off_diagonal
    if cutoff is not None:
        keep = keep & (dist <= cutoff)
    src, dst = np.nonzero(keep)
    x = np.concatenate([
        np.eye(len(ELEMENTS), dtype=np.float32)[elements],
        ATOMIC_NUMBERS[elements, None],
        bonded.sum(1, keepdims=True),
        bonded[:, elements == ELEMENTS.index("H")].sum(1, keepdims=True),
    ], axis=1).astype(np.float32)
    data = Data(
        x=torch.from_numpy(x),
        z=torch.from_numpy(ATOMIC_NUMBERS[elements].astype(np.int64)),
        pos=torch.from_numpy(pos),
        edge_index=torch.from_numpy(np.stack([src, dst]).astype(np.int64)),
        edge_attr=torch.from_numpy(
            np.stack([dist[src, dst], bonded[src, dst]], axis=1).astype(np.float32)),
    )
    if y is not None:
        data.y = torch.from_numpy(np.asarray(y, dtype=np.float32).reshape(1, -1))
    if molecule_id is not None:
        data.idx = torch.tensor([molecule_id], dtype=torch.int64)
    return data


class QM9Graphs(Dataset):
    """A QM9 split as a dataset of graphs for `torch_geometric.loader.DataLoader`."""

    def __init__(self, split: QM9Split, cutoff: float | None = None, bonds_only: bool = False) -> None:
        self.split, self.cutoff, self.bonds_only = split, cutoff, bonds_only

    @property
    def targets(self) -> np.ndarray:
        return self.split.targets

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> Data:
        elements, positions = self.split.molecule(i)
        return molecule_graph(elements, positions, self.split.targets[i], cutoff=self.cutoff,
                              bonds_only=self.bonds_only, molecule_id=int(self.split.index[i]))


@dataclass
class GraphBatch:
    """A torch_geometric `Batch` of molecules in the trainer's batch interface."""

    graphs: Batch
    weights: None = None  # every molecule weighs 1 (the trainer's batch interface)

    @property
    def inputs(self) -> tuple[Batch]:
        return (self.graphs,)

    @property
    def labels(self) -> torch.Tensor:
        return self.graphs.y

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "GraphBatch":
        return GraphBatch(self.graphs.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.graphs.num_graphs


class GraphSplit:
    """A split of molecular graphs (QM9's, or SMILES' `features.molecules.MoleculeGraphs`:
    any dataset of graphs with `targets` [N, K]) for the trainer
    (`features.batches.BatchLoader`): `labels` [N, K] and `batch(rows)`. Each molecule's
    graph is built the first time a batch needs it and kept (bond graphs of all 130k QM9
    molecules hold ~5M edges; complete graphs ~40M)."""

    weights = None  # every molecule weighs 1

    def __init__(self, graphs: Dataset, rows: int | None = None) -> None:
        """rows: use the first `rows` molecules only (reduced schedules, tests)."""
        self.graphs = graphs
        self.labels = torch.from_numpy(graphs.targets[:rows])
        self._built: list[Data | None] = [None] * len(self.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def _graph(self, i: int) -> Data:
        if self._built[i] is None:
            self._built[i] = self.graphs[i]
        return self._built[i]

    def batch(self, index: torch.Tensor) -> GraphBatch:
        return GraphBatch(Batch.from_data_list([self._graph(i) for i in index.tolist()]))
