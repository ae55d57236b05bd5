"""Atomic writes: every artifact is written to a temporary sibling, then renamed into place.

A crash therefore leaves either the old artifact or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(target: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~_umask())  # mkstemp creates 0600; give the artifact normal permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; swap it in for ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_with(target: Path, writer: Callable[[Path], Any], suffix: str = "") -> Path:
    """Run ``writer(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target, suffix) as tmp:
        writer(tmp)
    return Path(target)


def write_parquet(df: pd.DataFrame, target: Path) -> Path:
    return write_with(target, lambda p: df.to_parquet(p, index=False), ".parquet")


def write_json(obj: Any, target: Path) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"
    return write_with(target, lambda p: p.write_text(text))


def write_text(text: str, target: Path) -> Path:
    return write_with(target, lambda p: p.write_text(text))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
