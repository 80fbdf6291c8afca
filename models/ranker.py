"""The multi-task ranker: embeddings + dense features → backbone → one tower per task.

forward(sparse, dense) → outputs [B, W]: each task's tower gives `widths[k]` of them
(one logit or value, or one logit per class of a multiclass task; W = K when every task
has one). `sparse` is a torchrec KeyedJaggedTensor (real
lengths for the multi-valued fields named in `pooling`) or, when every field is
single-valued, the equivalent ids tensor [B, F]. With `esmm` (Ma et al., SIGIR 2018),
task 1 is CTCVR = CTR × CVR: its tower predicts pCVR and the returned logit is
logit(pCTR · pCVR), so the CVR tower learns from the whole impression space.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtlrec.models.backbones import MMoE, PLE, SharedBottom, mlp
from mtlrec.models.config import HPSConfig, MMoEConfig, PLEConfig, RankerConfig
from mtlrec.models.embedding import make_embeddings


def _product_logit(logit_a: torch.Tensor, logit_b: torch.Tensor) -> torch.Tensor:
    """logit(σ(a)·σ(b)), computed in log space: log p − log(1 − p)."""
    log_p = nn.functional.logsigmoid(logit_a) + nn.functional.logsigmoid(logit_b)
    log_p = torch.clamp(log_p, max=-1e-7)
    return log_p - torch.log(-torch.expm1(log_p))


def _backbone(cfg: RankerConfig, in_dim: int, n_tasks: int) -> nn.Module:
    h, p = cfg.expert_hidden, cfg.dropout
    if isinstance(cfg, HPSConfig):
        return SharedBottom(in_dim, n_tasks, h, p)
    if isinstance(cfg, MMoEConfig):
        return MMoE(in_dim, n_tasks, cfg.n_experts, h, p)
    if isinstance(cfg, PLEConfig):
        return PLE(in_dim, n_tasks, cfg.levels, cfg.task_experts, cfg.shared_experts, h, p)
    raise ValueError(f"model.arch={getattr(cfg, 'arch', cfg)!r} is not a ranking backbone")


class MultiTaskRanker(nn.Module):
    def __init__(self, cfg: RankerConfig, table_sizes: dict[str, int], n_dense: int,
                 n_tasks: int, pooling: Mapping[str, str] | None = None,
                 widths: Sequence[int] | None = None) -> None:
        super().__init__()
        widths = [1] * n_tasks if widths is None else list(widths)
        if len(widths) != n_tasks or min(widths, default=1) < 1:
            raise ValueError(f"widths {widths} must give each of the {n_tasks} tasks at least one output")
        if cfg.esmm and widths != [1, 1]:
            raise ValueError(f"model.esmm needs exactly 2 tasks (CTR, CTCVR), both binary; got widths {widths}")
        self.cfg, self.n_tasks = cfg, n_tasks
        self.pooling = dict(pooling or {})  # the export twin lays out its inputs from it
        self.embeddings = make_embeddings(table_sizes, cfg.embedding_dim, cfg.embedding_impl,
                                          cfg.embedding_grad, self.pooling)
        in_dim = len(table_sizes) * cfg.embedding_dim + n_dense
        self.backbone = _backbone(cfg, in_dim, n_tasks)
        out, p = self.backbone.out_dim, cfg.dropout
        self.towers = nn.ModuleList(
            nn.Sequential(mlp(out, cfg.tower_hidden, p),
                          nn.Linear(cfg.tower_hidden[-1] if cfg.tower_hidden else out, width))
            for width in widths
        )

    def representation(self, sparse, dense: torch.Tensor) -> torch.Tensor:
        """The input of the backbone: flattened embeddings next to the dense features."""
        emb = self.embeddings(sparse)
        return torch.cat([emb.flatten(1), dense], dim=1)

    def forward(self, sparse, dense: torch.Tensor) -> torch.Tensor:
        return self.heads(self.backbone(self.representation(sparse, dense)))

    def encode(self, sparse, dense: torch.Tensor) -> list[torch.Tensor]:
        """The shared representation (see backbones): what every task consumes."""
        return self.backbone.encode(self.representation(sparse, dense))

    def decode(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Logits [B, K] from the shared representation: forward = decode ∘ encode."""
        return self.heads(self.backbone.decode(parts))

    def heads(self, hidden: list[torch.Tensor]) -> torch.Tensor:
        outputs = [tower(h) for tower, h in zip(self.towers, hidden)]
        if self.cfg.esmm:
            outputs[1] = _product_logit(outputs[0], outputs[1])
        return torch.cat(outputs, dim=1)

    def task_parameters(self, k: int) -> list[nn.Parameter]:
        """ψ_k: parameters only task k's loss reaches (its tower, gate, own experts)."""
        modules = [self.towers[k], *self.backbone.task_modules(k)]
        return [p for m in modules for p in m.parameters()]

    def shared_parameters(self, include_embeddings: bool = True) -> list[nn.Parameter]:
        """θ: parameters every task's loss reaches (embeddings optional)."""
        task = {id(p) for k in range(self.n_tasks) for p in self.task_parameters(k)}
        emb = {id(p) for p in self.embeddings.parameters()}
        return [p for p in self.parameters()
                if id(p) not in task and (include_embeddings or id(p) not in emb)]
