"""What the flow retries, and how a stage's failure reaches it (flows/errors.py)."""

from __future__ import annotations

import errno
import json
import urllib.error
from pathlib import Path

import pytest

from flows.errors import ERROR_FILE_ENV, StageFailed, is_transient, read_report, report_to_flow
from pipeline.data.errors import DataError
from pipeline.registry.register import TrackingUnavailable


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (TrackingUnavailable("MLflow tracking server http://127.0.0.1:1 is not reachable"), True),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
        (TimeoutError("timed out"), True),
        (urllib.error.URLError("name or service not known"), True),
        (OSError(errno.EIO, "input/output error"), True),
        (StageFailed("register", "server down", transient=True), True),
        (DataError("u.data", 3, "rating", "not a number ('x')"), False),
        (FileNotFoundError(errno.ENOENT, "no such file"), False),
        (OSError(errno.ENOSPC, "no space left on device"), False),
        (ValueError("bad shape"), False),
        (StageFailed("ingest", "u.data line 3: not a number", transient=False), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_only_what_a_retry_can_heal_is_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_stage_under_the_flow_reports_its_failure_through_the_error_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failure = DataError("tiny.inter", 7, "rating", "not a number ('abc')")
    monkeypatch.delenv(ERROR_FILE_ENV, raising=False)
    assert report_to_flow("ingest", failure) is False  # outside the flow: the command prints it itself
    target = tmp_path / "error.json"
    monkeypatch.setenv(ERROR_FILE_ENV, str(target))
    assert report_to_flow("ingest", failure) is True
    record = read_report(target)
    assert record == {
        "command": "ingest",
        "message": "tiny.inter line 7, column rating: not a number ('abc')",
        "transient": False,
    }
    target.write_text("not json")
    assert read_report(target) is None and read_report(tmp_path / "missing.json") is None
    assert json.loads(json.dumps(StageFailed("x", "y").__reduce__()[1])) == ["x", "y", False]
