"""`torchrun --nproc_per_node=2 mtlrec train` (gloo, CPU): two ranks of batch b train as
one process of batch 2b does, epoch by epoch, and rank 0 alone writes the run folder and
the MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest

from mtlrec.pipeline.cli import main

pytestmark = pytest.mark.slow

SMALL = ["synth.rows_per_day=3000", "synth.days=4", "synth.ctr=0.3", "synth.cvr=0.3", "model.expert_hidden=[16]",
         "model.tower_hidden=[8]", "model.n_experts=2", "model.embedding_grad=dense", "trainer.max_epochs=2",
         "trainer.lr=0.01", "trainer.threads=1"]


def test_two_ranks_train_as_one_process_on_the_global_batch(tmp_path):
    args = [f"paths.work_dir={tmp_path}", *SMALL]
    assert main(["synth", *args]) == 0 and main(["ingest", *args]) == 0
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", *args, "trainer.batch_size=256", f"paths.run_dir={one}"]) == 0
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "mtlrec.pipeline.cli", "train", *args, "trainer.batch_size=128",
                           f"paths.run_dir={two}"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("train all: best validation") == 1  # rank 0 reports, once
    want, got = (json.loads((run / "history.json").read_text())["all"] for run in (one, two))
    assert len(got) == len(want) == 2
    for key in ("train_loss", "valid_mean_auc", "valid_ctr_auc", "valid_ctcvr_logloss"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=0, atol=1e-4)
    state = json.loads((two / "run.json").read_text())
    assert state["status"] == "trained"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(state["run_id"], "valid_mean_auc")
    assert [m.step for m in history] == [0, 1]  # logged once per epoch: by rank 0 alone
