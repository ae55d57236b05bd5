"""The retraining flow against real servers on 127.0.0.1: PostgreSQL, an MLflow server, a Prefect server.

One PostgreSQL cluster holds the MLflow backend store and the Prefect database; MLflow proxies artifacts
to a local folder (``--serve-artifacts``). Every server runs in its own process group on a free loopback
port and is stopped when the module ends. The flow runs three ways, as docs/operations.md describes:
``metarec run`` from a shell, the ``nightly`` deployment of prefect.yaml picked up by a process worker,
and ``serve_flows``. Without the PostgreSQL binaries the tests fail under CI (``CI=true``) and skip
elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from pipeline.params import load_params
from tests.test_pipeline_e2e import SMOKE, make_project

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
PG_USER = "metarec"
FLOW = "metarec-retrain"
MODEL = "metarec"
STAGES = {"source", "ingest", "validate", "features", "train", "evaluate", "register"}
START_TIMEOUT_S = 120.0
FLOW_TIMEOUT_S = 420.0
RERUN_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def postgres_bin() -> Path | None:
    """Folder holding ``initdb`` and ``pg_ctl``: ``$METAREC_PG_BIN``, then ``PATH``, then Debian's layout."""
    candidates = [Path(os.environ["METAREC_PG_BIN"])] if os.environ.get("METAREC_PG_BIN") else []
    if found := shutil.which("pg_ctl"):
        candidates.append(Path(found).resolve().parent)
    debian = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(debian, key=lambda p: int(p.parent.name), reverse=True)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def log_tail(path: Path) -> str:
    return tail(path.read_text(errors="replace")) if path.exists() else "(no log)"


def run_checked(cmd: list[str], timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    assert done.returncode == 0, (
        f"{' '.join(cmd)} exited {done.returncode}:\n{tail(done.stdout)}\n{tail(done.stderr)}"
    )
    return done


def wait_for(what: str, check: Callable[[], Any], timeout: float, on_timeout: Callable[[], str]) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.5)
    pytest.fail(f"{what}: not done after {timeout:.0f} s\n{on_timeout()}")


