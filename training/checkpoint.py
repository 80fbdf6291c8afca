"""Atomic checkpoints: written to a temporary file, then renamed over the old one.

A crash mid-write leaves the previous checkpoint intact; a run resumed from it sees
exactly the state of the end of that epoch (weights, optimizer moments, scheduler,
RNG, early-stopping counters, history).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_atomic(state: dict[str, Any], path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    """Tensors and plain Python values only (weights_only: no code runs at load)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
