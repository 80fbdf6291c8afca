"""The spine's rules, checked on the code itself: the import contracts of DESIGN.md
(import-linter), one owner for the run folder's and the features folder's file names,
and defaults stated once."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mtlrec import CONF_DIR
from mtlrec.models.config import model_config
from mtlrec.pipeline.config import Config, _model_in
from mtlrec.training.config import MethodConfig

PACKAGE = Path(__file__).resolve().parent.parent / "mtlrec"
PYPROJECT = PACKAGE.parent / "pyproject.toml"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def test_the_import_contracts_hold():
    result = _lint_imports(PACKAGE.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "4 kept, 0 broken" in result.stdout


def test_an_injected_violation_breaks_its_contract(tmp_path):
    """A copy of the package with one forbidden import per contract fails lint-imports,
    naming each contract and the offending import."""
    shutil.copytree(PACKAGE, tmp_path / "mtlrec", symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "conf"))
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    injected = {
        "serving/rows.py": "import torch",  # serving at run time imports torch
        "models/backbones.py": "import polars",  # the training path imports polars
        "features/vocab.py": "import mtlrec.training.loop",  # a layer imports one above it
        "pipeline/retrain.py": "import mtlrec.pipeline.stages",  # stages <-> retrain again
    }
    for module, line in injected.items():
        path = tmp_path / "mtlrec" / module
        path.write_text(path.read_text() + f"\n{line}  # injected by the test\n")
    env = {"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(tmp_path)}
    result = _lint_imports(tmp_path, env)
    assert result.returncode != 0
    out = " ".join(result.stdout.split())
    assert "0 kept, 4 broken" in out, out[-3000:]
    assert "mtlrec.serving.rows is not allowed to import torch" in out
    assert "mtlrec.models is not allowed to import polars" in out
    assert "mtlrec.models.backbones -> polars" in out
    assert "mtlrec.features.vocab -> mtlrec.training.loop" in out
    assert "No cycles are allowed in mtlrec.pipeline" in out


# File names of a run folder: `pipeline/run_folder.py` alone spells them; of the features
# folder's info file: `features/folder.py` alone.
RUN_FILES = re.compile(r"""run\.json|history\.json|model_config\.json|model\.pt|["']model-|"""
                       r"""checkpoint-|diagnostics-|bench\.json|gate\.json|gate\.md|report\.md|"""
                       r"""["']evaluation["']|["']all["']""")
OWNERS = {RUN_FILES: "pipeline/run_folder.py",
          re.compile(r"artifacts\.json"): "features/folder.py"}


@pytest.mark.parametrize("pattern", list(OWNERS), ids=list(OWNERS.values()))
def test_one_module_owns_each_folder_layout(pattern):
    owner = OWNERS[pattern]
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        if module == owner:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and '"""' not in line:
                offenders.append(f"{module}:{n}: {line.strip()}")
    assert not offenders, f"only {owner} may name these files:\n" + "\n".join(offenders)


def test_the_grep_finds_a_run_file_name_when_one_is_spelled():
    assert RUN_FILES.search('    path = run_dir / "history.json"')
    assert RUN_FILES.search("groups = {'all': [0, 1]}")
    assert not RUN_FILES.search("rows = read_all(path)")


# ------------------------------------------------------------------ defaults stated once


def _interpolated_keys() -> set[str]:
    """Keys other YAML reads through ${…}: they must be present in the YAML itself."""
    text = "\n".join(p.read_text() for p in CONF_DIR.rglob("*.yaml"))
    return set(re.findall(r"\$\{([a-z_][a-z_.]*)\}", text))


def _restated(values: dict, model: type[BaseModel], prefix: str, needed: set[str]) -> list[str]:
    out = []
    for key, value in values.items():
        if key == "defaults" or key not in model.model_fields:
            continue
        field, name = model.model_fields[key], f"{prefix}{key}"
        nested = _model_in(field.annotation)
        if isinstance(value, dict) and nested is not None:
            out += _restated(value, nested, name + ".", needed)
        elif isinstance(value, str) and "${" in value or name in needed:
            continue
        elif field.default is not PydanticUndefined and value == field.default:
            out.append(f"{name}: {value!r}")
        elif field.default is not PydanticUndefined and isinstance(field.default, BaseModel) \
                and isinstance(value, dict) and field.default.model_dump() == {**field.default.model_dump(), **value}:
            out.append(f"{name}: {value!r}")
    return out


def test_defaults_are_stated_once_in_the_typed_config_not_again_in_yaml():
    needed = _interpolated_keys()
    found = _restated(yaml.safe_load((CONF_DIR / "config.yaml").read_text()), Config, "", needed)
    for path in sorted((CONF_DIR / "model").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        found += [f"model/{path.name}: {r}" for r in
                  _restated(raw, type(model_config(arch=raw["arch"])), "", set())]
    for path in sorted((CONF_DIR / "method").glob("*.yaml")):
        found += [f"method/{path.name}: {r}" for r in
                  _restated(yaml.safe_load(path.read_text()), MethodConfig, "", set())]
    assert not found, "values equal to their typed default:\n" + "\n".join(found)


def test_the_restated_check_sees_a_restated_default():
    assert _restated({"trainer": {"max_epochs": 10, "lr": 0.5}}, Config, "", set()) == [
        "trainer.max_epochs: 10"]
