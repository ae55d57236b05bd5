"""pipeline.progress: a bar on a terminal, a handful of log lines elsewhere, as METAREC_PROGRESS says."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from pipeline.progress import ENV, Progress, progress_mode


def pipe(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """stderr as a pipe would be: not a terminal (set in the test: pytest resets it after fixtures)."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    monkeypatch.delenv(ENV, raising=False)
    return out


def run(total: int | None, steps: int, caplog: pytest.LogCaptureFixture, **kwargs: object) -> list[str]:
    caplog.clear()
    bar = Progress(total, "work", "step", **kwargs)  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="pipeline.progress"), bar:
        for step in range(steps):
            bar.update()
            if step == steps // 2:
                bar.set_postfix(loss="0.50")
    return [r.getMessage() for r in caplog.records]


def test_without_a_terminal_it_logs_every_tenth(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = pipe(monkeypatch)
    assert progress_mode() == "log"
    lines = run(1000, 1000, caplog)
    assert len(lines) == 10 and stderr.getvalue() == ""
    assert lines[0].startswith("work: 100/1000 step (10%) after ")
    assert lines[-1].startswith("work: 1000/1000 step (100%) after ") and lines[-1].endswith("s; loss=0.50")
    assert len(run(1000, 2, caplog)) == 1  # stopped early: the count it reached, at the end
    resumed = run(100, 50, caplog, initial=50)
    assert [line.split(" after")[0] for line in resumed] == [
        f"work: {n}/100 step ({n}%)" for n in range(60, 101, 10)
    ]


def test_unknown_total_logs_once_at_the_end(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe(monkeypatch)
    [line] = run(None, 500, caplog)
    assert line.startswith("work: 500 after ")


def test_env_chooses_bar_log_or_nothing(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = pipe(monkeypatch)
    monkeypatch.setenv(ENV, "bar")
    assert run(50, 50, caplog) == [] and "work: 100%" in stderr.getvalue()
    monkeypatch.setenv(ENV, "off")
    assert run(50, 50, caplog) == [] and run(50, 50, caplog, enabled=False) == []
    monkeypatch.setenv(ENV, "log")
    assert run(50, 50, caplog, enabled=False) == []  # e.g. every rank but the first
    monkeypatch.setenv(ENV, "loud")
    with pytest.raises(ValueError, match="METAREC_PROGRESS='loud': expected one of auto, bar, log, off"):
        progress_mode()
