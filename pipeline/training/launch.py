"""Launch the torchrun training job from Python: stream its output, surface the failing worker's log."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

from pipeline.meta.config import TrainConfig
from pipeline.training.train import HISTORY

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_LINES = 60


class TrainingFailed(RuntimeError):
    """torchrun exited non-zero; the message ends with the tail of the failing worker's log."""


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
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
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


def _failure_report(attempts: list[Path], launcher_tail: list[str]) -> str:
    """Tail of the failing worker's stderr (the rank torchrun names as root cause), else of the launcher."""
    text = "\n".join(launcher_tail)
    ranks = re.findall(r"local_rank:\s*(\d+)", text)
    if attempts:
        last = attempts[-1]
        candidates = [last / r for r in dict.fromkeys(ranks)] or sorted(
            p for p in last.iterdir() if p.is_dir()
        )
        for worker in candidates:
            for name in ("stderr.log", "stdout.log"):
                log = worker / name
                if log.exists() and log.stat().st_size:
                    lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                    return (
                        f"--- {name} of the failing worker, local rank {log.parent.name} (last lines) ---\n"
                        + "\n".join(lines)
                    )
    return "--- torchrun output (last lines) ---\n" + text
