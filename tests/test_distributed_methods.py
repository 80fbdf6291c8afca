"""Multi-task methods under data parallelism: two ranks launched by torchrun (gloo, CPU)
take the step one process takes on the global batch, for every method the issue names,
on data whose ranks' local task gradients conflict while the global ones do not (a method
that aggregated each rank's gradients before summing them fails it), and their parameters
and step state stay identical."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dist_methods
from mtlrec.training.mtl.gradients import per_task_gradients

WORKER = Path(dist_methods.__file__)


def test_the_fixture_conflicts_on_each_rank_but_not_globally():
    model = dist_methods.tiny()
    x, y = dist_methods.batch(0)

    def cosine(rows: slice) -> float:
        g = per_task_gradients(((model(x[rows]) - y[rows]) ** 2).mean(dim=0), model.shared_parameters())
        return float(torch.nn.functional.cosine_similarity(g[0], g[1], dim=0))

    half = dist_methods.GLOBAL_BATCH // 2
    assert cosine(slice(0, half)) < -0.5 and cosine(slice(half, None)) > 0.5
    assert cosine(slice(None)) > 0.5


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ranks")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(WORKER), str(folder)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("name", sorted(dist_methods.METHODS))
def test_two_ranks_take_the_single_process_step_on_the_global_batch(two_ranks, name):
    alone = dist_methods.run(name, 0, 1)
    for rank in two_ranks:
        np.testing.assert_allclose(rank[name]["losses"], alone["losses"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(rank[name]["params"], alone["params"], rtol=0, atol=1e-5)
    assert two_ranks[0][name] == two_ranks[1][name]  # losses, parameters, state and RNG: identical
