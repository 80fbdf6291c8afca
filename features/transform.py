"""The transform from typed raw values to model inputs, shared by training and serving.

Pure polars/numpy (no torch): serving loads the same artifacts and calls the same
expressions, so a value is encoded identically offline and online. Artifacts are plain
files (JSON + Parquet), never pickles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from mtlrec.features import labels, numeric, vocab
from mtlrec.features.errors import DataError
from mtlrec.features.folder import FeatureInfo
from mtlrec.features.lists import pad_lists
from mtlrec.features.spec import DataSpec

SPEC_FILE = "feature_spec.json"
VOCAB_FILE = "vocab.parquet"
STATS_FILE = "numeric_stats.json"
LABEL_STATS_FILE = "label_stats.json"  # regression targets' mean/std (absent before task kinds)


@dataclass(frozen=True)
class ModelInputs:
    """What the exported model takes: ids [N, S] int64 (one column per single-valued
    field, `max_len` per multi-valued one, padded), dense [N, D] float32, and lengths
    [N, M] int64 of the multi-valued fields (None when there are none: the model then has
    no lengths input, as every model exported before multi-valued fields)."""

    ids: np.ndarray
    dense: np.ndarray
    lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, n: int) -> "ModelInputs":
        return ModelInputs(self.ids[:n], self.dense[:n], None if self.lengths is None else self.lengths[:n])

    @staticmethod
    def concat(parts: list["ModelInputs"]) -> "ModelInputs":
        lengths = None if parts[0].lengths is None else np.concatenate([p.lengths for p in parts])
        return ModelInputs(np.concatenate([p.ids for p in parts]),
                           np.concatenate([p.dense for p in parts]), lengths)


@dataclass(frozen=True)
class FeatureTransform:
    spec: DataSpec
    vocabularies: dict[str, pl.DataFrame]  # field → (value, id, count)
    numeric_stats: dict[str, dict]  # field → mean, std, min, max, missing, rows
    label_stats: dict[str, dict] = field(default_factory=dict)  # regression task → mean, std

    @property
    def categorical_names(self) -> list[str]:
        return [f.name for f in self.spec.categorical]

    @property
    def numeric_names(self) -> list[str]:
        return [f.name for f in self.spec.numeric]

    @property
    def table_sizes(self) -> dict[str, int]:
        """Embedding rows per categorical field (reserved OOV/missing ids included)."""
        return {f.name: vocab.table_size(self.vocabularies[f.name], f) for f in self.spec.categorical}

    def expressions(self) -> list[pl.Expr]:
        """Typed columns → Int32 ids and Float32 dense values, named after the fields."""
        return list(self._encoders)

    @cached_property
    def _encoders(self) -> tuple[pl.Expr, ...]:
        # Built once: an Enum over a large vocabulary costs milliseconds to construct, far
        # more than encoding a served request of 100 rows with it.
        return tuple([vocab.encode(f, self.vocabularies[f.name]) for f in self.spec.categorical] + [
            numeric.encode(f, self.numeric_stats[f.name]) for f in self.spec.numeric
        ])

    @property
    def slot_widths(self) -> list[int]:
        """Columns of the ids matrix per field: 1, or max_len for a multi-valued field."""
        return [f.max_len if f.multi else 1 for f in self.spec.categorical]

    def to_numpy(self, frame: pl.DataFrame) -> "ModelInputs":
        """Typed rows → the exported model's inputs."""
        out = frame.select(self.expressions())
        n, multi = len(out), self.spec.multi_fields
        dense = out.select(self.numeric_names).to_numpy().astype(np.float32, copy=False)
        dense = dense.reshape(n, len(self.numeric_names))
        if not multi:
            ids = out.select(self.categorical_names).to_numpy().astype(np.int64, copy=False)
            return ModelInputs(ids.reshape(n, len(self.categorical_names)), dense)
        ids, lengths = [], []
        for f in self.spec.categorical:
            if f.multi:
                padded, counts = pad_lists(out[f.name].to_arrow(), f.max_len)
                ids.append(padded)
                lengths.append(counts)
            else:
                ids.append(out[f.name].to_numpy().astype(np.int64).reshape(n, 1))
        return ModelInputs(np.concatenate(ids, axis=1), dense, np.stack(lengths, axis=1))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SPEC_FILE).write_text(self.spec.model_dump_json(indent=2))
        frames = [v.with_columns(pl.lit(k).alias("field")) for k, v in self.vocabularies.items()]
        table = pl.concat(frames) if frames else vocab.empty_vocabulary().with_columns(
            pl.lit(None, pl.String).alias("field")
        )
        table.select("field", *vocab.VOCAB_COLUMNS).write_parquet(folder / VOCAB_FILE)
        (folder / STATS_FILE).write_text(json.dumps(self.numeric_stats, indent=2))
        (folder / LABEL_STATS_FILE).write_text(json.dumps(self.label_stats, indent=2))
        self.info.save(folder)

    @property
    def info(self) -> FeatureInfo:
        multi = {f.name: {"max_len": f.max_len, "pooling": f.pooling} for f in self.spec.multi_fields}
        return FeatureInfo(self.categorical_names, self.numeric_names, self.spec.task_names,
                           self.table_sizes, self.spec.group, pl.__version__, multi,
                           labels.task_info(self.spec, self.label_stats), self.spec.weight is not None,
                           labels.sampled_info(self.spec))

    @classmethod
    def load(cls, folder: Path) -> "FeatureTransform":
        folder = Path(folder)
        for name in (SPEC_FILE, VOCAB_FILE, STATS_FILE):
            if not (folder / name).is_file():
                raise DataError(f"{folder}: feature artifact {name} is missing")
        spec = DataSpec.model_validate_json((folder / SPEC_FILE).read_text())
        info = FeatureInfo.load(folder)
        hashed = [f.name for f in spec.categorical if f.hash_buckets is not None]
        if hashed and info.polars_version != pl.__version__:
            raise DataError(
                f"{folder}: fields {hashed} are hashed with polars {info.polars_version}, "
                f"this is polars {pl.__version__}; its hash is not stable across versions"
            )
        table = pl.read_parquet(folder / VOCAB_FILE)
        vocabularies = {
            f.name: table.filter(pl.col("field") == f.name).select(vocab.VOCAB_COLUMNS).sort("id")
            for f in spec.categorical
        }
        stats = json.loads((folder / STATS_FILE).read_text())
        label_stats = folder / LABEL_STATS_FILE
        return cls(spec, vocabularies, stats,
                   json.loads(label_stats.read_text()) if label_stats.is_file() else {})
