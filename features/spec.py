"""The data-set contract: what a `conf/data/*.yaml` file may say, validated.

A data set is declared, not coded: its source files, how to read them, the kind of
each column (categorical, numeric, label source, id, group, day, ignored) and how the
validation split is drawn. Everything here is plain pydantic so that a typo in a conf
file is an error naming the key and the valid choices (see `pipeline/config.py`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from mtlrec.configbase import FilePath, Strict


class CategoricalField(Strict):
    """A categorical column mapped to integer ids through a vocabulary.

    Ids: 0 = out-of-vocabulary (unseen, or rarer than `min_count`), 1 = missing,
    known values from 2 on. With `hash_buckets`, no vocabulary is kept and
    id = 2 + hash(value) mod hash_buckets (for cardinalities too large to store).

    `multi`: the value is a list (tags, categories, recent items): a Parquet list column
    or a string of elements joined by `separator`. The vocabulary counts elements; a row
    keeps its first `max_len` elements (the rest are dropped and counted in the manifest),
    a missing or empty list is one missing id, and the model pools the elements'
    embeddings by `pooling`. An empty element (`a||b`) is a bad row.
    """

    name: str
    min_count: int = Field(1, ge=1)
    max_size: int | None = Field(None, ge=1, description="cap on known values (most frequent first)")
    hash_buckets: int | None = Field(None, ge=1)
    required: bool = False
    multi: bool = Field(False, description="a list of values per row (see the class docstring)")
    separator: str = Field("|", min_length=1, description="joins the elements of a multi field "
                           "held as a string")
    max_len: int = Field(20, ge=1, description="elements kept per row of a multi field")
    pooling: Literal["mean", "sum"] = Field("mean", description="how a multi field's element "
                                            "embeddings combine")


class NumericField(Strict):
    """A numeric column: clip → optional log1p → fill missing → standardise.

    The order matters: clipping bounds raw outliers, log1p tames heavy tails (signed:
    sign(x)·log1p(|x|) so negative values stay finite), the missing-value fill is in
    transformed units (`mean` becomes exactly 0 after standardising).
    """

    name: str
    clip: tuple[float, float] | None = None
    log1p: bool = False
    standardize: bool = True
    fill: Literal["mean", "zero"] | float = "mean"
    required: bool = False
    nonfinite: Literal["reject", "missing"] = Field(
        "reject", description="NaN/inf: quarantine the row (reject) or treat as missing"
    )


class Label(Strict):
    """A task label, read from one column or derived from several, of one kind.

    Kinds (`kind`): `binary` (log loss; AUC, log loss, calibration), `regression` (MSE or
    Huber on the target after the optional `log1p` and standardisation fitted on the
    training split; MAE and RMSE in original units), `multiclass` (cross-entropy over
    `classes`; accuracy, macro-F1).

    Binary sources:
    - `column` with neither `positive` nor `all_of`: the column must hold 0 or 1.
    - `column` + `positive` (+ optional `negative`): 1 when the value is in `positive`;
      with `negative` given, any value in neither list is a bad row.
    - `all_of`: 1 when every listed 0/1 column is 1 (e.g. ctcvr = click AND conversion).
    A regression label reads a number from `column`; a multiclass label one of `classes`.

    Missing labels: a row whose label is missing is a bad row unless `optional: true`, when
    the row is kept and this task's loss and metrics skip it. `mask_by: <label>` trains and
    scores the task only on rows where that binary label is 1 (CVR on the click space).
    """

    name: str
    kind: Literal["binary", "regression", "multiclass"] = "binary"
    column: str | None = None
    positive: list[str] | None = None
    negative: list[str] | None = None
    all_of: list[str] | None = None
    classes: list[str] | None = Field(None, description="multiclass: the class values, in output order")
    loss: Literal["mse", "huber"] = Field("mse", description="regression loss (in standardised units)")
    huber_delta: float = Field(1.0, gt=0, description="Huber's delta, in standard deviations")
    log1p: bool = Field(False, description="regression: learn log1p(y) (y ≥ 0; negative y is a bad row)")
    standardize: bool = Field(True, description="regression: learn (y − mean) / std of the training split")
    unit: str = Field("", description="regression: the unit metrics are reported in")
    optional: bool = Field(False, description="a missing label keeps the row (the task skips it)")
    mask_by: str | None = Field(None, description="a binary label: this task sees only its positive rows")

    @model_validator(mode="after")
    def _one_source(self) -> "Label":
        if (self.column is None) == (self.all_of is None):
            raise ValueError(f"label '{self.name}': give exactly one of `column` or `all_of`")
        if self.all_of is not None and (self.positive or self.negative):
            raise ValueError(f"label '{self.name}': `positive`/`negative` only apply to `column`")
        if self.negative is not None and self.positive is None:
            raise ValueError(f"label '{self.name}': `negative` needs `positive`")
        if self.kind != "binary" and (self.all_of or self.positive or self.negative):
            raise ValueError(f"label '{self.name}': `all_of`/`positive`/`negative` are for binary "
                             f"labels; a {self.kind} label reads `column`")
        if (self.kind == "multiclass") != (self.classes is not None):
            raise ValueError(f"label '{self.name}': `classes` lists the values of a multiclass "
                             "label (and only of one)")
        if self.classes is not None and (len(self.classes) < 2 or len(set(self.classes)) != len(self.classes)):
            raise ValueError(f"label '{self.name}': `classes` needs at least 2 distinct values, "
                             f"got {self.classes}")
        return self

    @property
    def binary_columns(self) -> list[str]:
        """Columns that must hold 0/1 for this label to be computed."""
        if self.kind != "binary":
            return []
        if self.all_of is not None:
            return list(self.all_of)
        return [self.column] if self.positive is None else []

    @property
    def width(self) -> int:
        """Model outputs of this task: one logit or value, or one logit per class."""
        return len(self.classes) if self.classes else 1


class Sampling(Strict):
    """Negative downsampling at ingest: keep each training row whose `task` label is 0 with
    probability `negative_rate` (seeded by the row, so a re-ingest keeps the same rows).
    Validation and test keep every row; predictions are calibrated back to the full-data
    rate (p / (p + (1 − p) / r)) by evaluation, export and serving."""

    task: str
    negative_rate: float = Field(gt=0.0, le=1.0)
    seed: int = 2026


class Source(Strict):
    """Where the raw logs are and how to read them.

    Paths may be globs; `valid` and `test` are optional (drawn from `train` by the
    split when absent). Every path can be overridden from the command line, e.g.
    `data.source.train=/logs/2026-11-*.csv`.
    """

    format: Literal["csv", "parquet"] = "csv"
    train: FilePath
    valid: FilePath | None = None
    test: FilePath | None = None
    has_header: bool = True
    columns: list[str] | None = Field(None, description="column names, required when has_header is false")
    separator: str = Field(",", min_length=1, max_length=1)
    quote_char: str | None = '"'
    strip_whitespace: bool = False
    null_values: list[str] = Field(default_factory=list, description="raw strings meaning missing")

    @model_validator(mode="after")
    def _columns_when_headerless(self) -> "Source":
        if self.format == "csv" and not self.has_header and not self.columns:
            raise ValueError("source.columns must list the column names when has_header is false")
        return self


class Split(Strict):
    """How train/valid/test are formed from the sources.

    - random: a seeded hash of (file, row) sends `valid_fraction` of the train source
      to validation (and `test_fraction` to test when there is no test source); stable
      under re-runs and independent of file order.
    - tail: the last `valid_fraction` of the train source is validation (the torch-rechub
      convention on census-income).
    - day: the last `test_days` days are test and the `valid_days` before them
      validation (needs a day column); the time-honest split for logs.
    """

    method: Literal["random", "tail", "day"] = "random"
    valid_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    valid_days: int = Field(1, ge=0)
    test_days: int = Field(1, ge=0)
    seed: int = 2026


class Checks(Strict):
    """Row rules beyond single fields."""

    implies: list[tuple[str, str]] = Field(
        default_factory=list,
        description="[a, b] pairs of 0/1 columns: a = 1 requires b = 1 (conversion requires click)",
    )
    unique_id: bool = False
    max_reject_ratio: float = Field(0.01, ge=0.0, le=1.0)


class DriftLimits(Strict):
    """When a field has drifted between two slices of rows (`features.drift`); None turns a
    check off. Defaults and why they are these: README, "Data drift and skew"."""

    js: float | None = Field(0.1, ge=0, le=1, description="Jensen-Shannon distance (base 2) of a "
                             "numeric field's or regression label's distribution")
    linf: float | None = Field(0.1, ge=0, le=1, description="L-infinity distance of a categorical "
                               "field's (or list field's elements', multiclass label's) frequencies")
    label_rate: float | None = Field(0.2, ge=0, description="relative shift of a binary label's "
                                     "positive rate (flagged only when also significant: see min_z)")
    missing: float | None = Field(0.1, ge=0, le=1, description="absolute change of a field's "
                                  "share of missing values")
    oov: float | None = Field(None, ge=0, le=1, description="share of a categorical field's values "
                              "outside the reference vocabulary (off by default: id-like fields "
                              "have new values every day)")


class DriftSpec(DriftLimits):
    """Statistics kept per day and the limits drift is judged by (`drift:` in a data conf)."""

    fields: dict[str, DriftLimits] = Field(default_factory=dict, description="per-field limits: "
                                           "the keys given replace the data set's, e.g. {price: "
                                           "{js: 0.2}, user_id: {linf: null}}")
    schema_changes: bool = Field(True, description="a column added, removed or of another type "
                                 "is drift")
    min_z: float = Field(3.0, ge=0, description="a distance or label-rate shift counts only when "
                         "it is also this many standard errors beyond sampling noise (small slices)")
    top_k: int = Field(1000, ge=1, description="most frequent values kept per categorical field")

    def limits(self, field: str) -> DriftLimits:
        """The limits of one field: the data set's, with the keys its own entry gives (set
        ones only, null included) replacing them."""
        own = self.fields.get(field)
        base = DriftLimits(**{k: getattr(self, k) for k in DriftLimits.model_fields})
        return base if own is None else base.model_copy(update=own.model_dump(exclude_unset=True))


class DataSpec(Strict):
    """A whole data set of click/conversion logs: `conf/data/<name>.yaml`."""

    kind: Literal["logs"] = "logs"
    name: str
    source: Source
    categorical: list[CategoricalField] = Field(default_factory=list)
    numeric: list[NumericField] = Field(default_factory=list)
    labels: list[Label]
    id: str | None = None
    group: str | None = Field(None, description="column to slice metrics by (e.g. country)")
    day: str | None = Field(None, description="column holding the partition day (YYYY-MM-DD)")
    ignore: list[str] = Field(default_factory=list, description="columns present in the input but not used")
    weight: str | None = Field(None, description="a column of non-negative sample weights for the "
                               "loss and the metrics (may also be listed in `ignore`)")
    sampling: Sampling | None = None
    split: Split = Split()
    checks: Checks = Checks()
    drift: DriftSpec = DriftSpec()

    @model_validator(mode="before")
    @classmethod
    def _expand_names(cls, data: object) -> object:
        """`{names: [a, b], <options>}` is shorthand for one field per name, same options."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for key in ("categorical", "numeric"):
            fields = []
            for entry in data.get(key) or []:
                if isinstance(entry, dict) and "names" in entry:
                    options = {k: v for k, v in entry.items() if k != "names"}
                    fields += [{"name": n, **options} for n in entry["names"]]
                else:
                    fields.append(entry)
            data[key] = fields
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "DataSpec":
        names = [f.name for f in self.categorical] + [f.name for f in self.numeric]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"fields declared twice: {dup}")
        if not self.labels:
            raise ValueError("at least one label is needed")
        label_cols = set(self.label_source_columns)
        clash = sorted(label_cols & set(names))
        if clash:
            raise ValueError(f"label columns must not also be features: {clash}")
        taken = set(names) | {c for c in (self.id, self.group, self.day) if c}
        clash = sorted(set(self.task_names) & taken)
        if clash:
            raise ValueError(f"task names clash with feature/id/group/day columns: {clash}")
        if self.split.method == "day" and self.day is None:
            raise ValueError("split.method=day needs a `day` column")
        for a, b in self.checks.implies:
            for c in (a, b):
                if c not in label_cols:
                    raise ValueError(f"checks.implies names '{c}', which is not a label column")
        if self.checks.unique_id and self.id is None:
            raise ValueError("checks.unique_id needs an `id` column")
        by_name = {lab.name: lab for lab in self.labels}
        for lab in self.labels:
            if lab.mask_by is not None:
                other = by_name.get(lab.mask_by)
                if other is None or other.kind != "binary" or other.name == lab.name:
                    raise ValueError(f"label '{lab.name}': mask_by names '{lab.mask_by}', which is "
                                     f"not another binary label ({sorted(by_name)})")
        if self.weight is not None and self.weight in set(names) | label_cols:
            raise ValueError(f"weight column '{self.weight}' must not also be a feature or label")
        unknown = sorted(set(self.drift.fields) - set(names) - set(self.task_names))
        if unknown:
            raise ValueError(f"drift.fields names {unknown}, which are not fields or labels "
                             f"({sorted(names + self.task_names)})")
        if self.sampling is not None:
            task = by_name.get(self.sampling.task)
            if task is None or task.kind != "binary":
                raise ValueError(f"sampling.task '{self.sampling.task}' is not a binary label "
                                 f"({sorted(by_name)})")
        return self

    @property
    def label_source_columns(self) -> list[str]:
        cols: list[str] = []
        for lab in self.labels:
            for c in ([lab.column] if lab.column else []) + (lab.all_of or []):
                if c not in cols:
                    cols.append(c)
        return cols

    @property
    def binary_columns(self) -> list[str]:
        cols: list[str] = []
        for lab in self.labels:
            cols += [c for c in lab.binary_columns if c not in cols]
        for a, b in self.checks.implies:
            cols += [c for c in (a, b) if c not in cols]
        return cols

    @property
    def multi_fields(self) -> list[CategoricalField]:
        return [f for f in self.categorical if f.multi]

    @property
    def list_separators(self) -> dict[str, str]:
        return {f.name: f.separator for f in self.multi_fields}

    @property
    def task_names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    @property
    def expected_columns(self) -> list[str]:
        """Every column the input must have, in a stable order."""
        cols: list[str] = []
        for c in (
            [self.id, self.group, self.day]
            + [f.name for f in self.categorical]
            + [f.name for f in self.numeric]
            + self.label_source_columns
            + [self.weight]
            + list(self.ignore)
        ):
            if c is not None and c not in cols:
                cols.append(c)
        return cols


