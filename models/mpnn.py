"""The MPNN of Gilmer et al. (2017), "Neural Message Passing for Quantum Chemistry"
(ICML), as the shared encoder of QM9's 11 regression tasks.

The multi-task setting of Nash-MTL and LibMTL (after PyG's NNConv QM9 example): atom
features → Linear → ReLU (hidden 64); 3 message-passing steps, each an edge network
(NNConv: Linear(edge_dim→128) → ReLU → Linear(128→64·64) gives each edge a 64×64
matrix; messages averaged, aggr="mean") followed by ReLU and a GRU update with weights
shared across steps; Set2Set readout with 3 processing steps → Linear(128→64) → ReLU is
the shared representation; one Linear(64→1) head per target. (Those papers use one
Linear(64→11); separate heads are the same function, split so that each task owns its
parameters.)

Same interface as the rankers and `MultiLeNet`: `shared_parameters()`,
`task_parameters(k)`, `representation(batch)` / `heads(z)` and, in the trainer's list
form of that split, `encode(batch)` / `decode(parts)`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.nn import NNConv
from torch_geometric.nn.aggr import Set2Set

from mtlrec.models.multihead import SharedEncoderHeads


class MPNNEncoder(nn.Module):
    """A batch of graphs → one vector per graph [B, hidden]."""

    def __init__(self, node_dim: int, edge_dim: int, hidden: int = 64, steps: int = 3,
                 set2set_steps: int = 3, edge_hidden: int = 128) -> None:
        super().__init__()
        self.steps = steps
        self.embed = nn.Linear(node_dim, hidden)
        edge_network = nn.Sequential(nn.Linear(edge_dim, edge_hidden), nn.ReLU(),
                                     nn.Linear(edge_hidden, hidden * hidden))
        self.conv = NNConv(hidden, hidden, edge_network, aggr="mean")
        self.gru = nn.GRUCell(hidden, hidden)
        self.readout = Set2Set(hidden, processing_steps=set2set_steps)
        self.project = nn.Linear(2 * hidden, hidden)

    def forward(self, batch: Batch) -> torch.Tensor:
        h = torch.relu(self.embed(batch.x))
        for _ in range(self.steps):
            m = torch.relu(self.conv(h, batch.edge_index, batch.edge_attr))
            h = self.gru(m, h)
        pooled = self.readout(h, batch.batch, dim_size=batch.num_graphs)
        return torch.relu(self.project(pooled))


class MPNN(SharedEncoderHeads):
    """batch (torch_geometric Batch with x, edge_index, edge_attr, batch) → predictions [B, K].

    node_dim / edge_dim: widths of `x` and `edge_attr` (for features.qm9_graphs: 8 and 2).
    """

    def __init__(self, node_dim: int, edge_dim: int, n_tasks: int = 11, hidden: int = 64) -> None:
        super().__init__()
        self.n_tasks = n_tasks
        self.encoder = MPNNEncoder(node_dim, edge_dim, hidden)
        self.task_heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_tasks))

    def _stack(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        """Predictions [B, K]."""
        return torch.cat(outputs, dim=1)
