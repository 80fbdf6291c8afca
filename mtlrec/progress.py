"""Progress of long work: a live bar on a terminal, plain log lines everywhere else.

On a terminal (stderr is a TTY) tqdm draws a bar. In a log file, a pipe or CI a bar is
carriage-return noise, so progress is one log line every `every_s` seconds instead (none
for work that ends sooner; the work's own summary line says it finished), with the
process's peak resident memory so far.
"""

from __future__ import annotations

import logging
import resource
import sys
import time

from tqdm import tqdm

log = logging.getLogger("mtlrec.progress")


class Progress:
    """`with Progress(total, "batches", "epoch 3") as bar: … bar.update(1, loss=0.12)`."""

    def __init__(self, total: int | None, unit: str, what: str = "", every_s: float = 30.0,
                 terminal: bool | None = None, initial: int = 0) -> None:
        """initial: units already done (work resumed part way)."""
        self.total, self.unit, self.what, self.every_s = total, unit, what, every_s
        self.done, self._last, self._status = initial, time.monotonic(), {}
        on_terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar = tqdm(total=total, unit=" " + unit, unit_scale=True, desc=what or None,
                         file=sys.stderr, mininterval=1.0, dynamic_ncols=True,
                         leave=False, initial=initial) if on_terminal else None

    def update(self, n: int = 1, **status: object) -> None:
        """`n` more units done; `status` (e.g. loss=…) is shown in the bar or the log line."""
        self.done += n
        self._status |= status
        if self._bar is not None:
            self._bar.update(n)
            if status:
                self._bar.set_postfix(self._status, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            # the peak so far: in a long run's log it shows where memory grew
            log.info("%s; peak RSS %.2f GB", self.line(), peak_rss_mb() / 1024)

    def line(self) -> str:
        """`epoch 3: 1,200 / 5,000 batches (24%), loss 0.1234`."""
        count = f"{self.done:,}" + (f" / {self.total:,}" if self.total else "") + f" {self.unit}"
        if self.total:
            count += f" ({100 * self.done / self.total:.0f}%)"
        extra = "".join(f", {k} {v}" for k, v in self._status.items())
        return f"{self.what + ': ' if self.what else ''}{count}{extra}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (progress lines and benchmark workers)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
