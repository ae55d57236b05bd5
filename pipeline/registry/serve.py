"""``metarec serve`` and ``metarec ui``: MLflow's model server and UI on the project's store.

Both are MLflow's own commands run by this interpreter (``python -m mlflow``), so they need no activated
virtual environment: the environment gets the tracking URI the stages use, and this interpreter's
``bin/`` first on PATH, since ``mlflow models serve --env-manager local`` starts ``uvicorn`` by name
through ``bash -c`` (and exits 127 when it is not found).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.registry.register import SERVER_SCHEMES, redact

SQLITE = "sqlite:///"


def require_store(uri: str) -> None:
    """A sqlite store must exist: MLflow would quietly create an empty one."""
    if uri.startswith(SQLITE) and not Path(uri[len(SQLITE) :]).exists():
        raise FileNotFoundError(
            f"no MLflow store at {uri[len(SQLITE) :]}: register a model first (make run, or metarec run), "
            "or point MLFLOW_TRACKING_URI at the store"
        )


def served_version(uri: str, name: str, alias: str) -> int:
    """The version of model ``name`` that ``alias`` points at; LookupError naming the aliases there are."""
    require_store(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise LookupError(f"no registered model {name!r} in {redact(uri)}") from None
    if alias not in aliases:
        known = ", ".join(f"{a} (version {v})" for a, v in sorted(aliases.items())) or "none"
        raise LookupError(f"model {name!r} has no alias {alias!r} in {redact(uri)} (aliases: {known})")
    return int(aliases[alias])


def serve_command(name: str, alias: str, host: str, port: int) -> list[str]:
    """``mlflow models serve`` of ``models:/name@alias`` in this environment (no new one is built)."""
    mlflow = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@{alias}"]
    return [*mlflow, "--env-manager", "local", "-h", host, "-p", str(port)]


def ui_command(uri: str, host: str, port: int) -> list[str]:
    """``mlflow ui`` on the store at ``uri``; a tracking server has its own UI, at its address."""
    if urlsplit(uri).scheme in SERVER_SCHEMES:
        raise ValueError(f"the tracking store is a server ({redact(uri)}): open its own UI in a browser")
    require_store(uri)
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "-h", host, "-p", str(port)]


def mlflow_environment(uri: str, environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with ``MLFLOW_TRACKING_URI`` = ``uri`` and this interpreter's ``bin/`` first on PATH."""
    path = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", os.defpath)])
    return {**environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
