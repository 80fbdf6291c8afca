"""Atomic files and folders (mtlrec.files), and the model bundle written through them: a
writer killed at any step leaves a reader a complete bundle."""

from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from helpers import small_spec
from mtlrec import files
from mtlrec.features import numeric
from mtlrec.features.transform import FeatureTransform
from mtlrec.features.vocab import fit_vocabulary
from mtlrec.serving import bundle


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _version_of(link: Path) -> str:
    """The name of the version a published folder links to: a hidden sibling `.<name>@<id>`."""
    name = os.readlink(link)
    assert name.startswith(f".{link.name}@") and len(name) == len(link.name) + 14, name
    return name


# ---------------------------------------------------------------- files


def test_atomic_file_keeps_the_old_content_when_the_write_fails(tmp_path):
    path = tmp_path / "state.json"
    files.write_json(path, {"epoch": 1})
    with pytest.raises(RuntimeError, match="crash"), files.atomic_file(path) as tmp:
        tmp.write_text('{"epo')
        raise RuntimeError("crash")
    assert path.read_text() == '{\n  "epoch": 1\n}' and _names(tmp_path) == ["state.json"]
    files.write_text(path, "two")
    assert path.read_text() == "two" and _names(tmp_path) == ["state.json"]


def test_atomic_file_removes_what_killed_writers_left_but_not_a_live_writers_file(tmp_path):
    path = tmp_path / "model.pt"
    dead = tmp_path / ".model.pt.tmp-4242-0badcafe"  # unlocked: its writer is gone
    dead.write_bytes(b"half a checkpoint")
    other = tmp_path / ".model.pt.gz.tmp-4242-0badcafe"  # another file's: not ours to judge
    other.write_bytes(b"x")
    with files.atomic_file(path) as live:
        live.write_bytes(b"in progress")
        files.write_bytes(path, b"done")
        assert live.read_bytes() == b"in progress" and not dead.exists()
    assert path.read_bytes() == b"in progress"
    assert _names(tmp_path) == [other.name, "model.pt"]


# ---------------------------------------------------------------- folders


def test_atomic_folder_publishes_one_version_over_nothing_a_version_or_a_plain_folder(tmp_path):
    out = tmp_path / "out"
    for content in ("first", "second"):  # over nothing, then over the previous version
        with files.atomic_folder(out) as work:
            (work / "a.txt").write_text(content)
        assert (out / "a.txt").read_text() == content
        assert _names(tmp_path) == sorted(["out", _version_of(out)])
        assert files.resolved(out) == tmp_path / _version_of(out)

    legacy = tmp_path / "legacy"  # a plain folder, written before folders were versioned
    legacy.mkdir()
    (legacy / "a.txt").write_text("plain")
    with files.atomic_folder(legacy) as work:
        (work / "a.txt").write_text("versioned")
    assert (legacy / "a.txt").read_text() == "versioned"
    assert _names(tmp_path) == sorted(["out", _version_of(out), "legacy", _version_of(legacy)])


def test_a_failed_atomic_folder_leaves_the_published_version(tmp_path):
    out = tmp_path / "out"
    with files.atomic_folder(out) as work:
        (work / "a.txt").write_text("good")
    before = _names(tmp_path)
    with pytest.raises(RuntimeError, match="crash"), files.atomic_folder(out) as work:
        (work / "a.txt").write_text("half")
        raise RuntimeError("crash")
    assert (out / "a.txt").read_text() == "good" and _names(tmp_path) == before


def test_atomic_folder_removes_killed_writers_versions_but_not_a_live_writers(tmp_path):
    out = tmp_path / "out"
    dead = tmp_path / ".out@0123456789ab"  # a version whose writer was killed: unlocked
    dead.mkdir()
    (dead / "a.txt").write_text("half")
    dead_link = tmp_path / ".out.tmp-4242-0badcafe"  # its link, never renamed into place
    dead_link.symlink_to(dead.name)
    with files.atomic_folder(out) as live:
        (live / "a.txt").write_text("slow")
        with files.atomic_folder(out) as quick:
            (quick / "a.txt").write_text("quick")
        assert (out / "a.txt").read_text() == "quick"
        assert live.is_dir() and not dead.exists() and not dead_link.is_symlink()
    assert (out / "a.txt").read_text() == "slow"
    assert _names(tmp_path) == sorted(["out", live.name])


def test_remove_deletes_the_link_and_its_version_only(tmp_path):
    out = tmp_path / "out"
    with files.atomic_folder(out) as work:
        (work / "a.txt").write_text("x")
    files.remove(out)
    assert _names(tmp_path) == []

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("x")
    files.remove(plain)
    assert _names(tmp_path) == []

    elsewhere = tmp_path / "elsewhere"  # a link someone else made: only the link goes
    elsewhere.mkdir()
    (tmp_path / "linked").symlink_to(elsewhere.name)
    files.remove(tmp_path / "linked")
    assert _names(tmp_path) == ["elsewhere"]


