"""Molecules from SMILES (`data.kind: molecules`): RDKit graphs that agree with QM9's
positional graphs, bad rows kept aside with their reason, missing targets as missing
labels, a scaffold split that never shares a scaffold, and a conf file that trains."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from rdkit.Chem.Scaffolds import MurckoScaffold

from helpers import shared_file
from mtlrec.features import molecules as mol
from mtlrec.features.qm9 import ELEMENTS
from mtlrec.features.qm9_graphs import molecule_graph
from mtlrec.features.spec import MoleculeSpec
from mtlrec.pipeline.cli import main


def test_smiles_graphs_with_explicit_hydrogens_match_qm9s_positional_graphs():
    """Atoms and covalent bonds of the RDKit graph of each QM9 SMILES against the graph
    built from the file's elements and 3-D positions: the same for ≥ 99% of molecules."""
    table = pq.read_table(shared_file("qm9/qm9.parquet"), columns=["smiles", "elements", "positions_angstrom"])
    table = table.slice(0, 3000).to_pydict()
    same_atoms = same_bonds = 0
    for smiles, elements, positions in zip(table["smiles"], table["elements"], table["positions_angstrom"]):
        ids = np.array([ELEMENTS.index(e) for e in elements])
        positional = molecule_graph(ids, np.array(positions, np.float32).reshape(-1, 3), bonds_only=True)
        graph = mol.graph(mol.parse(smiles, explicit_h=True))
        same_atoms += graph.num_nodes == positional.num_nodes
        same_bonds += graph.num_edges == positional.num_edges
    assert same_atoms / 3000 >= 0.99 and same_bonds / 3000 >= 0.99, (same_atoms, same_bonds)


def _spec(path, **changes) -> MoleculeSpec:
    raw = {"kind": "molecules", "name": "mols", "path": str(path), "smiles": "smiles",
           "targets": [{"name": "logp", "unit": "log"}, {"name": "toxic", "kind": "binary"}],
           "max_reject_ratio": 0.5, "split": {"method": "random", "valid_fraction": 0.2, "test_fraction": 0.2}}
    return MoleculeSpec.model_validate(raw | changes)


def test_bad_rows_are_kept_aside_with_their_reason_and_missing_targets_stay(tmp_path):
    path = tmp_path / "mols.csv"
    pl.DataFrame({"smiles": ["CCO", "c1ccccc1", "C1CC", "CCN", "CCC", "OCC(=O)O"],
                  "logp": ["-0.3", "", "1.0", "abc", "1.5", "-1.0"],
                  "toxic": ["0", "1", "0", "1", "2", ""]}).write_csv(path)
    data = mol.load(_spec(path))
    reasons = dict(zip(data.quarantine["row"].to_list(), data.quarantine["reason"].to_list()))
    assert reasons == {2: "smiles: RDKit cannot parse the SMILES 'C1CC'",
                       3: "logp: a number expected, got 'abc'",
                       4: "toxic: 0 or 1 expected, got '2'"}
    assert data.smiles == ["CCO", "c1ccccc1", "OCC(=O)O"]
    np.testing.assert_array_equal(data.targets, [[-0.3, 0.0], [np.nan, 1.0], [-1.0, np.nan]])
    g = mol.graph(mol.parse("CCO", explicit_h=True))
    assert g.num_nodes == 9 and g.num_edges == 16  # C2H6O: 8 bonds, both directions


def test_the_scaffold_split_never_shares_a_scaffold_between_splits(tmp_path):
    smiles = pq.read_table(shared_file("qm9/qm9.parquet"), columns=["smiles"]).slice(0, 2000)["smiles"].to_pylist()
    path = tmp_path / "mols.parquet"
    pl.DataFrame({"smiles": smiles, "logp": np.arange(2000.0), "toxic": np.arange(2000) % 2}).write_parquet(path)
    data = mol.load(_spec(path, split={"method": "scaffold", "valid_fraction": 0.1, "test_fraction": 0.1}))
    scaffolds = {name: {MurckoScaffold.MurckoScaffoldSmiles(smiles=data.smiles[i]) for i in rows}
                 for name, rows in data.splits.items()}
    assert not scaffolds["train"] & scaffolds["valid"] and not scaffolds["train"] & scaffolds["test"]
    assert not scaffolds["valid"] & scaffolds["test"]
    assert sorted(np.concatenate(list(data.splits.values())).tolist()) == list(range(2000))
    assert len(data.splits["train"]) >= 0.75 * 2000


def test_a_molecules_conf_file_trains_every_kind_with_an_mtl_method(tmp_path):
    """A user's SMILES file with a regression target (some values missing) and a binary
    one trains an MPNN with DB-MTL from its conf file alone, and evaluates per kind."""
    table = pq.read_table(shared_file("qm9/qm9.parquet"), columns=["smiles", "mu_debye", "gap_hartree"]).slice(0, 600)
    frame = pl.from_arrow(table).with_columns(
        pl.when(pl.int_range(pl.len()) % 7 == 0).then(None).otherwise(pl.col("mu_debye")).alias("mu"),
        (pl.col("gap_hartree") > pl.col("gap_hartree").median()).cast(pl.Int8).alias("wide_gap"))
    frame.select("smiles", "mu", "wide_gap").write_csv(tmp_path / "mols.csv")
    conf = tmp_path / "conf" / "data"
    conf.mkdir(parents=True)
    (conf / "mols.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: mpnn\ndata:\n  kind: molecules\n  name: mols\n"
        f"  path: {tmp_path / 'mols.csv'}\n  targets:\n    - {{name: mu, unit: D}}\n"
        "    - {name: wide_gap, kind: binary}\n  split: {method: scaffold, valid_fraction: 0.15, test_fraction: 0.15}\n")
    user = ["--config-dir", str(tmp_path / "conf")]
    args = [f"paths.work_dir={tmp_path / 'work'}", "data=mols", "method=dbmtl", "model.hidden=16",
            "trainer.max_epochs=2", "trainer.batch_size=32", "trainer.threads=1"]
    for stage in ("train", "evaluate"):
        assert main([*user, stage, *args]) == 0
    metrics = json.loads(next((tmp_path / "work").glob("runs/mols/*/evaluation/metrics.json")).read_text())
    assert set(metrics["tasks"]["mu"]) >= {"mae", "rmse", "r2"} and metrics["units"] == {"mu": "D"}
    assert 0.0 <= metrics["tasks"]["wide_gap"]["auc"] <= 1.0 and metrics["headline"]["wide_gap"] == "auc"
