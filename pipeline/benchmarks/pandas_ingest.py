"""A straightforward pandas implementation of the same ingestion steps (the baseline).

Same inputs and outputs as `features.ingest` on the synthetic AliExpress-schema logs:
read every CSV, validate (unparseable / non-finite numbers, 0/1 labels, conversion
without click, duplicate ids, missing labels), quarantine bad rows with reasons, split by
day, fit vocabularies and numeric statistics on the training split, encode, and write
Parquet partitioned by split and day. It is written the way a competent pandas user
would: vectorised column operations, reason strings built only for the bad rows. It
supports the subset of the spec the synthetic data uses (binary / all_of labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mtlrec.features.spec import DataSpec
from mtlrec.features.sources import resolve

OOV, MISSING, FIRST = 0, 1, 2


def ingest_pandas(spec: DataSpec, out: Path) -> dict:
    frames = []
    for i, path in enumerate(resolve(spec.source.train, "data.source.train")):
        df = pd.read_csv(path, low_memory=False, keep_default_na=False, na_values=[""])
        df["__file"], df["__line"] = i, np.arange(len(df)) + 2
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    rows_read = len(df)

    masks: list[tuple[str, pd.Series]] = []
    numeric = {}
    for f in spec.numeric:
        x = pd.to_numeric(df[f.name], errors="coerce")
        masks.append((f"{f.name}: unparseable number", df[f.name].notna() & x.isna()))
        masks.append((f"{f.name}: non-finite number", x.notna() & ~np.isfinite(x)))
        numeric[f.name] = x
    binary = {}
    for c in spec.binary_columns:
        y = pd.to_numeric(df[c], errors="coerce")
        masks.append((f"{c}: missing required value", df[c].isna()))
        masks.append((f"{c}: label must be 0 or 1", df[c].notna() & ~y.isin([0, 1])))
        binary[c] = y
    for a, b in spec.checks.implies:
        masks.append((f"{a} = 1 requires {b} = 1", (binary[a] == 1) & (binary[b] == 0)))
    for f in spec.multi_fields:  # an empty element: a separator first, last or twice in a row
        text, sep = df[f.name], f.separator
        empty = (text.str.startswith(sep) | text.str.endswith(sep)
                 | text.str.contains(sep + sep, regex=False))
        masks.append((f"{f.name}: empty element in the list", empty.fillna(False).astype(bool)))
    if spec.checks.unique_id:
        masks.append((f"{spec.id}: duplicate id", df.duplicated(spec.id, keep="first")))
    bad = np.zeros(len(df), dtype=bool)
    for _, m in masks:
        bad |= m.to_numpy()

    quarantine = df[bad].astype(str)
    reasons = pd.Series("", index=quarantine.index)
    for text, m in masks:
        hit = m[bad]
        reasons[hit.to_numpy()] += text + "; "
    quarantine.insert(0, "reason", reasons.str.rstrip("; "))
    out.mkdir(parents=True, exist_ok=True)
    quarantine.to_parquet(out / "quarantine.parquet", index=False)

    good = df[~bad].copy()
    days = sorted(good[spec.day].unique())
    split = np.where(good[spec.day] == days[-1], "test",
                     np.where(good[spec.day] == days[-2], "valid", "train"))
    good["split"] = split
    train = good[split == "train"]

    encoded = {}
    for f in spec.multi_fields:  # lists: the vocabulary counts their first max_len elements
        lists = good[f.name].str.split(f.separator, regex=False).map(
            lambda v, n=f.max_len: v[:n] if isinstance(v, list) else None)
        counts = lists[split == "train"].explode().dropna().value_counts()
        counts = counts[counts >= f.min_count]
        order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        mapping = {v: i + FIRST for i, (v, _) in enumerate(order)}
        # per row in Python: pandas has no vectorised list → ids (a groupby(level=0).agg(list)
        # over the exploded ids measured 29 s slower here)
        encoded[f.name] = lists.map(lambda v, m=mapping: [m.get(e, OOV) for e in v] if v else [MISSING])
    for f in spec.categorical:
        if f.multi:
            continue
        col = good[f.name]
        counts = train[f.name].dropna().astype(str).value_counts()
        counts = counts[counts >= f.min_count]
        order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        mapping = {v: i + FIRST for i, (v, _) in enumerate(order)}
        ids = col.astype(str).map(mapping).fillna(OOV).astype(np.int32)
        encoded[f.name] = ids.where(col.notna(), MISSING)
    for f in spec.numeric:
        x = numeric[f.name][~bad]
        tr = x[split == "train"]
        mean, std = tr.mean(), tr.std(ddof=0) or 1.0
        encoded[f.name] = ((x.fillna(mean) - mean) / std).astype(np.float32)
    for lab in spec.labels:
        cols = lab.all_of if lab.all_of is not None else [lab.column]
        y = np.ones(int((~bad).sum()), dtype=np.float32)
        for c in cols:
            y *= binary[c][~bad].to_numpy(dtype=np.float32)
        encoded[lab.name] = y
    result = pd.DataFrame(encoded, index=good.index)
    result[spec.id], result[spec.group] = good[spec.id], good[spec.group]
    result["split"], result["day"] = good["split"], good[spec.day].astype(str)
    for (s, d), part in result.groupby(["split", "day"]):
        folder = out / "data" / f"split={s}" / f"day={d}"
        folder.mkdir(parents=True, exist_ok=True)
        part.drop(columns=["split", "day"]).to_parquet(folder / "part-0.parquet", index=False)
    return {"rows_read": rows_read, "rows_good": int((~bad).sum()),
            "rows_quarantined": int(bad.sum()),
            "vocab_sizes": {f.name: _largest(encoded[f.name]) + 1 for f in spec.categorical}}


def _largest(ids: pd.Series) -> int:
    return int(ids.explode().max()) if ids.dtype == object else int(ids.max())
