"""Embedding tables for the categorical fields, described with torchrec configs.

Two implementations of the same tables (`EmbeddingBagConfig`, one per field) behind one
interface, `(KeyedJaggedTensor | ids [B, F]) → [B, F, D]` in table order:

- `FusedEmbeddings`, the single-device fast path: every table stacked in one
  `nn.Embedding` with per-field row offsets, so a lookup is one gather and its backward
  one scatter (DESIGN.md measured 1.1 ms vs 7.3 ms for an unsharded
  EmbeddingBagCollection on an H100; on 2 CPU cores see `mtlrec bench train`).
- `TorchrecEmbeddings`: torchrec's `EmbeddingBagCollection`, the module that
  `DistributedModelParallel` shards when training runs on several devices.

A field is single-valued (one id per row) unless `pooling` names it: then a row holds
any number of ids (the KeyedJaggedTensor's lengths, 0 included), pooled by "mean" or
"sum"; an empty bag pools to zeros. Plain ids [B, F] only fit single-valued fields.

Both hold the same weights in the same layout (`state_tables()`), so one can be loaded
from the other.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

INIT_STD = 0.05
POOLING = {"mean": PoolingType.MEAN, "sum": PoolingType.SUM}


def table_configs(table_sizes: dict[str, int], dim: int,
                  pooling: Mapping[str, str] | None = None) -> list[EmbeddingBagConfig]:
    """One torchrec table per categorical field; `pooling` gives the multi-valued fields'
    pooling ("mean" or "sum"), the others sum their single id."""
    pooling = dict(pooling or {})
    if unknown := sorted(set(pooling) - set(table_sizes)):
        raise ValueError(f"pooling names fields {unknown} that are not tables {list(table_sizes)}")
    if bad := {k: v for k, v in pooling.items() if v not in POOLING}:
        raise ValueError(f"pooling must be 'mean' or 'sum', got {bad}")
    return [
        EmbeddingBagConfig(name=f"t_{name}", num_embeddings=size, embedding_dim=dim,
                           feature_names=[name], pooling=POOLING[pooling.get(name, "sum")])
        for name, size in table_sizes.items()
    ]


def _check_keys(sparse: KeyedJaggedTensor, keys: list[str]) -> None:
    """The tables read a KJT by position, so a KJT in another key order would silently
    look its ids up in the wrong tables (torchrec's EmbeddingBagCollection does too)."""
    if sparse.keys() != keys:
        raise ValueError(f"KeyedJaggedTensor keys must be in table order {keys}, "
                         f"got {sparse.keys()}")


def _check_plain(multi_valued: Collection[str]) -> None:
    if multi_valued:
        raise ValueError(f"multi-valued fields {sorted(multi_valued)} need a KeyedJaggedTensor "
                         f"with their lengths, not an ids tensor [B, F]")


def _single_ids(sparse: KeyedJaggedTensor) -> torch.Tensor:
    """[B, F] ids of a one-id-per-row KJT (values are key-major); checks only sizes, so
    it never reads the lengths (no host sync)."""
    values, n_keys = sparse.values(), len(sparse.keys())
    if values.numel() != n_keys * sparse.stride():
        raise ValueError(f"{values.numel()} ids for {n_keys} fields × {sparse.stride()} rows: "
                         f"a field holds several ids per row but is not declared in pooling")
    return values.view(n_keys, -1).t()


class FusedEmbeddings(nn.Module):
    """sparse: the table's gradient is a sparse tensor holding only the rows a batch
    touched (the trainer then updates it with SparseAdam, "lazy" Adam); a dense
    gradient of a 10^6-row table would cost a full-table optimizer step per batch.

    Without multi-valued fields a lookup is one gather that never reads the lengths (no
    host sync); with them, one gather and one segment sum (`_pooled`)."""

    def __init__(self, configs: list[EmbeddingBagConfig], sparse: bool = False,
                 multi_valued: Collection[str] = ()) -> None:
        super().__init__()
        self.configs = configs
        self.keys = [c.feature_names[0] for c in configs]
        self.multi_valued = frozenset(multi_valued)
        self.dim = configs[0].embedding_dim
        sizes = torch.tensor([c.num_embeddings for c in configs])
        self.register_buffer("offsets", torch.cumsum(sizes, 0) - sizes, persistent=False)
        mean = torch.tensor([c.pooling == PoolingType.MEAN for c in configs])
        self.register_buffer("mean", mean, persistent=False)
        self.table = nn.Embedding(int(sizes.sum()), self.dim, sparse=sparse)
        nn.init.normal_(self.table.weight, std=INIT_STD)

    def forward(self, sparse: KeyedJaggedTensor | torch.Tensor) -> torch.Tensor:
        if isinstance(sparse, KeyedJaggedTensor):
            _check_keys(sparse, self.keys)
            if self.multi_valued:
                return self._pooled(sparse)
            ids = _single_ids(sparse)
        else:
            _check_plain(self.multi_valued)
            ids = sparse
        return self.table(ids + self.offsets)

    def _pooled(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Gather every id of the key-major KJT from the stacked table, sum each (key, row)
        bag with one `index_add`, then divide the mean-pooled fields by max(length, 1).
        Not `embedding_bag`: its backward has no derivative, and DTJS's hypergradient
        differentiates through the embeddings' gradient."""
        values = sparse.values()
        lengths = sparse.lengths().view(len(self.keys), -1)  # [F, B]
        per_key = lengths.sum(dim=1)  # output_size below: no host sync on a GPU
        rows = values + torch.repeat_interleave(self.offsets, per_key, output_size=values.numel())
        bags = torch.repeat_interleave(torch.arange(lengths.numel(), device=values.device),
                                       lengths.reshape(-1), output_size=values.numel())
        embedded = self.table(rows)
        pooled = embedded.new_zeros(lengths.numel(), self.dim).index_add(0, bags, embedded)
        pooled = pooled.view(len(self.keys), -1, self.dim)  # [F, B, D]
        counts = torch.where(self.mean[:, None], lengths.clamp(min=1), 1).to(pooled.dtype)
        return (pooled / counts[..., None]).transpose(0, 1)

    def state_tables(self) -> list[torch.Tensor]:
        sizes = [c.num_embeddings for c in self.configs]
        return list(torch.split(self.table.weight, sizes))


class TorchrecEmbeddings(nn.Module):
    def __init__(self, configs: list[EmbeddingBagConfig], device: torch.device | None = None,
                 multi_valued: Collection[str] = ()) -> None:
        super().__init__()
        self.configs = configs
        self.keys = [c.feature_names[0] for c in configs]
        self.multi_valued = frozenset(multi_valued)
        self.dim = configs[0].embedding_dim
        self.ebc = EmbeddingBagCollection(tables=configs, device=device)
        for w in self.state_tables():
            nn.init.normal_(w.data, std=INIT_STD)

    def forward(self, sparse: KeyedJaggedTensor | torch.Tensor) -> torch.Tensor:
        if isinstance(sparse, KeyedJaggedTensor):
            _check_keys(sparse, self.keys)
        else:
            _check_plain(self.multi_valued)
            b, f = sparse.shape
            sparse = KeyedJaggedTensor(keys=self.keys, values=sparse.t().reshape(-1),
                                       lengths=torch.ones(b * f, dtype=torch.int32, device=sparse.device))
        pooled = self.ebc(sparse)
        if pooled.keys() != self.keys:  # sharded by DMP: the fields come grouped by shard
            return torch.stack([pooled[key] for key in self.keys], dim=1)
        values = pooled.values()  # [B, F * D], fields in config order
        return values.view(values.shape[0], len(self.configs), self.dim)

    def state_tables(self) -> list[torch.Tensor]:
        return [self.ebc.embedding_bags[c.name].weight for c in self.configs]


SPARSE_FROM_ROWS = 100_000  # "auto": sparse gradients from this many embedding rows on


def make_embeddings(table_sizes: dict[str, int], dim: int, impl: str, grad: str = "auto",
                    pooling: Mapping[str, str] | None = None) -> nn.Module:
    """The tables of `table_sizes` as `impl` ("fused" or "torchrec"); `pooling` names the
    multi-valued fields (see `table_configs`)."""
    configs = table_configs(table_sizes, dim, pooling)
    multi_valued = set(pooling or {})
    if impl == "fused":
        sparse = grad == "sparse" or (grad == "auto" and sum(table_sizes.values()) >= SPARSE_FROM_ROWS)
        return FusedEmbeddings(configs, sparse=sparse, multi_valued=multi_valued)
    if impl == "torchrec":
        return TorchrecEmbeddings(configs, multi_valued=multi_valued)
    raise ValueError(f"model.embedding_impl must be 'fused' or 'torchrec', got {impl!r}")
