"""Shared fixtures: offline environment, the local MovieLens mirror, small synthetic params."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ.setdefault(key, value)


def _mirror() -> Path | None:
    env = os.environ.get("METAREC_DATA_MIRROR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if (c / "ml-100k" / "ml-100k.inter").exists():
            return c.resolve()
    return None


@pytest.fixture(scope="session")
def data_mirror() -> Path:
    """Folder holding ``ml-100k/`` (RecBole atomic files); tests needing it skip only if it is absent."""
    mirror = _mirror()
    if mirror is None:
        pytest.skip("MovieLens-100k mirror not found: set METAREC_DATA_MIRROR")
    return mirror


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test server for the whole session (its start-up is the slow part)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
