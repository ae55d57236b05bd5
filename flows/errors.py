"""How a stage's failure travels from the stage command to the flow that ran it.

A stage command (``metarec ingest`` ...) that fails exits 1, or :data:`TRANSIENT_EXIT` when retrying can
heal the failure (an unreachable server, a timeout). Under the flow it also writes its message to the
file named by :data:`ERROR_FILE_ENV` and prints nothing, so the flow reports each failure once.
"""

from __future__ import annotations

import errno
import json
import os
import urllib.error
from pathlib import Path

TRANSIENT_EXIT = 75
"""``EX_TEMPFAIL`` (sysexits.h): try again later."""
ERROR_FILE_ENV = "METAREC_ERROR_FILE"
DEBUG_ENV = "METAREC_DEBUG"


class StageFailed(RuntimeError):
    """A stage of the flow failed; ``transient`` says whether a retry may succeed."""

    def __init__(self, stage: str, message: str, transient: bool = False) -> None:
        super().__init__(f"stage '{stage}': {message}")
        self.stage = stage
        self.message = message
        self.transient = transient

    def __reduce__(self) -> tuple[type[StageFailed], tuple[str, str, bool]]:
        return type(self), (self.stage, self.message, self.transient)


TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT})
"""Operating-system errors that a second try may not meet: a flaky disk or share, a busy resource."""


def is_transient(exc: BaseException) -> bool:
    """Failures a retry can heal: the network, a server that is down, a timeout, a flaky disk. Bad data,
    a missing file or a bug never is."""
    if isinstance(exc, StageFailed):
        return exc.transient
    if isinstance(exc, ConnectionError | TimeoutError | urllib.error.URLError):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def report_to_flow(command: str, exc: BaseException) -> bool:
    """Write ``exc`` to the flow's error file when the flow asked for one; True when written."""
    target = os.environ.get(ERROR_FILE_ENV)
    if not target:
        return False
    record = {"command": command, "message": str(exc), "transient": is_transient(exc)}
    Path(target).write_text(json.dumps(record))
    return True


def read_report(path: Path) -> dict[str, object] | None:
    """The stage's error record, or None when the stage wrote none (e.g. DVC itself failed)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
