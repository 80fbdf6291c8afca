"""Training-loop and multi-task-method settings (`trainer.*`, `conf/method/*.yaml`)."""

from typing import Literal

from pydantic import Field, model_validator

from mtlrec.configbase import Strict


class ShardingConfig(Strict):
    """How embedding tables are laid out over the ranks of a torchrun launch (`training.sharding`)."""

    tables: Literal["replicated", "planner", "data_parallel", "table_wise", "column_wise", "row_wise"] = Field(
        "replicated", description="replicated: every rank holds every table, gradients summed "
        "(exactly the single-process step); planner: torchrec's DistributedModelParallel shards "
        "them as its planner decides; a sharding type: DMP with that type for every table")
    optimizer: Literal["rowwise_adagrad", "adagrad", "sgd"] = Field(
        "rowwise_adagrad", description="the sharded tables' fused optimizer (the CPU kernels have no Adam)")
    lr: float = Field(0.05, gt=0, description="its learning rate: Adagrad's scale, not Adam's "
                      "(on the synthetic logs 0.05 matched Adam at trainer.lr=0.01; 0.01 lagged)")


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
    data: Literal["auto", "memory", "stream"] = Field(
        "auto", description="hold each split in memory, stream it from Parquet in bounded "
        "memory, or (auto) stream the splits whose tensors exceed memory_budget_mb")
    memory_budget_mb: int = Field(1024, ge=1, description="memory for a split's rows: auto's "
                                  "threshold, and what a stream's read-ahead windows may hold")
    checkpoint_minutes: float = Field(10.0, ge=0, description="minutes between checkpoints "
                                      "within an epoch (0: after every batch); epochs always end "
                                      "with one")
    sharding: ShardingConfig = ShardingConfig()
    dev_rows: int = Field(100_000, ge=1, description="rows of a streamed validation split held "
                          "in memory for outer-loop dev batches (DTJS)")


class DBMTLConfig(Strict):
    beta: float = Field(0.9, gt=0, lt=1, description="EMA factor β of the task gradients")
    sigma: float = Field(0.5, ge=0, description="β_t = β / t^σ (0: constant); 0.5 is the "
                         "paper's best (Table 8), constant β its worst")


class MoCoGradConfig(Strict):
    lam: float = Field(0.1, gt=0, le=1, description="calibration strength λ (paper's best: 0.1)")
    beta1: float = Field(0.9, gt=0, lt=1, description="momentum factor of the task gradients")


class CAGradConfig(Strict):
    c: float = Field(0.4, ge=0, description="radius of the ball around the mean gradient")


class GradVacConfig(Strict):
    beta: float = Field(0.01, gt=0, le=1, description="EMA factor of the cosine targets")


class SuperLossConfig(Strict):
    lam: float = Field(1.0, gt=0, description="λ of SuperLoss (regularisation of log σ)")
    momentum: float = Field(0.9, ge=0, lt=1, description="τ ← m·τ + (1 − m)·mean(l)")


class DTJSConfig(Strict):
    every: int | None = Field(None, ge=1, description="steps between α updates (bi-level outer "
                              "loop); None: about updates_per_epoch times an epoch")
    updates_per_epoch: int = Field(15, ge=1, description="α updates an epoch when `every` is None "
                                   "(the authors' script)")
    terms: int = Field(3, ge=0, description="Neumann-series terms J (0: first order)")
    alpha_lr: float = Field(0.01, gt=0, description="Adam lr of α (1e-3 barely moves it in a run)")
    clip: float = Field(10.0, gt=0, description="max norm of the α hypergradient")
    dev_batch_size: int | None = Field(None, ge=1, description="dev batch size drawn from the "
                                       "validation split (None: trainer.batch_size)")


class FAMOConfig(Strict):
    lr: float = Field(0.025, gt=0, description="Adam lr of the task logits ξ")
    weight_decay: float = Field(1e-3, ge=0)


class GradNormConfig(Strict):
    alpha: float = Field(1.5, ge=0, description="restoring-force strength α")
    lr: float = Field(0.025, gt=0, description="Adam lr of the task weights")


class DWAConfig(Strict):
    temperature: float = Field(2.0, gt=0)


class GroupedConfig(Strict):
    beta: float = Field(1e-3, gt=0, le=1, description="EMA factor of the affinity (1e-4 with many tasks)")
    warmup_steps: int = Field(100, ge=0, description="steps with every task alone before regrouping")
    regroup_every: int = Field(1, ge=1, description="steps between regroupings after the "
                               "warm-up (the released code: every step)")
    preference: float | Literal["median"] = Field(
        0.0, description="affinity propagation's preference on the normalised affinity: 0 groups "
        "tasks with positive affinity (the paper's rule); median (the released code) merges two "
        "tasks only when each helps the other more than itself")
    initial: list[list[int]] | None = Field(None, description="starting groups (default: every "
                                            "task alone)")


