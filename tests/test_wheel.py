"""The built wheel, installed (not editable) into a fresh virtual environment outside the
checkout, gives a working `mtlrec`: every subpackage is in it, conf/ ships inside it, and
a data set defined only in a user config folder ingests and trains. The install takes the
packages from where `make` took them (pip's configured indexes and caches)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, SHARED_DATA, tiny_shop_logs

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parent.parent
TINY = ["data=tinyshop", "model.embedding_dim=4", "model.n_experts=2", "model.expert_hidden=[8]",
        "model.tower_hidden=[4]", "trainer.max_epochs=1", "trainer.batch_size=128"]


def _run(cmd: list, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(the fresh venv, a folder outside the checkout to work in, a clean environment)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MTLREC_", "PYTHON", "VIRTUAL_ENV", "MLFLOW_"))}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
          "-w", root / "dist", CHECKOUT], root, env)
    wheel = next((root / "dist").glob("mtlrec-*.whl"))
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], root, env)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q"]
    # mtlrec's declared dependencies, pinned by the lock; then torchrec without its CUDA
    # `fbgemm-gpu` requirement, as the README's install says
    _run([*pip, wheel, "-c", CHECKOUT / "requirements" / "lock.txt"], root, env)
    _run([*pip, "--no-deps", "-r", CHECKOUT / "requirements" / "torchrec.txt"], root, env)
    work = root / "elsewhere"
    shutil.copytree(FIXTURES / "userconf", work / "userconf")
    tiny_shop_logs(work / "userconf" / "data" / "landing", 4)
    return venv, work, env


def test_the_wheel_holds_every_subpackage_and_the_packaged_config(installed):
    venv, work, env = installed
    code = ("import importlib, pkgutil, mtlrec; "
            "names = [m.name for m in pkgutil.walk_packages(mtlrec.__path__, 'mtlrec.')]; "
            "[importlib.import_module(n) for n in names if '.benchmarks.' not in n]; "
            "print(mtlrec.__file__, mtlrec.checkout_root(), len(list(mtlrec.CONF_DIR.rglob('*.yaml'))), "
            "'mtlrec.training.mtl.pcgrad' in names, 'mtlrec.pipeline.benchmarks.census' in names)")
    out = _run([venv / "bin" / "python", "-c", code], work, env).stdout.split()
    assert out[0].startswith(str(venv)) and out[1] == "None"
    assert int(out[2]) == len(list((CHECKOUT / "conf").rglob("*.yaml")))
    assert out[3:] == ["True", "True"]


def test_a_data_set_from_a_user_config_folder_ingests_and_trains(installed):
    venv, work, env = installed
    mtlrec = [venv / "bin" / "mtlrec", "--config-dir", work / "userconf"]
    args = [f"paths.work_dir={work / 'out'}", *TINY]
    ingest = _run([*mtlrec, "ingest", *args], work, env)
    assert "2,400 rows read, 2,400 good, 0 quarantined" in ingest.stdout
    train = _run([*mtlrec, "train", *args], work, env)
    assert "train all: best validation mean auc" in train.stdout
    assert (work / "out" / "runs" / "tinyshop" / "mmoe-ew-seed2026" / "model.pt").is_file()
    assert "\r" not in train.stderr  # no progress bar when the output is not a terminal


def test_outside_a_checkout_the_real_data_needs_mtlrec_data_root(installed):
    venv, work, env = installed
    mtlrec = venv / "bin" / "mtlrec"
    refused = _run([mtlrec, "config", "data=census"], work, env, check=False)
    assert refused.returncode == 2 and "MTLREC_DATA_ROOT" in refused.stderr
    assert "Traceback" not in refused.stderr
    found = _run([mtlrec, "config", "data=census"], work, env | {"MTLREC_DATA_ROOT": str(SHARED_DATA)})
    assert f"{SHARED_DATA}/census-income/census-income.data.gz" in found.stdout
    assert _run([mtlrec, "config"], work, env).returncode == 0  # the synthetic default needs none
