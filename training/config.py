"""Training-loop and multi-task-method settings (`trainer.*`, `conf/method/*.yaml`)."""

from typing import Literal

from pydantic import Field

from mtlrec.configbase import Strict


class TrainerConfig(Strict):
    max_epochs: int = Field(10, ge=1)
    batch_size: int = Field(2048, ge=1)
    lr: float = Field(1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(2, ge=0, description="epochs without validation-AUC gain before stopping")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = Field(False, description="bfloat16 autocast (CUDA only; ignored on the CPU)")
    threads: int = Field(0, ge=0, description="torch CPU threads (0: all cores)")


class MethodConfig(Strict):
    """The multi-task step. ew: sum of task losses; stl: one model per task."""

    name: Literal["ew", "stl"]
    task_weights: list[float] | None = None
