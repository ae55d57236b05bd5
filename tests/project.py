"""A throwaway metarec project (git + DVC) for the tests that run stages through DVC or the Prefect flow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

SMOKE = [
    "data.source=synthetic",
    "data.synthetic.n_users=60",
    "data.synthetic.n_items=40",
    "data.synthetic.min_ratings=15",
    "data.synthetic.max_ratings=30",
    "features.query_size=5",
    "train.epochs=2",
    "train.meta_batch=8",
    "train.inner_steps=2",
    "train.query_size=5",
    "eval.folds=2",
    "eval.support_size=5",
    "eval.seeds=1",
]
"""Overrides that run the whole pipeline on small synthetic data in about a minute on 2 cores."""


def env_with_bin() -> dict[str, str]:
    """The environment with this interpreter's ``bin`` first on PATH (``dvc.yaml`` calls ``metarec``)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def sh(*args: str, cwd: Path) -> str:
    """Run a command; fail the test with its output when it exits non-zero; return stdout + stderr."""
    done = subprocess.run(args, cwd=cwd, env=env_with_bin(), capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def make_project(root: Path) -> Path:
    """A fresh git + DVC repo holding the pipeline definition, its params files and the code its stages
    depend on."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    for folder in ("pipeline", "feedback", "params"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    sh("git", "init", "-q", cwd=root)
    sh(str(BIN / "dvc"), "init", "-q", cwd=root)
    return root


def stages_run(output: str) -> list[str]:
    """The stages ``dvc repro`` ran (not those it skipped), in order, from its output."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def stages_skipped(output: str) -> list[str]:
    """The stages ``dvc repro`` found unchanged and skipped."""
    return [
        line.split("'")[1]
        for line in output.splitlines()
        if line.startswith("Stage '") and "didn't change, skipping" in line
    ]
