"""Embedding tables sharded by torchrec's DistributedModelParallel (gloo, CPU): for each
sharding type, two ranks take the steps one rank takes on the same global batch, for
every method the issue names, on data whose ranks' local task gradients conflict while the
global ones do not; the tables' gradient is not divided by the world size (SGD on the
tables makes a scaled gradient show)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dist_methods
import dist_sharding

WORKER = Path(dist_sharding.__file__)
TYPES = ["table_wise", "column_wise", "row_wise", "data_parallel"]


def _launch(folder: Path, ranks: int, tables: str) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={ranks}", str(WORKER), str(folder), tables,
                           *sorted(dist_methods.METHODS)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(ranks)]


@pytest.fixture(scope="module", params=TYPES)
def launches(request, tmp_path_factory) -> tuple[dict, list[dict]]:
    """(the 1-rank run, the 2-rank run's ranks) of one sharding type."""
    one, two = (tmp_path_factory.mktemp(f"{request.param}{n}") for n in (1, 2))
    return _launch(one, 1, request.param)[0], _launch(two, 2, request.param)


@pytest.mark.parametrize("name", sorted(dist_methods.METHODS))
def test_two_ranks_take_the_one_rank_steps(launches, name):
    alone, ranks = launches
    for rank in ranks:
        np.testing.assert_allclose(rank[name]["losses"], alone[name]["losses"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(rank[name]["params"], alone[name]["params"], rtol=0, atol=1e-5)
    assert ranks[0][name] == ranks[1][name]  # the gathered tables and the losses: identical


def test_the_tables_learn(launches):
    """The fused optimizer runs inside the backward: every method moves the tables."""
    alone, _ = launches
    assert all(run["table_change"] > 1e-3 for run in alone.values())
