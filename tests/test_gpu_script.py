"""scripts/gpu_bench.sh, the prepared command for a GPU machine, on the CPU fallback:
it must keep working between the rare sessions that have a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_runs_the_benchmarks_and_the_cuda_tests_on_the_cpu(tmp_path):
    env = os.environ | {"OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_bench.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "throughput.json").read_text())
    assert [r["mode"] for r in result["results"]] == ["eager"]
    assert result["results"][0]["samples_per_s"] > 0 and result["results"][0]["batch"] == 64
    qm9 = json.loads((tmp_path / "qm9.json").read_text())  # from ../shared/data, at toy sizes
    assert [r["method"] for r in qm9["runs"]][0] == "ew" and len(qm9["runs"]) == 4
    assert all(r["molecules_per_s"] > 0 and r["epochs"] == 1 for r in qm9["runs"])
    assert qm9["runs"][0]["time_vs_ew"] == 1.0
    log = (tmp_path / "cuda_tests.log").read_text()
    assert "skipped" in log and "failed" not in log and "error" not in log.lower()