class BenchmarkRows(Strict):
    """How many examples of each split a run uses (None: all): reduced CPU schedules
    and tests take a prefix of the full, seeded split, so the rows they see are rows
    of the full benchmark."""

    train: int | None = Field(None, ge=1)
    valid: int | None = Field(None, ge=1)
    test: int | None = Field(None, ge=1)


class MultiMnistSpec(Strict):
    """MultiMNIST built from MNIST (`features.multimnist`): tasks left and right digit."""

    kind: Literal["multimnist"]
    name: str = "multimnist"
    mnist_dir: FilePath
    construction_seed: int = Field(0, description="seed of the pairs and shifts (the same for every run)")
    n_valid: int = Field(10_000, ge=1, description="MNIST train images held out for validation")
    layout: Literal["sener_koltun", "shifted"] = Field(
        "sener_koltun", description="the authors' fixed offset and nearest resize, or random "
        "shifts and area resize (features.multimnist)")
    cache_dir: FilePath | None = Field(None, description="where the built splits are kept (.npz)")
    rows: BenchmarkRows = BenchmarkRows()


class QM9Spec(Strict):
    """QM9's 11 targets on molecular graphs (`features.qm9`, `features.qm9_graphs`)."""

    kind: Literal["qm9"]
    name: str = "qm9"
    path: FilePath
    split_seed: int = Field(0, description="seed of the 110k/10k/rest split (the same for every run)")
    edges: Literal["complete", "bonds"] = Field(
        "complete", description="complete graphs with distances (the papers), or covalent bonds only")
    cutoff: float | None = Field(None, gt=0, description="drop pairs farther apart than this (Å)")
    rows: BenchmarkRows = BenchmarkRows()


