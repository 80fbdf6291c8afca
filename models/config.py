"""Model hyper-parameters (`conf/model/*.yaml`): one config type per architecture, told
apart by `arch`, so a key an architecture does not use is an error, not silently
ignored (`model=hps model.n_experts=4` names the valid keys of `hps`).

hps: shared bottom `expert_hidden` → towers. mmoe: `n_experts` experts of
`expert_hidden`, one softmax gate per task. ple: `levels` CGC levels with
`shared_experts` shared and `task_experts` per-task experts. lenet: MultiMNIST's LeNet
encoder + heads (fixed sizes). mpnn: QM9's MPNN with `hidden` wide atom states.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from mtlrec.configbase import Strict


class RankerConfig(Strict):
    """What every ranking backbone (embeddings → backbone → towers) shares."""

    embedding_dim: int = Field(16, ge=1)
    expert_hidden: list[int] = Field([128], description="hidden sizes of the shared bottom / each expert")
    tower_hidden: list[int] = [64]
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    embedding_impl: Literal["fused", "torchrec"] = Field(
        "fused", description="fused: one table, single-device fast path; torchrec: EmbeddingBagCollection"
    )
    embedding_grad: Literal["auto", "dense", "sparse"] = Field(
        "auto", description="fused tables: sparse gradients + SparseAdam (auto: from 100k rows on)"
    )
    esmm: bool = Field(False, description="task 1 is CTCVR = CTR × CVR (click/conversion data)")


class HPSConfig(RankerConfig):
    arch: Literal["hps"]


class MMoEConfig(RankerConfig):
    arch: Literal["mmoe"]
    n_experts: int = Field(8, ge=1)


class PLEConfig(RankerConfig):
    arch: Literal["ple"]
    levels: int = Field(1, ge=1)
    shared_experts: int = Field(4, ge=1)
    task_experts: int = Field(4, ge=1)


class LeNetConfig(Strict):
    arch: Literal["lenet"]


class MPNNConfig(Strict):
    arch: Literal["mpnn"]
    hidden: int = Field(64, ge=1, description="width of atom states and the representation")


ModelConfig = Annotated[HPSConfig | MMoEConfig | PLEConfig | LeNetConfig | MPNNConfig,
                        Field(discriminator="arch")]
_ADAPTER: TypeAdapter = TypeAdapter(ModelConfig)


def model_config(**values: object) -> ModelConfig:
    """The config of `values["arch"]`, validated (`model_config(arch="mmoe", n_experts=2)`)."""
    return _ADAPTER.validate_python(values)


def load_model_config(text: str) -> ModelConfig:
    """A saved `model_config.json`. Files written before the per-architecture types list
    every architecture's keys at their values; the keys this architecture does not use
    are dropped, so old runs and champions still load."""
    values = json.loads(text)
    kind = type(model_config(arch=values["arch"])) if "arch" in values else None
    if kind is not None:
        values = {k: v for k, v in values.items() if k in kind.model_fields}
    return _ADAPTER.validate_python(values)
