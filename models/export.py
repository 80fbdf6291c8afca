"""The export twin: the trained ranker with ONNX-friendly embeddings and answer outputs.

Training embeddings (one fused table, or torchrec's EmbeddingBagCollection) take
KeyedJaggedTensors, which do not export, and an `nn.EmbeddingBag` becomes an ONNX `Loop`
that onnxruntime runs several times slower (DESIGN.md). The twin shares everything but
the embeddings with the trained model and holds one `nn.Embedding` per field (one
Gather each); it returns each task's answer (`models.outputs`: probabilities for binary
tasks, ESMM's product included; values; class probabilities), the scores serving returns.

Its inputs are plain tensors with a batch axis. With single-valued fields only: ids
[B, F]. With multi-valued fields (the ranker's `pooling`): ids [B, S] padded to a fixed
number of slots per field (`slot_widths`) and lengths [B, M], one column per multi-valued
field; the slots past a row's length are masked out, so the bags stay plain Gather,
mask, ReduceSum and Div.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from mtlrec.models.ranker import MultiTaskRanker


def slot_widths(table_names: list[str], max_len: Mapping[str, int]) -> list[int]:
    """How many columns of the padded ids each field takes, in table order: 1 for a
    single-valued field, `max_len[name]` for a multi-valued one."""
    if unknown := sorted(set(max_len) - set(table_names)):
        raise ValueError(f"max_len names fields {unknown} that are not tables {table_names}")
    if short := {name: n for name, n in max_len.items() if n < 1}:
        raise ValueError(f"max_len must be at least 1 slot, got {short}")
    return [max_len.get(name, 1) for name in table_names]


def _frozen(tables: list[torch.Tensor]) -> nn.ModuleList:
    """One frozen `nn.Embedding` per field holding a copy of its weights."""
    return nn.ModuleList(
        nn.Embedding.from_pretrained(t.detach().clone(), freeze=True) for t in tables
    )


class PerFieldEmbeddings(nn.Module):
    """ids [B, F] int64 → [B, F, D]: field j looks up its own table."""

    def __init__(self, tables: list[torch.Tensor]) -> None:
        super().__init__()
        self.tables = _frozen(tables)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        columns = ids.unbind(dim=1)
        return torch.stack([table(c) for table, c in zip(self.tables, columns)], dim=1)


def _masked_pool(rows: torch.Tensor, lengths: torch.Tensor, mean: bool) -> torch.Tensor:
    """rows [B, W, D] of a field's slots, lengths [B] → [B, D]: the sum (or mean) of the
    first `lengths` slots of each row; an empty row pools to zeros, as in training."""
    used = torch.arange(rows.shape[1], device=rows.device) < lengths[:, None]  # [B, W]
    pooled = (rows * used[..., None]).sum(dim=1)
    return pooled / lengths.clamp(min=1)[:, None] if mean else pooled


class PaddedEmbeddings(nn.Module):
    """(ids [B, S] int64, lengths [B, M] int64) → [B, F, D]: field j gathers its
    `widths[j]` slots from its own table; a multi-valued field (`pooling[j]` "mean" or
    "sum", None for a single-valued one) pools the slots its lengths column covers."""

    def __init__(self, tables: list[torch.Tensor], widths: list[int],
                 pooling: list[str | None]) -> None:
        super().__init__()
        self.tables = _frozen(tables)
        self.widths, self.pooling = widths, pooling
        multi = [j for j, p in enumerate(pooling) if p is not None]
        self.columns = {j: m for m, j in enumerate(multi)}  # field → its lengths column

    def forward(self, sparse: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ids, lengths = sparse
        fields = []
        for j, (table, slots) in enumerate(zip(self.tables, ids.split(self.widths, dim=1))):
            if self.pooling[j] is None:
                fields.append(table(slots.squeeze(1)))
            else:
                fields.append(_masked_pool(table(slots), lengths[:, self.columns[j]],
                                           self.pooling[j] == "mean"))
        return torch.stack(fields, dim=1)


class ExportModel(nn.Module):
    """(ids int64 [B, F], dense float32 [B, D]) → answers float32 [B, W] (`answers`:
    models.outputs.TaskAnswers; probabilities σ(logits) by default)."""

    def __init__(self, ranker: MultiTaskRanker, answers: nn.Module | None = None) -> None:
        super().__init__()
        self.ranker, self.answers = ranker, nn.Sigmoid() if answers is None else answers

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.answers(self.ranker(ids, dense))


class PaddedExportModel(ExportModel):
    """(ids int64 [B, S], lengths int64 [B, M], dense float32 [B, D]) → answers float32
    [B, W], for a ranker with multi-valued fields (ids laid out by `slot_widths`)."""

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor,  # type: ignore[override]
                dense: torch.Tensor) -> torch.Tensor:
        return self.answers(self.ranker((ids, lengths), dense))


def export_twin(ranker: MultiTaskRanker, max_len: Mapping[str, int] | None = None,
                answers: nn.Module | None = None) -> ExportModel:
    """A copy of `ranker` in eval mode whose embeddings are per-field `nn.Embedding`s
    holding the same weights, its outputs turned into `answers`; the original is left
    untouched. `max_len` gives the slot count of each multi-valued field (exactly the keys
    of `ranker.pooling`)."""
    max_len = dict(max_len or {})
    if set(max_len) != set(ranker.pooling):
        raise ValueError(f"max_len must name exactly the multi-valued fields "
                         f"{sorted(ranker.pooling)}, got {sorted(max_len)}")
    tables = ranker.embeddings.state_tables()
    twin = copy.deepcopy(ranker).eval()
    if not ranker.pooling:
        twin.embeddings = PerFieldEmbeddings(tables)
        return ExportModel(twin, answers).eval()
    names = ranker.embeddings.keys
    twin.embeddings = PaddedEmbeddings(tables, slot_widths(names, max_len),
                                       [ranker.pooling.get(name) for name in names])
    return PaddedExportModel(twin, answers).eval()
