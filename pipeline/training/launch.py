"""Launch the torchrun training job from Python: stream its output, surface the failing worker's log."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.meta.config import TrainConfig
from pipeline.training.train import HISTORY

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 60
LAUNCHER_LINES = 2000  # torchrun's failure summary repeats every worker's traceback: keep all of it
SIGTERM = -15  # exit code of a worker torchrun stopped because another one failed
PEER_FAILURE = re.compile(
    r"closed by peer|reset by peer|remote worker|remote process|broken pipe|DistBackendError|"
    r"DistNetworkError|NCCL communicator|timed out|timeout",
    re.IGNORECASE,
)
RANK_PREFIX = re.compile(r"^.*?\[rank\d+\]:\s?")


class TrainingFailed(RuntimeError):
    """torchrun exited non-zero; the message names the failing worker's error and ends with its log tail."""


def train_distributed(
    fs_dir: Path,
    config: dict[str, Any],
    out_dir: Path,
    nproc: int,
    *,
    seed: int = 42,
    checkpoints: Path | None = None,
    max_restarts: int = 0,
    nnodes: int = 1,
    rdzv_endpoint: str = "",
    rdzv_id: str = "metarec",
) -> dict[str, Any]:
    """Meta-train with ``nproc`` local processes under torchrun; returns history, wall time and restarts.

    ``config`` holds the train params (``TrainParams`` fields); ``checkpoints`` enables checkpointing and
    resuming, ``max_restarts`` lets torchrun restart the worker group after a failure. With ``nnodes`` > 1
    every node runs this with the same c10d rendezvous (``rdzv_endpoint`` ``host:port``, ``rdzv_id``); the
    node that gets rank 0 writes the model, the others return ``history`` None.
    """
    cfg = TrainConfig.from_dict(config)
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError(f"nnodes={nnodes} needs a rendezvous endpoint host:port (train.rdzv_endpoint)")
    if nnodes == 1:
        topology = ["--standalone"]
    else:
        topology = [
            f"--nnodes={nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}",
            f"--rdzv-id={rdzv_id}",
        ]
    with tempfile.TemporaryDirectory(prefix="metarec-train-") as tmp:
        config_path = Path(tmp) / "train_config.json"
        config_path.write_text(json.dumps(cfg.to_dict()))
        log_dir = Path(tmp) / "logs"
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            *topology,
            f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}",
            "--log-dir",
            str(log_dir),
            "--tee",
            "3",
            "-m",
            "pipeline.training.train",
            "--features",
            str(fs_dir),
            "--config",
            str(config_path),
            "--out",
            str(out_dir),
            "--seed",
            str(seed),
        ]
        if checkpoints is not None:
            cmd += ["--checkpoints", str(checkpoints)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        logger.info("launching: %s", " ".join(cmd))
        t0 = time.perf_counter()
        tail: deque[str] = deque(maxlen=LAUNCHER_LINES)
        with subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip("\n")
                tail.append(line)
                logger.info("%s", line)
            rc = proc.wait()
        seconds = time.perf_counter() - t0
        attempts = sorted(log_dir.glob("*/attempt_*"), key=lambda p: int(p.name.split("_")[1]))
        if rc != 0:
            raise TrainingFailed(
                f"torchrun training exited with code {rc} after {seconds:.0f} s "
                f"(nnodes={nnodes}, nproc={nproc}, max_restarts={max_restarts}).\n"
                f"{_failure_report(attempts, list(tail))}"
            )
    written = Path(out_dir) / HISTORY
    history = json.loads(written.read_text()) if nnodes == 1 or written.exists() else None
    return {
        "history": history,
        "seconds": seconds,
        "nnodes": nnodes,
        "nproc": nproc,
        "restarts": max(0, len(attempts) - 1),
        "out_dir": str(out_dir),
    }


@dataclass(frozen=True)
class _Worker:
    """What one local worker of the last attempt left behind."""

    local_rank: int
    log: Path | None
    error: str
    timestamp: float
    exitcode: int | None

    @property
    def tier(self) -> int:
        """0: raised an error of its own; 1: died without a traceback (os._exit, OOM kill, segfault);
        2: only failed because a peer did (connection closed, timeout) or was stopped by torchrun."""
        if self.error and not PEER_FAILURE.search(self.error):
            return 0
        if not self.error and self.exitcode not in (None, 0, SIGTERM):
            return 1
        return 2


def _failure_report(attempts: list[Path], launcher_tail: list[str]) -> str:
    """The failing worker's error and the tail of its log, else the tail of the launcher's output.

    The failing worker is the one that raised an error of its own (earliest first), else one that died
    without a traceback, else torchrun's root cause: not a healthy rank that only lost its peer.
    """
    text = "\n".join(launcher_tail)
    shown = "\n".join(launcher_tail[-LOG_TAIL_LINES:])
    workers = _workers(attempts[-1], text) if attempts else []
    if not workers:
        return "--- torchrun output (last lines) ---\n" + shown
    root = re.search(r"Root Cause.*?local_rank:\s*(\d+)", text, re.DOTALL)
    root_rank = int(root.group(1)) if root else None
    culprit = min(workers, key=lambda w: (w.tier, w.local_rank != root_rank, w.timestamp, w.local_rank))
    headline = culprit.error or (
        f"exit code {culprit.exitcode}" if culprit.exitcode is not None else "no Python traceback"
    )
    report = f"failing worker, local rank {culprit.local_rank}: {headline}"
    if culprit.log is None:
        return f"{report}\n--- torchrun output (last lines) ---\n{shown}"
    lines = culprit.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return (
        f"{report}\n--- {culprit.log.name} of the failing worker, local rank {culprit.local_rank} "
        "(last lines) ---\n" + "\n".join(lines)
    )


def _workers(attempt: Path, launcher_text: str) -> list[_Worker]:
    """The workers of one attempt folder (``<local rank>/`` with error.json and the tee'd logs)."""
    exitcodes = {
        int(rank): int(code)
        for rank, code in re.findall(r"local_rank:\s*(\d+)\)\s*\n\s*exitcode\s*:\s*(-?\d+)", launcher_text)
    }
    out = []
    for folder in sorted(p for p in attempt.iterdir() if p.is_dir() and p.name.isdigit()):
        rank = int(folder.name)
        logs = [folder / n for n in ("stderr.log", "stdout.log") if (folder / n).is_file()]
        log = next((p for p in logs if p.stat().st_size), None)
        error, timestamp = _error_file(folder / "error.json")
        if not error and log is not None:
            error = _exception_line(log.read_text(errors="replace").splitlines())
        out.append(_Worker(rank, log, error, timestamp, exitcodes.get(rank)))
    return out


def _error_file(path: Path) -> tuple[str, float]:
    """First line of the exception message and the time in the error file ``@record`` writes ('' and
    infinity when there is none)."""
    try:
        message = json.loads(path.read_text())["message"]
        if isinstance(message, dict):
            text, when = message["message"], message.get("extraInfo", {}).get("timestamp", math.inf)
        else:
            text, when = str(message), math.inf
        return (text.strip().splitlines() or [""])[0], float(when)
    except (OSError, ValueError, KeyError, TypeError):
        return "", math.inf


def _exception_line(lines: list[str]) -> str:
    """The exception line that ends the last traceback in a worker's log ('' without one)."""
    lines = [RANK_PREFIX.sub("", line) for line in lines]
    starts = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line]
    if not starts:
        return ""
    return next((line.strip() for line in lines[starts[-1] + 1 :] if line[:1].strip()), "")
