"""Model hyper-parameters (`conf/model/*.yaml`)."""

from typing import Literal

from pydantic import Field

from mtlrec.configbase import Strict


class ModelConfig(Strict):
    """One of the ranking backbones, or the benchmark models; fields a model does not use
    are ignored by it.

    hps: shared bottom `expert_hidden` → towers. mmoe: `n_experts` experts of
    `expert_hidden`, one softmax gate per task. ple: `levels` CGC levels with
    `shared_experts` shared and `task_experts` per-task experts. lenet: MultiMNIST's
    LeNet encoder + heads (fixed sizes). mpnn: QM9's MPNN with `hidden` wide atom states.
    """

    arch: Literal["hps", "mmoe", "ple", "lenet", "mpnn"]
    hidden: int = Field(64, ge=1, description="mpnn: width of atom states and the representation")
    embedding_dim: int = Field(16, ge=1)
    expert_hidden: list[int] = [128]
    tower_hidden: list[int] = [64]
    n_experts: int = Field(8, ge=1)
    levels: int = Field(1, ge=1)
    shared_experts: int = Field(4, ge=1)
    task_experts: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    embedding_impl: Literal["fused", "torchrec"] = Field(
        "fused", description="fused: one table, single-device fast path; torchrec: EmbeddingBagCollection"
    )
    embedding_grad: Literal["auto", "dense", "sparse"] = Field(
        "auto", description="fused tables: sparse gradients + SparseAdam (auto: from 100k rows on)"
    )
    esmm: bool = Field(False, description="task 1 is CTCVR = CTR × CVR (click/conversion data)")
