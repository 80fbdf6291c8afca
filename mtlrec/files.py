"""Atomic writes: every file or folder mtlrec writes for another stage (or process) to read
is built under a temporary name, fsynced, then renamed into place, so a reader sees the
old version or the new one, never half of either, even when the writer is killed.

- `atomic_file(path)`: a file (checkpoint, run state, manifest, score output).
- `atomic_folder(path)`: a folder (ingest output, bundle, downloaded bundle). A folder
  cannot be renamed over a non-empty one, so `path` is a symbolic link to a versioned
  sibling (`.<name>@<version>`); publishing a new version is one `rename` of a new link
  over the old one. Readers resolve the link once (`resolved`) and read from that
  version.

Work in progress is a hidden sibling that its writer holds an exclusive `flock` on. A
writer killed midway cannot clean up after itself; its lock dies with it, so the next
successful write of the same path removes what it left (`_sweep`). Stdlib only: the
training path imports this without polars or mlflow.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_VERSION_SEP = "@"
_TMP_SEP = ".tmp-"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}{_TMP_SEP}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _version(path: Path) -> Path:
    return path.with_name(f".{path.name}{_VERSION_SEP}{uuid.uuid4().hex[:12]}")


def _lock(fd: int, wait: bool) -> bool:
    """An exclusive flock on `fd`; False when another process holds it (`wait=False`) or
    the filesystem has no locks (then nothing is swept there, and writers go unlocked)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _claimed(create: Callable[[], Path]) -> Iterator[Path]:
    """Creates a work path with `create` and holds a lock on it for the context, so that
    `_sweep` knows a live writer's work from a dead one's. A sweep can lock a path in the
    instant between its creation and our lock, and remove it: then try a new one (names
    are never reused, so one that is still there is ours)."""
    while True:
        work = create()
        try:
            fd = os.open(work, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            _lock(fd, wait=True)
            if os.path.lexists(work):
                yield work
                return
        finally:
            os.close(fd)


def _new_file(path: Path) -> Path:
    tmp = _temporary(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return tmp


def _new_folder(path: Path) -> Path:
    version = _version(path)
    version.mkdir()
    return version


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yields a temporary path next to `path` to write; on a normal exit the file is
    fsynced and renamed over `path` (and the folder fsynced, so the rename survives a
    crash); on an exception it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _claimed(lambda: _new_file(path)) as tmp:
        try:
            yield tmp
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync(path.parent)
        finally:
            tmp.unlink(missing_ok=True)
    _sweep(path)


def write_bytes(path: Path, data: bytes) -> None:
    """`data` as the content of `path`, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """`text` (UTF-8) as the content of `path`, atomically."""
    write_bytes(path, text.encode())


def write_json(path: Path, value: Any) -> None:
    """`value` as indented JSON in `path`, atomically."""
    write_text(path, json.dumps(value, indent=2))


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (before it is renamed into place)."""
    for root, _, names in os.walk(folder):
        for name in names:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def resolved(path: Path) -> Path:
    """The version folder a published folder points at now (a plain folder: itself)."""
    return Path(path).resolve()


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yields an empty work folder; on a normal exit it becomes what `path` points at, in
    one rename; the previous version is then removed. On an exception the work folder is
    removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _claimed(lambda: _new_folder(path)) as version:
        try:
            yield version
            fsync_tree(version)
        except BaseException:
            shutil.rmtree(version, ignore_errors=True)
            raise
        _publish(path, version)
    _sweep(path)


def _publish(path: Path, version: Path) -> None:
    """Point `path` at `version` in one rename, then remove what it pointed at before."""
    link = _temporary(path)
    os.symlink(version.name, link)
    if path.is_symlink() or not path.exists():
        previous = _target(path)
        os.replace(link, path)
    elif _exchange(link, path):
        previous = link  # a plain folder written before folders were versioned: now at `link`
    else:  # no renameat2 here: the plain folder steps aside first (the only non-atomic case)
        previous = _temporary(path)
        path.rename(previous)
        os.replace(link, path)
    _fsync(path.parent)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def _target(path: Path) -> Path | None:
    """The version `path` links to, when it is a link this module made (None otherwise:
    nothing else is ever removed through a link)."""
    if not path.is_symlink():
        return None
    name = os.readlink(path)
    return path.parent / name if _version_names(path).fullmatch(name) else None


def _version_names(path: Path) -> re.Pattern:
    """The names `_version` gives (exactly: a sibling called `<name>@x` has its own)."""
    return re.compile(re.escape(f".{path.name}{_VERSION_SEP}") + "[0-9a-f]{12}")


def _temporary_names(path: Path) -> re.Pattern:
    """The names `_temporary` gives."""
    return re.compile(re.escape(f".{path.name}{_TMP_SEP}") + "[0-9]+-[0-9a-f]{8}")


def _sweep(path: Path) -> None:
    """Remove what writers of `path` killed midway left behind: its versions and temporary
    files that no live writer holds locked, except the version `path` points at (a version
    is locked until its writer has published it, so one that is unlocked and not linked
    after the lock is taken will never be), then their links that never got renamed into
    place (a live writer's link points at its locked version, so it never dangles)."""
    names = (_version_names(path), _temporary_names(path))
    leftovers = [e for e in path.parent.iterdir() if any(n.fullmatch(e.name) for n in names)]
    for entry in leftovers:
        if not entry.is_symlink():
            _remove_if_abandoned(entry, path)
    for entry in leftovers:
        if entry.is_symlink() and not entry.exists():
            entry.unlink(missing_ok=True)


def _remove_if_abandoned(entry: Path, path: Path) -> None:
    """Remove `entry` unless a live writer holds it or `path` links to it."""
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # removed meanwhile
        return
    try:
        if _lock(fd, wait=False) and entry != _target(path):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Remove a published folder: the link and the version it points at (or a plain folder),
    and whatever killed writers left next to it."""
    path = Path(path)
    previous = _target(path)
    if path.is_symlink():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    if path.parent.is_dir():
        _sweep(path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0