@dataclass
class Service:
    """A process started in its own session, so that stopping it stops all its children."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> Service:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return cls(name, proc, log)

    def wait_http(self, url: str, ready: Callable[[httpx.Response], bool]) -> float:
        """Poll ``url`` until ``ready``; fail with the log tail if the process dies or time runs out."""
        t0 = time.monotonic()

        def answered() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{log_tail(self.log)}")
            try:
                return ready(httpx.get(url, timeout=2.0))
            except httpx.TransportError:
                return False

        wait_for(f"{self.name} at {url}", answered, START_TIMEOUT_S, lambda: log_tail(self.log))
        return time.monotonic() - t0

    def send(self, sig: int) -> None:
        """Signal the whole process group (the server and the workers it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.send(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        self.send(signal.SIGKILL)  # what is left of the group, if anything
        self.proc.wait(timeout=10)


@dataclass(frozen=True)
class Postgres:
    port: int

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{PG_USER}@{HOST}:{self.port}/{database}"

    def query(self, database: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import psycopg2

        with psycopg2.connect(self.url(database)) as conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL cluster (trust auth, loopback) with databases ``mlflow`` and ``prefect``."""
    pg_bin = postgres_bin()
    if pg_bin is None:
        message = (
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install the `postgresql` package "
            "or set METAREC_PG_BIN to their folder"
        )
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message)
        pytest.skip(message)
    # initdb refuses to run as root: as root, the cluster belongs to the `postgres` user.
    as_owner: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="metarec-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, log, port = base / "data", base / "server.log", free_port()
    pg_ctl = [*as_owner, str(pg_bin / "pg_ctl"), "-D", str(data)]
    initdb = [str(pg_bin / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "--locale=C"]
    run_checked([*as_owner, *initdb, "--encoding=UTF8"], timeout=120)
    options = f"-h {HOST} -p {port} -k {base} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    run_checked([*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", "60", "start"], timeout=90)
    try:
        for database in ("mlflow", "prefect"):
            createdb = [str(pg_bin / "createdb"), "-h", HOST, "-p", str(port), "-U", PG_USER, database]
            run_checked(createdb, timeout=30)
        yield Postgres(port)
    finally:
        stop = [*pg_ctl, "-m", "immediate", "-w", "-t", "30", "stop"]
        subprocess.run(stop, capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)


def base_env(home: Path) -> dict[str, str]:
    """Offline, quiet, its own PREFECT_HOME and DVC site cache, this venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(
        {
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "PREFECT_HOME": str(home / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "DVC_NO_ANALYTICS": "1",
            "DVC_SITE_CACHE_DIR": str(home / "dvc-site"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
    )
    return env


@dataclass(frozen=True)
class Servers:
    mlflow_url: str
    prefect_api: str
    artifacts: Path
    postgres: Postgres
    startup_s: dict[str, float]

    def client_env(self, home: Path) -> dict[str, str]:
        """A pipeline process's environment: the two URLs of docs/operations.md, nothing else."""
        return {**base_env(home), "MLFLOW_TRACKING_URI": self.mlflow_url, "PREFECT_API_URL": self.prefect_api}

    def mlflow(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.mlflow_url}/api/2.0/mlflow/{path}", timeout=30, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def prefect(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.prefect_api}/{path}", timeout=30, **kwargs)
        assert response.status_code in (200, 201), f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def flow_runs(self, **filters: Any) -> list[dict[str, Any]]:
        body = {"flows": {"name": {"any_": [FLOW]}}, **filters, "sort": "EXPECTED_START_TIME_ASC"}
        return list(self.prefect("POST", "flow_runs/filter", json=body))

    def model_versions(self) -> list[dict[str, Any]]:
        found = self.mlflow("GET", "model-versions/search", params={"filter": f"name='{MODEL}'"})
        return list(found.get("model_versions", []))


@pytest.fixture(scope="module")
def servers(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """MLflow (Postgres store, artifacts proxied to a local folder), Prefect (Postgres), started together."""
    base = tmp_path_factory.mktemp("servers")
    artifacts = base / "mlartifacts"
    mlflow_port, prefect_port = free_port(), free_port()
    mlflow_cmd = [
        *(str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(mlflow_port), "--workers", "1"),
        *("--backend-store-uri", postgres.url("mlflow", driver="postgresql+psycopg2")),
        *("--serve-artifacts", "--artifacts-destination", artifacts.as_uri()),
    ]
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)]
    prefect_env = {
        **base_env(base / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url("prefect", driver="postgresql+asyncpg"),
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    started: list[Service] = []
    try:
        mlflow = Service.start(
            "mlflow server", mlflow_cmd, base_env(base / "mlflow"), base / "mlflow.log", base
        )
        started.append(mlflow)
        prefect = Service.start("prefect server", prefect_cmd, prefect_env, base / "prefect.log", base)
        started.append(prefect)
        mlflow_url, prefect_api = f"http://{HOST}:{mlflow_port}", f"http://{HOST}:{prefect_port}/api"
        startup = {
            "mlflow": mlflow.wait_http(f"{mlflow_url}/health", lambda r: r.status_code == 200),
            "prefect": prefect.wait_http(
                f"{prefect_api}/health", lambda r: r.status_code == 200 and r.json()
            ),
        }
        yield Servers(mlflow_url, prefect_api, artifacts, postgres, startup)
    finally:
        for service in started:
            service.send(signal.SIGTERM)
        for service in started:
            service.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working copy as a worker has one: pipeline definition and code, flows, the feedback folder."""
    root = make_project(tmp_path_factory.mktemp("work") / "project")
    for folder in ("flows", "feedback"):
        if (REPO / folder).exists() and not (root / folder).exists():
            shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def first_run(servers: Servers, project: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``metarec run`` with the smoke params, reporting to both servers; returns registration.json."""
    # As the compose `bootstrap` does: the server creates the experiment, so artifacts go through it.
    experiment = load_params(project / "params.yaml").register.experiment
    servers.mlflow("POST", "experiments/create", json={"name": experiment})
    cmd = [str(BIN / "metarec"), "run", *(arg for override in SMOKE for arg in ("--set", override))]
    env = servers.client_env(tmp_path_factory.mktemp("client"))
    try:
        run_checked(cmd, timeout=FLOW_TIMEOUT_S, cwd=project, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"metarec run did not finish in {FLOW_TIMEOUT_S:.0f} s: {exc}")
    return json.loads((project / "reports" / "registration.json").read_text())


def wait_for_flow_run(servers: Servers, flow_run_id: str, timeout: float, log: Path) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        run = servers.prefect("GET", f"flow_runs/{flow_run_id}")
        return run if run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

    run = wait_for(f"flow run {flow_run_id}", final, timeout, lambda: log_tail(log))
    assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{log_tail(log)}"
    return run


def test_servers_answer_and_keep_their_data_in_postgres(servers: Servers) -> None:
    servers.mlflow("POST", "experiments/create", json={"name": "servers-answer"})
    servers.prefect("POST", "flows/", json={"name": "servers-answer"})

    [(location,)] = servers.postgres.query(
        "mlflow", "SELECT artifact_location FROM experiments WHERE name = %s", "servers-answer"
    )
    assert location.startswith("mlflow-artifacts:")  # the server's proxy, not a client's folder
    assert servers.postgres.query(
        "prefect", "SELECT count(*) FROM flow WHERE name = %s", "servers-answer"
    ) == [(1,)]


def test_retraining_registers_the_champion_and_reports_every_stage(
    servers: Servers, first_run: dict[str, Any]
) -> None:
    alias = servers.mlflow("GET", "registered-models/alias", params={"name": MODEL, "alias": "champion"})
    version = alias["model_version"]
    assert int(version["version"]) == first_run["version"] == 1
    assert version["run_id"] == first_run["run_id"] and first_run["alias"] == "champion"
    assert first_run["tracking_uri"] == servers.mlflow_url
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert tags["params_hash"] == first_run["params_hash"] and tags["dataset_hash"] != "unknown"
    # The model's files went through the server into its artifact store.
    assert list(servers.artifacts.rglob("MLmodel")), f"no model under {servers.artifacts}"

    [run] = servers.flow_runs()
    assert run["state"]["type"] == "COMPLETED"
    body = {"flow_runs": {"id": {"any_": [run["id"]]}}}
    tasks = servers.prefect("POST", "task_runs/filter", json=body)
    assert {t["name"] for t in tasks} == STAGES
    assert {t["state"]["type"] for t in tasks} == {"COMPLETED"}

    assert servers.postgres.query("mlflow", "SELECT name FROM registered_models") == [(MODEL,)]
    assert servers.postgres.query("prefect", "SELECT state_type FROM flow_run") == [("COMPLETED",)]


def test_champion_model_downloads_through_the_server(
    servers: Servers, first_run: dict[str, Any], tmp_path: Path
) -> None:
    """A client resolves ``models:/metarec@champion`` and fetches the files over the artifact proxy."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(servers.mlflow_url)
    try:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp_path)))
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None unsets it
    [stored] = list(servers.artifacts.rglob("MLmodel"))
    assert (local / "MLmodel").read_text() == stored.read_text()
    assert "python_function" in (local / "MLmodel").read_text()
    assert {p.name for p in local.rglob("*")} >= {p.name for p in stored.parent.rglob("*")}


def test_prefect_yaml_deploys_and_a_process_worker_runs_the_nightly(
    servers: Servers, first_run: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    env = servers.client_env(tmp_path)
    for pool in ("cpu", "gpu"):
        run_checked(["prefect", "work-pool", "create", pool, "--type", "process"], timeout=120, env=env)
    run_checked(["prefect", "--no-prompt", "deploy", "--all"], timeout=180, cwd=REPO, env=env)

    deployments = servers.prefect("POST", "deployments/filter", json={"flows": {"name": {"any_": [FLOW]}}})
    by_name = {d["name"]: d for d in deployments}
    assert set(by_name) == {"nightly", "nightly-gpu"}
    assert (by_name["nightly"]["work_pool_name"], by_name["nightly-gpu"]["work_pool_name"]) == ("cpu", "gpu")
    schedules = {name: d["schedules"] for name, d in by_name.items()}
    assert [(s["schedule"]["cron"], s["active"]) for s in schedules["nightly"]] == [("0 3 * * *", True)]
    assert [(s["schedule"]["cron"], s["active"]) for s in schedules["nightly-gpu"]] == [("0 3 * * *", False)]
    assert by_name["nightly-gpu"]["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert {d["global_concurrency_limit"]["limit"] for d in deployments} == {1}
    feedback = {"flows": {"name": {"any_": ["metarec-feedback"]}}}
    [ingest] = servers.prefect("POST", "deployments/filter", json=feedback)
    assert (ingest["name"], ingest["work_pool_name"], ingest["schedules"]) == ("feedback-ingest", "cpu", [])

    flow_run = servers.prefect("POST", f"deployments/{by_name['nightly']['id']}/create_flow_run", json={})
    worker = [
        "prefect",
        "worker",
        "start",
        "--pool",
        "cpu",
        "--type",
        "process",
        "--run-once",
        "--limit",
        "1",
    ]
    log = tmp_path / "worker.log"
    worker_env = {**env, "METAREC_PROJECT_DIR": str(project)}
    done = subprocess.run(
        worker, env=worker_env, cwd=tmp_path, capture_output=True, text=True, timeout=RERUN_TIMEOUT_S
    )
    log.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, log_tail(log)
    wait_for_flow_run(servers, flow_run["id"], 30, log)
    # Nothing changed since the first run: DVC skipped every stage, no new version was registered.
    assert len(servers.model_versions()) == 1
    assert json.loads((project / "reports" / "registration.json").read_text()) == first_run


def test_served_nightly_runs_in_the_working_copy(
    servers: Servers, first_run: dict[str, Any], project: Path, tmp_path: Path
) -> None:
    env = {**servers.client_env(tmp_path), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    serve = "import sys, pathlib, flows.deployments as d; d.serve_flows(pathlib.Path(sys.argv[1]))"
    cmd = [sys.executable, "-c", serve, str(project)]
    runner = Service.start("serve_flows", cmd, env, tmp_path / "serve.log", tmp_path)
    try:

        def served() -> dict[str, Any] | None:
            if runner.proc.poll() is not None:
                pytest.fail(f"serve_flows exited with {runner.proc.returncode}:\n{log_tail(runner.log)}")
            found = servers.prefect(
                "POST", "deployments/filter", json={"deployments": {"name": {"any_": ["nightly-served"]}}}
            )
            return found[0] if found else None

        deployment = wait_for("served deployment", served, START_TIMEOUT_S, lambda: log_tail(runner.log))
        assert deployment["parameters"]["root"] == str(project)
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]
        flow_run = servers.prefect("POST", f"deployments/{deployment['id']}/create_flow_run", json={})
        wait_for_flow_run(servers, flow_run["id"], RERUN_TIMEOUT_S, runner.log)
        # Stopping the runner cancels the runs it still executes: let the run's process exit first.
        serving = psutil.Process(runner.proc.pid)
        wait_for("flow-run process exit", lambda: not serving.children(), 60, lambda: log_tail(runner.log))
    finally:
        runner.stop()
    assert len(servers.model_versions()) == 1
    # `metarec run`, the worker's run and the served run; the others are the nightly's future runs.
    ran = [run for run in servers.flow_runs() if run["start_time"]]
    assert [run["state"]["type"] for run in ran] == ["COMPLETED"] * 3, ran
