"""A progress bar for long stages (tqdm on a terminal, periodic log lines otherwise)."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, unit: str) -> None:
        self._bar = tqdm(total=total, unit=" " + unit, unit_scale=True, file=sys.stderr,
                         mininterval=1.0, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self._bar.update(n)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
