"""The export twin: the trained ranker with ONNX-friendly embeddings and probability outputs.

Training embeddings (one fused table, or torchrec's EmbeddingBagCollection) take
KeyedJaggedTensors, which do not export, and an `nn.EmbeddingBag` becomes an ONNX `Loop`
that onnxruntime runs several times slower (DESIGN.md). The twin shares everything but
the embeddings with the trained model and holds one `nn.Embedding` per field (one
Gather each), fed a plain int64 ids tensor [B, F]; it returns probabilities [B, K]
(sigmoid of the ranker's logits, ESMM's product included), the scores serving returns.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mtlrec.models.ranker import MultiTaskRanker


class PerFieldEmbeddings(nn.Module):
    """ids [B, F] int64 → [B, F, D]: field j looks up its own table."""

    def __init__(self, tables: list[torch.Tensor]) -> None:
        super().__init__()
        self.tables = nn.ModuleList(
            nn.Embedding.from_pretrained(t.detach().clone(), freeze=True) for t in tables
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        columns = ids.unbind(dim=1)
        return torch.stack([table(c) for table, c in zip(self.tables, columns)], dim=1)


class ExportModel(nn.Module):
    """(ids int64 [B, F], dense float32 [B, D]) → probabilities float32 [B, K]."""

    def __init__(self, ranker: MultiTaskRanker) -> None:
        super().__init__()
        self.ranker = ranker

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.ranker(ids, dense))


def export_twin(ranker: MultiTaskRanker) -> ExportModel:
    """A copy of `ranker` in eval mode whose embeddings are per-field `nn.Embedding`s
    holding the same weights; the original is left untouched."""
    twin = copy.deepcopy(ranker).eval()
    twin.embeddings = PerFieldEmbeddings(ranker.embeddings.state_tables())
    return ExportModel(twin).eval()
