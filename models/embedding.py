"""Embedding tables for the categorical fields, described with torchrec configs.

Two implementations of the same tables (`EmbeddingBagConfig`, one per field, one id per
row) behind one interface, `(KeyedJaggedTensor | ids [B, F]) → [B, F, D]`:

- `FusedEmbeddings`, the single-device fast path: every table stacked in one
  `nn.Embedding` with per-field row offsets, so a lookup is one gather and its backward
  one scatter (DESIGN.md measured 1.1 ms vs 7.3 ms for an unsharded
  EmbeddingBagCollection on an H100; on 2 CPU cores see `mtlrec bench train`).
- `TorchrecEmbeddings`: torchrec's `EmbeddingBagCollection`, the module that
  `DistributedModelParallel` shards when training runs on several devices.

Both hold the same weights in the same layout (`state_tables()`), so one can be loaded
from the other.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

INIT_STD = 0.05


def table_configs(table_sizes: dict[str, int], dim: int) -> list[EmbeddingBagConfig]:
    """One torchrec table per categorical field (sum pooling over its single id)."""
    return [
        EmbeddingBagConfig(name=f"t_{name}", num_embeddings=size, embedding_dim=dim,
                           feature_names=[name], pooling=PoolingType.SUM)
        for name, size in table_sizes.items()
    ]


def _ids(sparse: KeyedJaggedTensor | torch.Tensor, n_fields: int) -> torch.Tensor:
    """[B, F] ids from a one-id-per-field KJT (values are key-major) or a plain tensor."""
    if isinstance(sparse, KeyedJaggedTensor):
        return sparse.values().view(n_fields, -1).t()
    return sparse


class FusedEmbeddings(nn.Module):
    """sparse: the table's gradient is a sparse tensor holding only the rows a batch
    touched (the trainer then updates it with SparseAdam, "lazy" Adam); a dense
    gradient of a 10^6-row table would cost a full-table optimizer step per batch."""

    def __init__(self, configs: list[EmbeddingBagConfig], sparse: bool = False) -> None:
        super().__init__()
        self.configs = configs
        self.dim = configs[0].embedding_dim
        sizes = torch.tensor([c.num_embeddings for c in configs])
        self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes, persistent=False)
        self.table = nn.Embedding(int(sizes.sum()), self.dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=INIT_STD)

    def forward(self, sparse: KeyedJaggedTensor | torch.Tensor) -> torch.Tensor:
        ids = _ids(sparse, len(self.configs))
        return self.table(ids + self.offsets)

    def state_tables(self) -> list[torch.Tensor]:
        sizes = [c.num_embeddings for c in self.configs]
        return list(torch.split(self.table.weight, sizes))


class TorchrecEmbeddings(nn.Module):
    def __init__(self, configs: list[EmbeddingBagConfig], device: torch.device | None = None) -> None:
        super().__init__()
        self.configs = configs
        self.dim = configs[0].embedding_dim
        self.ebc = EmbeddingBagCollection(tables=configs, device=device)
        for w in self.state_tables():
            nn.init.normal_(w.data, std=INIT_STD)

    def forward(self, sparse: KeyedJaggedTensor | torch.Tensor) -> torch.Tensor:
        if not isinstance(sparse, KeyedJaggedTensor):
            keys = [c.feature_names[0] for c in self.configs]
            b, f = sparse.shape
            sparse = KeyedJaggedTensor(keys=keys, values=sparse.t().reshape(-1),
                                       lengths=torch.ones(b * f, dtype=torch.int32, device=sparse.device))
        pooled = self.ebc(sparse).values()  # [B, F * D], fields in config order
        return pooled.view(pooled.shape[0], len(self.configs), self.dim)

    def state_tables(self) -> list[torch.Tensor]:
        return [self.ebc.embedding_bags[c.name].weight for c in self.configs]


SPARSE_FROM_ROWS = 100_000  # "auto": sparse gradients from this many embedding rows on


def make_embeddings(table_sizes: dict[str, int], dim: int, impl: str, grad: str = "auto") -> nn.Module:
    configs = table_configs(table_sizes, dim)
    if impl == "fused":
        sparse = grad == "sparse" or (grad == "auto" and sum(table_sizes.values()) >= SPARSE_FROM_ROWS)
        return FusedEmbeddings(configs, sparse=sparse)
    if impl == "torchrec":
        return TorchrecEmbeddings(configs)
    raise ValueError(f"model.embedding_impl must be 'fused' or 'torchrec', got {impl!r}")