class MethodConfig(Strict):
    """The multi-task step as parts (DESIGN.md, ALGORITHMS.md): loss transform × loss
    weighting or aggregator of the per-task gradients × optimizer × schedule × optional
    DTJS outer loop. Presets in conf/method/; parts recombine from the command line
    (`method=adatask aggregate=pcgrad`, `loss=log aggregate=mocograd`). stl: one model per
    task (nothing to combine)."""

    name: str
    loss: Literal["identity", "log", "superloss"] = "identity"
    weighting: str = Field(
        "fixed", description="how the task losses combine into one: fixed task_weights, rlw, "
        "gls (geometric mean), uw (learnt uncertainty), dwa (loss-ratio softmax), famo "
        "(training/mtl/registry.py)")
    aggregate: str = Field("sum", description="map of the per-task gradients G [K, D] on the "
                           "shared part to its update: sum, pcgrad, dbmtl, mocograd, mgda, "
                           "cagrad, imtl_g, gradvac, graddrop, nash_mtl, aligned_mtl, gradnorm, "
                           "dtjs, or one registered (training/mtl/registry.py)")
    optimizer: Literal["adam", "rmsprop", "adagrad", "adatask_adam", "adatask_rmsprop",
                       "adatask_adagrad"] = "adam"
    schedule: Literal["joint", "grouped"] = Field(
        "joint", description="one update per batch, or selective task group updates")
    outer: Literal["none", "dtjs"] = Field("none", description="DTJS bi-level α updates")
    grad_on: Literal["shared", "representation", "shared_and_embeddings"] = Field(
        "shared", description="where per-task gradients are taken: shared dense parameters, "
        "the shared representation (cheaper), or also the embedding tables (small ones)")
    batched_grads: bool = Field(False, description="per-task gradients by one vmapped "
                                "vector-Jacobian product instead of K backward passes (slower "
                                "on the CPU: `mtlrec bench methods`)")
    task_weights: list[float] | None = None
    diagnostics_every: int = Field(200, ge=0, description="steps between conflict "
                                   "diagnostics, at most an epoch's tenth (0: off)")
    dbmtl: DBMTLConfig = DBMTLConfig()
    mocograd: MoCoGradConfig = MoCoGradConfig()
    cagrad: CAGradConfig = CAGradConfig()
    gradvac: GradVacConfig = GradVacConfig()
    superloss: SuperLossConfig = SuperLossConfig()
    dtjs: DTJSConfig = DTJSConfig()
    famo: FAMOConfig = FAMOConfig()
    gradnorm: GradNormConfig = GradNormConfig()
    dwa: DWAConfig = DWAConfig()
    grouped: GroupedConfig = GroupedConfig()

    @property
    def single_task(self) -> bool:
        """The STL preset (possibly renamed by recombination, `stl+…`)."""
        return self.name.partition("+")[0] == "stl"

    @property
    def adatask(self) -> bool:
        return self.optimizer.startswith("adatask_")

    @model_validator(mode="after")
    def _compatible(self) -> "MethodConfig":
        problems = _incompatibilities(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _incompatibilities(m: MethodConfig) -> list[str]:
    """Combinations that cannot work, each with the reason (those that depend on what a
    named part is are checked when the step is built: `training.mtl.registry.problems`)."""
    out = []
    if m.single_task and (m.aggregate != "sum" or m.loss != "identity" or m.weighting != "fixed"
                            or m.schedule != "joint" or m.outer != "none"):
        out.append("method stl trains one model per task: there are no task losses or "
                   "gradients to combine, so loss/weighting/aggregate/schedule/outer must stay "
                   "identity/fixed/sum/joint/none")
    if m.weighting != "fixed" and m.aggregate != "sum":
        out.append(f"weighting={m.weighting} defines how the task losses combine; "
                   f"aggregate={m.aggregate} would replace that combination")
    if m.task_weights is not None and (m.weighting != "fixed" or m.aggregate != "sum"):
        out.append("task_weights only apply to weighting=fixed with aggregate=sum; "
                   f"{m.weighting}/{m.aggregate} sets its own task balance")
    if m.adatask and m.grad_on == "representation":
        out.append(f"optimizer={m.optimizer} keeps per-task moments of the shared parameters; "
                   "grad_on=representation gives per-task gradients on activations instead")
    if m.outer == "dtjs" and m.aggregate != "dtjs":
        out.append("outer=dtjs learns the α of DTJS's φ weights: it needs aggregate=dtjs")
    if m.outer == "dtjs" and m.grad_on == "representation":
        out.append("outer=dtjs needs the hypergradient through the whole model: use "
                   "grad_on=shared")
    if m.schedule == "grouped" and m.outer != "none":
        out.append("schedule=grouped makes several updates per batch; DTJS's α update is "
                   "defined for one joint update")
    if m.weighting == "famo" and m.loss != "identity":
        out.append("weighting=famo already balances log L_k; use loss=identity")
    return out
