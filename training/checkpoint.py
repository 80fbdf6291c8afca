"""Checkpoints that survive a crash, a full disk and a damaged file.

`save` writes the new checkpoint under a temporary name (`mtlrec.files.atomic_file`);
only once it is complete does the current one become `<name>.previous.pt` and the new
one take its name. `load` reads the newest readable one: when the current file is
damaged (truncated by a full disk, altered by hand), the run resumes from the previous
one, an epoch earlier, and says so; when neither reads, the error names the files to
remove and how to start again. A resumed run sees exactly the state of the end of that
epoch (weights, optimizer moments, scheduler, RNG, early-stopping counters, history).
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtlrec import files
from mtlrec.features.errors import DataError

log = logging.getLogger(__name__)
# What torch.load raises on a file that is not a whole checkpoint.
_UNREADABLE = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile)


class CheckpointError(DataError):
    """No readable checkpoint: the message names the files and how to start again."""


def previous(path: Path) -> Path:
    """Where the checkpoint before `path`'s current one is kept."""
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def save(state: dict[str, Any], path: Path) -> None:
    """`state` as the checkpoint at `path`; the current one becomes the previous one only
    once this one is whole."""
    path = Path(path)
    with files.atomic_file(path) as tmp:
        torch.save(state, tmp)
        if path.exists():
            os.replace(path, previous(path))


def exists(path: Path) -> bool:
    path = Path(path)
    return path.exists() or previous(path).exists()


def load(path: Path) -> dict[str, Any]:
    """The newest readable checkpoint at `path` (tensors and plain values only: no code
    runs at load); raises CheckpointError when none reads."""
    path = Path(path)
    problems = []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            state = _read(candidate)
        except _UNREADABLE as exc:
            problems.append(f"{candidate} ({type(exc).__name__})")
            continue
        if candidate != path:
            log.warning("checkpoint %s is unreadable (%s); resuming from the previous one, %s",
                        path, problems[0], candidate)
        return state
    raise CheckpointError(
        f"no readable checkpoint: {', '.join(problems)} cannot be read; remove {path} (and "
        f"{previous(path).name}) to restart this model from its first epoch, or pass "
        "train.force=true to train the whole run again from scratch")


def _read(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def read(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path` exactly (no fallback), or None when it is missing or unreadable."""
    try:
        return _read(path) if Path(path).exists() else None
    except _UNREADABLE:
        return None


class StateDictWeights:
    """A model's weights as its state dict, held in the checkpoint file itself (what the
    trainer keeps of its current and best weights; `sharding.ShardedWeights` is the other
    keeper, for tables sharded over the ranks)."""

    def current(self, model: nn.Module, tag: str) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def snapshot(self, model: nn.Module, tag: str) -> dict[str, torch.Tensor]:
        return copy.deepcopy(model.state_dict())

    def load(self, model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
        model.load_state_dict(saved)

    def prune(self, keep: list[Any]) -> None:
        """Nothing outside the checkpoint file to remove."""
