"""``metarec serve``, ``metarec ui`` and the CLI's own environment defaults, as a user on a fresh clone runs
them: the ``metarec`` script in a subprocess, with neither the virtual environment on PATH nor any of the
Makefile's variables set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from flows.cli import project_defaults
from tests.project import BIN, REPO
from tests.registry_fixtures import free_port, http_server, item_id, post, registered_champion

pytestmark = [pytest.mark.slow, pytest.mark.integration]

METAREC = str(BIN / "metarec")


def bare_env(**extra: str) -> dict[str, str]:
    """The environment without the virtual environment on PATH and without what the CLI defaults."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and Path(p).resolve() != BIN.resolve()]
    drop = {*project_defaults(Path.cwd()), "VIRTUAL_ENV"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PATH": os.pathsep.join(path), **extra}


def metarec(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METAREC, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder whose own store (``mlruns.db``) holds ``metarec@champion``; no params.yaml."""
    root = tmp_path_factory.mktemp("project")
    registered_champion(root)
    return root


def readme_request() -> dict:
    """The body of the README's curl example."""
    [body] = re.findall(r"-d '(\{\"inputs\".*\})'", (REPO / "README.md").read_text())
    return json.loads(body)


def test_serve_answers_the_readme_request_without_an_activated_venv(project: Path) -> None:
    port = free_port()
    command = [METAREC, "serve", "--port", str(port)]
    with http_server(command, port, bare_env(), project / "serve.log") as url:
        request = readme_request()
        [user] = request["inputs"]
        user["ratings"] = [{**r, "item_id": item_id(0)} for r in user["ratings"]]  # the tiny model's ids
        status, text = post(f"{url}/invocations", json.dumps(request).encode())
    assert status == 200, text
    [answer] = json.loads(text)["predictions"]
    assert len(answer["items"]) == len(answer["scores"]) == user["k"]
    assert item_id(0) not in answer["items"]
    log = (project / "serve.log").read_text()
    assert "serving metarec@champion (version 1)" in log


def test_serve_of_a_missing_alias_stops_with_one_line(project: Path) -> None:
    done = metarec("serve", "--alias", "canary", "--port", str(free_port()), cwd=project, env=bare_env())
    assert done.returncode == 1
    assert (
        "metarec serve failed: model 'metarec' has no alias 'canary' in sqlite:///"
        f"{(project / 'mlruns.db').resolve()} (aliases: champion (version 1))" in done.stderr
    )


def test_serve_without_a_store_says_so_and_creates_none(tmp_path: Path) -> None:
    done = metarec("serve", cwd=tmp_path, env=bare_env())
    assert done.returncode == 1 and f"no MLflow store at {tmp_path.resolve() / 'mlruns.db'}" in done.stderr
    assert not (tmp_path / "mlruns.db").exists()


def test_ui_shows_the_project_store(project: Path) -> None:
    port = free_port()
    command = [METAREC, "ui", "--port", str(port)]
    with http_server(command, port, bare_env(), project / "ui.log", ready="/health") as url:
        query = f"{url}/api/2.0/mlflow/registered-models/get?name=metarec"
        with urllib.request.urlopen(query, timeout=30) as response:
            model = json.load(response)["registered_model"]
    assert {a["alias"]: a["version"] for a in model["aliases"]} == {"champion": "1"}


def test_commands_keep_their_state_in_the_project_and_send_no_telemetry(tmp_path: Path) -> None:
    """MLflow (its telemetry id in ~/.config/mlflow) and Prefect (~/.prefect, read at import) write nothing
    to HOME: the script sets the Makefile's defaults before any command imports them."""
    project, home = tmp_path / "empty", tmp_path / "home"
    project.mkdir()
    home.mkdir()
    env = bare_env(HOME=str(home))
    done = metarec("promote", "--rollback", cwd=project, env=env)  # no model yet: fails, after MLflow ran
    assert done.returncode == 1 and "metarec promote failed" in done.stderr, done.stderr
    assert (project / "mlruns.db").exists()  # the project's store, not MLflow's default mlflow.db
    metarec("serve-flows", cwd=project, env=env)  # imports Prefect, then stops: no params.yaml
    assert (project / ".prefect").is_dir()
    assert not list(home.iterdir())


def test_what_the_user_set_wins(tmp_path: Path) -> None:
    mine = tmp_path / "my-prefect"
    env = bare_env(HOME=str(tmp_path), PREFECT_HOME=str(mine))
    metarec("serve-flows", cwd=tmp_path, env=env)
    assert mine.is_dir() and not (tmp_path / ".prefect").exists()