class MoleculeTarget(Strict):
    """A target column of a molecules file: a regression value or a 0/1 label; an empty
    value is a missing label (the task skips the molecule)."""

    name: str
    column: str | None = Field(None, description="the column (default: the name)")
    kind: Literal["regression", "binary"] = "regression"
    unit: str = ""

    @property
    def source(self) -> str:
        """The column the target is read from."""
        return self.column or self.name


class MoleculeSplit(Strict):
    """`random` (seeded) or `scaffold` (Bemis–Murcko groups, largest first: features.molecules)."""

    method: Literal["random", "scaffold"] = "random"
    valid_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _room_for_training(self) -> "MoleculeSplit":
        if self.valid_fraction + self.test_fraction >= 1.0:
            raise ValueError("split.valid_fraction + split.test_fraction must leave rows to train on")
        return self


class MoleculeSpec(Strict):
    """Molecules from SMILES (`features.molecules`): any CSV or Parquet with a SMILES column
    and target columns, one MPNN, every MTL method — from the conf file alone."""

    kind: Literal["molecules"]
    name: str
    path: FilePath
    smiles: str = Field("smiles", description="the column of SMILES strings")
    targets: list[MoleculeTarget] = Field(min_length=1)
    explicit_h: bool = Field(True, description="hydrogens as atoms of the graph")
    split: MoleculeSplit = MoleculeSplit()
    max_reject_ratio: float = Field(0.01, ge=0.0, le=1.0, description="bad rows tolerated")
    rows: BenchmarkRows = BenchmarkRows()

    @model_validator(mode="after")
    def _distinct(self) -> "MoleculeSpec":
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise ValueError(f"targets named twice: {sorted({n for n in names if names.count(n) > 1})}")
        return self
