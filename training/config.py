"""Training-loop and multi-task-method settings (`trainer.*`, `conf/method/*.yaml`)."""

from typing import Literal

from pydantic import Field, model_validator

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


class DBMTLConfig(Strict):
    beta: float = Field(0.9, gt=0, lt=1, description="EMA factor β of the task gradients")
    sigma: float = Field(0.0, ge=0, description="β_t = β / t^σ (0: constant)")


class MoCoGradConfig(Strict):
    lam: float = Field(0.1, gt=0, le=1, description="calibration strength λ (paper's best: 0.1)")
    beta1: float = Field(0.9, gt=0, lt=1, description="momentum factor of the task gradients")


class CAGradConfig(Strict):
    c: float = Field(0.4, ge=0, description="radius of the ball around the mean gradient")


class GradVacConfig(Strict):
    beta: float = Field(0.01, gt=0, le=1, description="EMA factor of the cosine targets")


class MethodConfig(Strict):
    """The multi-task step as parts: loss transform × aggregator of the per-task gradients
    on the shared dense parameters, or a loss weighting (fixed, RLW, GLS). Presets in
    conf/method/ (ew, stl, rlw, gls, pcgrad, dbmtl, mocograd, mgda, cagrad, imtl_g, gradvac); parts can be recombined, e.g. `method=mocograd method.loss=log`.
    stl: one model per task (nothing to combine)."""

    name: str
    loss: Literal["identity", "log"] = "identity"
    weighting: Literal["fixed", "rlw", "gls"] = Field(
        "fixed", description="how aggregate=sum combines the losses: fixed task_weights, "
        "random weights each step (RLW) or their geometric mean (GLS)")
    aggregate: Literal["sum", "pcgrad", "dbmtl", "mocograd", "mgda", "cagrad", "imtl_g",
                       "gradvac"] = "sum"
    task_weights: list[float] | None = None
    dbmtl: DBMTLConfig = DBMTLConfig()
    mocograd: MoCoGradConfig = MoCoGradConfig()
    cagrad: CAGradConfig = CAGradConfig()
    gradvac: GradVacConfig = GradVacConfig()

    @model_validator(mode="after")
    def _compatible(self) -> "MethodConfig":
        if self.name == "stl" and (self.aggregate != "sum" or self.loss != "identity"):
            raise ValueError("method stl trains one model per task: there are no task losses or "
                             "gradients to combine, so loss/aggregate must stay identity/sum")
        if self.weighting != "fixed" and self.aggregate != "sum":
            raise ValueError(f"weighting={self.weighting} defines how the task losses combine; "
                             f"aggregate={self.aggregate} would replace that combination")
        if self.task_weights is not None and self.weighting != "fixed":
            raise ValueError(f"task_weights only apply to weighting=fixed, not {self.weighting}")
        if self.task_weights is not None and self.aggregate != "sum":
            raise ValueError(f"task_weights only apply to aggregate=sum; {self.aggregate} sets "
                             "its own task balance")
        return self
