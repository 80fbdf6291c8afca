"""`torchrun --nproc_per_node=2 mtlrec train` (gloo, CPU): two ranks of batch b train as
one process of batch 2b does, epoch by epoch, and rank 0 alone writes the run folder and
the MLflow run; with tables sharded by DistributedModelParallel too, whose run exports, and
resumes after one rank is killed mid-epoch."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
import torch

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
    done = _torchrun(2, "train", *args, "trainer.batch_size=128", f"paths.run_dir={two}")
    assert done.stdout.count("train all: best validation") == 1  # rank 0 reports, once
    assert done.stderr.count("epoch 0: train loss") == 1  # and logs; rank 1 only warns
    want, got = (json.loads((run / "history.json").read_text())["all"] for run in (one, two))
    assert len(got) == len(want) == 2
    for key in ("train_loss", "valid_mean_auc", "valid_ctr_auc", "valid_ctcvr_logloss"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=0, atol=1e-4)
    state = json.loads((two / "run.json").read_text())
    assert state["status"] == "trained"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(state["run_id"], "valid_mean_auc")
    assert [m.step for m in history] == [0, 1]  # logged once per epoch: by rank 0 alone


def _launch(ranks: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             f"--nproc_per_node={ranks}", "-m", "mtlrec.pipeline.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _torchrun(ranks: int, *args: str) -> subprocess.CompletedProcess:
    proc = _launch(ranks, *args)
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _history(run: Path) -> list[dict]:
    return json.loads((run / "history.json").read_text())["all"]


def _assert_same(got: list[dict], want: list[dict], atol: float) -> None:
    assert len(got) == len(want)
    for key in ("train_loss", "valid_mean_auc", "valid_ctr_auc", "valid_ctcvr_logloss"):
        np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], rtol=0, atol=atol)


def _kill_rank_mid_epoch(proc: subprocess.Popen, checkpoint: Path, rank: int, batch: int) -> None:
    """SIGKILL one rank once the run has checkpointed `batch` batches into its first epoch."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists():
            state = torch.load(checkpoint, weights_only=True)
            if state["epoch"] == 0 and state["progress"]["batch"] >= batch:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if p.environ().get("RANK") == str(rank)]
    assert len(workers) == 1
    workers[0].send_signal(signal.SIGKILL)
    proc.communicate(timeout=300)
    assert proc.returncode != 0


def test_sharded_tables_train_like_one_rank_export_and_resume_after_a_rank_is_killed(tmp_path):
    """DMP (table-wise) on two ranks = on one rank with the global batch (the tables' fused
    row-wise Adagrad both times), to 1e-5 epoch by epoch; against the single-process path,
    whose tables Adam trains, the validation AUC agrees to 0.02. A run whose rank 1 is
    killed mid-epoch resumes from the gathered checkpoint to the uninterrupted result, on
    two ranks again or on one."""
    args = [f"paths.work_dir={tmp_path}", *SMALL, "model.embedding_impl=torchrec"]
    assert main(["synth", *args]) == 0 and main(["ingest", *args]) == 0
    sharded = [*args, "trainer.sharding.tables=table_wise"]
    two, one, plain, killed = (tmp_path / name for name in ("two", "one", "plain", "killed"))
    _torchrun(2, "train", *sharded, "trainer.batch_size=128", f"paths.run_dir={two}")
    _torchrun(1, "train", *sharded, "trainer.batch_size=256", f"paths.run_dir={one}")
    assert main(["train", *args, "trainer.batch_size=256", f"paths.run_dir={plain}"]) == 0
    _assert_same(_history(two), _history(one), atol=1e-5)
    assert abs(_history(two)[-1]["valid_mean_auc"] - _history(plain)[-1]["valid_mean_auc"]) < 0.02

    assert main(["export", *args, f"paths.run_dir={two}"]) == 0  # whole tables in the run folder
    _assert_checkpoint_folders(two, ranks=2)

    interrupted = [*sharded, "trainer.batch_size=128", f"paths.run_dir={killed}", "trainer.checkpoint_minutes=0"]
    _kill_rank_mid_epoch(_launch(2, "train", *interrupted), killed / "checkpoint-all.pt", rank=1, batch=5)
    _torchrun(2, "train", *interrupted)
    _assert_same(_history(killed), _history(two), atol=1e-5)

    resized = tmp_path / "resized"  # killed on 2 ranks, resumed on 1 with the same global batch
    on_two = [*sharded, f"paths.run_dir={resized}", "trainer.checkpoint_minutes=0"]
    _kill_rank_mid_epoch(_launch(2, "train", *on_two, "trainer.batch_size=128"), resized / "checkpoint-all.pt",
                         rank=1, batch=5)
    _torchrun(1, "train", *on_two, "trainer.batch_size=256")
    _assert_same(_history(resized), _history(two), atol=1e-5)


def _assert_checkpoint_folders(run: Path, ranks: int) -> None:
    """The shards are written by torch.distributed.checkpoint, one file per rank, into the
    folders the current and previous checkpoints name (weights and best weights); older
    folders are pruned."""
    named = set()
    for name in ("checkpoint-all.pt", "checkpoint-all.previous.pt"):
        saved = torch.load(run / name, weights_only=True)
        named |= {saved["model"], saved["best_weights"]}
    folders = {p.name for p in run.glob("checkpoint-all.*") if p.is_dir()}
    assert folders == named and len(folders) >= 2
    for folder in folders:
        assert len(list((run / folder).glob("*.distcp"))) == ranks


def test_two_nodes_of_one_rank_train_as_one_rank(tmp_path):
    """Two localhost torchruns with --nnodes=2 (c10d rendezvous): the multi-node launch."""
    args = [f"paths.work_dir={tmp_path}", *SMALL, "model.embedding_impl=torchrec",
            "trainer.sharding.tables=table_wise"]
    assert main(["synth", *args]) == 0 and main(["ingest", *args]) == 0
    one, nodes = tmp_path / "one", tmp_path / "nodes"
    _torchrun(1, "train", *args, "trainer.batch_size=256", f"paths.run_dir={one}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launches = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={r}", "--nproc_per_node=1",
         "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=mtlrec-test",
         "-m", "mtlrec.pipeline.cli", "train", *args, "trainer.batch_size=128", f"paths.run_dir={nodes}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    for proc in launches:
        _, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    _assert_same(_history(nodes), _history(one), atol=1e-5)
