"""Progress of long loops: a tqdm bar on a terminal, a handful of log lines anywhere else.

``METAREC_PROGRESS`` chooses: ``auto`` (the default: a bar when stderr is a terminal, else log lines),
``bar``, ``log`` or ``off``. Log lines come at every 10 % of the total and at the end, so a loop whose
output goes to a pipe or a file (``dvc repro``, torchrun's workers, CI) logs at most 11 lines instead of
a bar redrawn on a new line at every step.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from types import TracebackType
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

ENV = "METAREC_PROGRESS"
MODES = ("auto", "bar", "log", "off")
STEPS = 10
"""Log lines per loop, one at every 1/STEPS of the total."""


def progress_mode() -> str:
    """``bar``, ``log`` or ``off``, from ``METAREC_PROGRESS`` and whether stderr is a terminal."""
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return mode


class Progress:
    """A progress counter shown as :func:`progress_mode` says; ``enabled=False`` shows nothing (e.g.
    on every rank but the first). Use as a context manager, ``update`` per step."""

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str = "it",
        *,
        initial: int = 0,
        enabled: bool = True,
        unit_scale: bool = False,
    ) -> None:
        self.mode = progress_mode() if enabled else "off"
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = initial
        self.postfix = ""
        self._start = time.perf_counter()
        self._logged_step = self._step(initial)
        self._logged_n: int | None = None
        self._bar = None
        if self.mode == "bar":
            self._bar = tqdm(
                total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale, file=sys.stderr
            )

    def _step(self, n: int) -> int:
        return STEPS * n // self.total if self.total else 0

    def _count(self, n: int) -> str:
        return tqdm.format_sizeof(n, self.unit) if self.unit_scale else f"{n}"

    def _log(self) -> None:
        done = self._count(self.n)
        if self.total:
            done = f"{done}/{self._count(self.total)} {'' if self.unit_scale else self.unit}".rstrip()
            done += f" ({100 * self.n // self.total}%)"
        postfix = f"; {self.postfix}" if self.postfix else ""
        log.info("%s: %s after %.0fs%s", self.desc, done, time.perf_counter() - self._start, postfix)
        self._logged_n = self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log" and self._step(self.n) > self._logged_step:
            self._logged_step = self._step(self.n)
            self._log()

    def set_postfix(self, **values: Any) -> None:
        """Values shown beside the count (on the bar, or at the end of the next log line)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self._bar is not None:
            self._bar.set_postfix(values)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log" and self._logged_n != self.n:
            self._log()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