# ---------------------------------------------------------------- a bundle, and its writer killed


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A real bundle of a small ranker (export: ONNX, parity check, bundle.write)."""
    import torch

    from mtlrec.models.config import model_config
    from mtlrec.models.ranker import MultiTaskRanker
    from mtlrec.serving.export import export_bundle

    spec = small_spec("unused.csv")
    typed = pl.DataFrame({"cat_a": ["x", "y", "x", None], "cat_b": ["p", "p", "q", "r"],
                          "num_x": [1.0, 2.0, None, 4.0], "num_y": [0.0, 10.0, 100.0, 1000.0]})
    vocabularies = {f.name: fit_vocabulary(typed.group_by(f.name).len("count")
                                           .rename({f.name: "value"}), f)
                    for f in spec.categorical}
    stats = numeric.collect_stats(
        typed.select(numeric.stats_exprs(spec.numeric)).row(0, named=True), spec.numeric)
    transform = FeatureTransform(spec, vocabularies, stats)
    torch.manual_seed(0)
    ranker = MultiTaskRanker(model_config(arch="hps"), transform.table_sizes, 2, 2).eval()
    out = tmp_path_factory.mktemp("exported") / "bundle"
    export_bundle(ranker, transform, transform.to_numpy(typed), out, metrics={"test": None},
                  identity={"run_id": "exported"}, parity_rows=64, tolerance=1e-5, opset=18,
                  seed=0)
    return files.resolved(out)


# Rewrites a bundle with the contents of another and stops before its `pause_at`-th step:
# each change to the bundle's parent folder (a removal counts once, at its start), and the
# write of bundle.json (all other files written: midway). An audit hook sees every one
# before it happens; the process says where it stopped and waits to be killed.
WRITER = r"""
import os, signal, sys
from pathlib import Path
import polars as pl
from mtlrec.serving import bundle

source, folder, run_id = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
pause_at, steps = int(sys.argv[4]), 0
CHANGES = {"os.mkdir", "os.rename", "os.symlink", "shutil.rmtree"}
WRITE = os.O_WRONLY | os.O_RDWR


def in_parent(value):
    return (isinstance(value, (str, bytes, os.PathLike))
            and Path(os.fsdecode(value)).parent == folder.parent)


def is_step(event, args):
    if event in CHANGES:
        return any(in_parent(a) for a in args)
    return (event == "open" and not isinstance(args[0], int) and bool(args[2] & WRITE)
            and Path(os.fsdecode(args[0])).name == bundle.BUNDLE_FILE)


def pause(event, args):
    global steps
    if is_step(event, args):
        if steps == pause_at:
            print(event, args[0], flush=True)
            while True:
                signal.pause()
        steps += 1


model = bundle.load(source)
data = pl.read_parquet(source / bundle.PARITY_DATA)
sys.addaudithook(pause)
bundle.write(folder, source / bundle.MODEL_FILE, model.transform, model.metrics, model.parity,
             data, {"run_id": run_id})
"""


def _write_killed_at(source: Path, folder: Path, run_id: str, step: int) -> str | None:
    """Rewrite `folder` in a child process; SIGKILL it just before its `step`-th step. Returns
    what it was about to do, or None when it finished first."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(source), str(folder), run_id,
                             str(step)], stdout=subprocess.PIPE, text=True)
    try:
        assert select.select([proc.stdout], [], [], 60)[0], "the writer neither paused nor ended"
        paused = proc.stdout.readline().strip() or None
        if paused:
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == (-signal.SIGKILL if paused else 0)
    finally:
        proc.kill()
        proc.stdout.close()
    return paused


@pytest.mark.slow
def test_a_writer_killed_at_any_step_leaves_a_complete_bundle(exported, tmp_path):
    folder = tmp_path / "bundle"
    assert _write_killed_at(exported, folder, "first", -1) is None
    published, outcomes = "first", set()
    for step in itertools.count():
        before = files.resolved(folder)  # a reader that resolved the bundle before the writer
        paused = _write_killed_at(exported, folder, f"writer-{step}", step)
        model = bundle.load(folder)  # checksums, signature and parity all verified
        assert model.manifest["run_id"] in (published, f"writer-{step}"), paused
        assert model.folder == files.resolved(folder)
        if before.exists():  # its version is not removed yet: the reader still gets all of it
            assert bundle.load(before).manifest["run_id"] == published, paused
            outcomes.add("kept" if before == model.folder else "swapped")
        published = model.manifest["run_id"]
        if paused is None:
            break
    assert published == f"writer-{step}" and outcomes == {"kept", "swapped"}
    assert _names(tmp_path) == sorted(["bundle", model.folder.name])  # the dead writers' work swept
