"""Operations files, checked with the tools that consume them: Prefect's own prefect.yaml models and
schedule/step code, the process work pool's job template, the params model, PyYAML for compose and the
workflows, and the real image entry-point script. No network, no Docker engine.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.params import ParamsError, load_params
from tests.test_pipeline_e2e import SMOKE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
INFRA = REPO / "infra"
COMPOSE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"
PREFECT_YAML = REPO / "prefect.yaml"
FLOW_NAME = "metarec-retrain"
FLOWS = {"nightly": FLOW_NAME, "nightly-gpu": FLOW_NAME, "feedback-ingest": "metarec-feedback"}


def prefect_yaml() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


def deployment(name: str) -> dict[str, Any]:
    [found] = [d for d in prefect_yaml()["deployments"] if d["name"] == name]
    return found


# --- prefect.yaml -----------------------------------------------------------------------------------------


def test_prefect_yaml_passes_prefects_own_loader() -> None:
    from prefect.cli.deploy._config import _load_deploy_configs_and_actions
    from prefect.cli.deploy._models import PrefectYamlModel
    from rich.console import Console

    PrefectYamlModel.model_validate(prefect_yaml())  # raises where the CLI would only print and skip
    configs, actions = _load_deploy_configs_and_actions(PREFECT_YAML, console=Console(quiet=True))
    assert [c["name"] for c in configs] == ["nightly", "nightly-gpu", "feedback-ingest"]
    assert actions["build"] == [] and actions["push"] == []
    assert actions["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $METAREC_PROJECT_DIR }}"}}
    ]
    assert {c["work_pool"]["name"] for c in configs} == {"cpu", "gpu"}


def test_every_entrypoint_loads_the_flow_and_its_parameters_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.flows import Flow, load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools import validate

    monkeypatch.chdir(REPO)  # `prefect deploy` resolves entrypoints from the folder holding prefect.yaml
    for config in prefect_yaml()["deployments"]:
        flow: Flow[..., Any] = load_flow_from_entrypoint(config["entrypoint"], use_placeholder_flow=False)
        assert flow.name == FLOWS[config["name"]]
        schema = parameter_schema(flow).model_dump_for_openapi()
        validate(config["parameters"], schema, raise_on_error=True, ignore_required=True)
        # Every parameter is fixed by the deployment, except those a run must give (feedback's `file`).
        assert set(config["parameters"]) == set(schema["properties"]) - set(schema.get("required", []))
        load_params(REPO / config["parameters"]["params_file"], config["parameters"]["overrides"])


def test_schedules_build_as_prefect_deploy_builds_them() -> None:
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.client.schemas.schedules import CronSchedule

    built = {
        d["name"]: [_schedule_config_to_deployment_schedule(s) for s in d.get("schedules", [])]
        for d in prefect_yaml()["deployments"]
    }
    [nightly], [gpu], feedback = built["nightly"], built["nightly-gpu"], built["feedback-ingest"]
    assert feedback == []  # runs when a file arrives
    for entry in (nightly, gpu):
        assert isinstance(entry["schedule"], CronSchedule)
        assert (entry["schedule"].cron, entry["schedule"].timezone) == ("0 3 * * *", "UTC")
    assert nightly.get("active", True) is True and gpu["active"] is False  # never two nightly runs
    with pytest.raises(ValueError):
        _schedule_config_to_deployment_schedule({"cron": "0 25 * * *"})


def test_job_variables_fit_the_process_pool_template() -> None:
    from prefect.utilities.schema_tools import validate
    from prefect.utilities.schema_tools.validation import ValidationError
    from prefect.workers.process import ProcessWorker

    variables = ProcessWorker.get_default_base_job_template()["variables"]
    for config in prefect_yaml()["deployments"]:
        job_variables = config["work_pool"].get("job_variables", {})
        assert set(job_variables) <= set(variables["properties"]), config["name"]
        validate(job_variables, variables, raise_on_error=True)
    with pytest.raises(ValidationError, match=r"env\.CUDA_VISIBLE_DEVICES"):
        validate({"env": {"CUDA_VISIBLE_DEVICES": 0.5}}, variables, raise_on_error=True)


def test_gpu_deployment_runs_one_process_per_visible_device() -> None:
    gpu = deployment("nightly-gpu")
    params = load_params(REPO / "params.yaml", gpu["parameters"]["overrides"])
    devices = gpu["work_pool"]["job_variables"]["env"]["CUDA_VISIBLE_DEVICES"].split(",")
    assert params.train.device == "cuda" and params.features.device == "cuda"
    assert params.train.nproc == len(devices) == len(set(devices))


def test_pull_step_enters_the_project_dir_the_worker_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness: None
) -> None:
    """As a worker runs it (resolving blocks and variables takes the API: the test server here)."""
    from prefect.deployments.steps.core import run_steps

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("METAREC_PROJECT_DIR", str(tmp_path))
    outputs = asyncio.run(run_steps(prefect_yaml()["pull"], print_function=lambda *_: None))
    assert Path.cwd() == tmp_path.resolve()
    assert outputs["directory"] == str(tmp_path.resolve())


# --- flows/deployments.py ---------------------------------------------------------------------------------


def test_served_nightly_matches_the_declared_one() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    from flows.deployments import build_deployments

    [served] = build_deployments(REPO, overrides=["train.epochs=3"])
    declared = deployment("nightly")
    assert (served.name, served.flow_name) == ("nightly-served", FLOW_NAME)
    assert served.entrypoint == "flows.retrain.retrain"  # a module path: runs from any directory
    [schedule] = served.schedules or []
    assert isinstance(schedule.schedule, CronSchedule)
    assert schedule.schedule.cron == declared["schedules"][0]["cron"]
    assert schedule.schedule.timezone == declared["schedules"][0]["timezone"]
    assert served.parameters == {
        "params_file": "params.yaml",
        "overrides": ["train.epochs=3"],
        "root": str(REPO),
    }
    assert served.work_pool_name is None


def test_served_deployments_reject_bad_params_before_serving() -> None:
    from flows.deployments import build_deployments

    with pytest.raises(ParamsError, match=r"train\.epochs"):
        build_deployments(REPO, overrides=["train.epochs=0"])


# --- infra/docker-compose.yml -----------------------------------------------------------------------------

VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable substitution: ``${X}``, ``${X:-default}``, ``${X:?error}``, ``$$`` (a literal $)."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.groups()
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op and op.endswith("?") and unset:
            raise KeyError(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return arg
        return current or ""

    return VARIABLE.sub(value, text)


def env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


SECRETS = {"POSTGRES_PASSWORD": "pg-secret-1", "MINIO_ROOT_PASSWORD": "minio-secret-1"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(interpolate(COMPOSE.read_text(), {**env_example(), **SECRETS}))


def test_compose_needs_the_secrets_and_holds_none() -> None:
    text = COMPOSE.read_text()
    with pytest.raises(KeyError, match="PASSWORD"):
        interpolate(text, env_example())  # the example leaves the passwords empty: compose refuses to start
    referenced = {m.group(1) for m in VARIABLE.finditer(text) if m.group(1)}
    assert referenced <= set(env_example()), referenced - set(env_example())
    assert all(not env_example()[name] for name in SECRETS)
    for secret in SECRETS.values():
        assert secret not in text
    for line in text.splitlines():
        if re.search(r"(PASSWORD|SECRET)\w*:", line):
            assert "${" in line, f"literal credential in docker-compose.yml: {line.strip()}"


def test_compose_services_and_their_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "prefect-worker"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        if "build" in service:
            assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).exists()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert not source.startswith(".") or (COMPOSE.parent / source).exists(), volume

    mlflow = services["mlflow"]
    command = shlex.split(mlflow["command"][0])
    env = mlflow["environment"]
    assert "--serve-artifacts" in command and command[command.index("--port") + 1] == "5000"
    assert env["MLFLOW_BACKEND_STORE_URI"] == (
        "postgresql+psycopg2://metarec:pg-secret-1@postgres:5432/mlflow"
    )
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("metarec", "minio-secret-1")
    assert env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")[0] == "mlflow:5000"

    prefect = services["prefect-server"]["environment"]
    assert prefect["PREFECT_API_DATABASE_CONNECTION_URL"] == (
        "postgresql+asyncpg://metarec:pg-secret-1@postgres:5432/prefect"
    )
    assert prefect["PREFECT_SERVER_API_PORT"] == "4200"

    buckets = shlex.split(services["minio-init"]["command"][0].split("&&")[1])[-2:]
    bucket_env = services["minio-init"]["environment"]
    assert [
        b.replace("$MLFLOW_BUCKET", bucket_env["MLFLOW_BUCKET"]).replace(
            "$DVC_BUCKET", bucket_env["DVC_BUCKET"]
        )
        for b in buckets
    ] == ["local/mlflow", "local/dvc"]


def test_workers_talk_to_the_servers_and_poll_the_declared_pools(compose: dict[str, Any]) -> None:
    services = compose["services"]
    pools = {d["work_pool"]["name"] for d in prefect_yaml()["deployments"]}
    polled = set()
    for name in ("prefect-worker", "prefect-worker-gpu"):
        worker = services[name]
        env = worker["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["DVC_REMOTE_URL"] == "s3://dvc" and env["DVC_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert worker["command"][:3] == ["prefect", "worker", "start"]
        polled.add(worker["command"][worker["command"].index("--pool") + 1])
        assert any(v.endswith(":/opt/metarec/.dvc/cache") for v in worker["volumes"])
    assert polled == pools
    assert services["prefect-worker-gpu"]["profiles"] == ["gpu"]
    bootstrap = services["bootstrap"]["command"][-1]
    assert all(f"work-pool create {pool} --type process" in bootstrap for pool in pools)
    assert "deploy --all" in bootstrap and "create_experiment(name)" in bootstrap
    assert (
        services["bootstrap"]["environment"]["METAREC_EXPERIMENT"]
        == load_params(REPO / "params.yaml").register.experiment
    )


# --- infra/Dockerfile and its entry point -----------------------------------------------------------------


def test_training_image_is_cuda_based_and_installs_the_project() -> None:
    text = (INFRA / "Dockerfile").read_text()
    base = re.search(r"^ARG CUDA_IMAGE=(\S+)", text, re.M)
    assert base and base.group(1).startswith("nvidia/cuda:12.") and "runtime" in base.group(1)
    assert "FROM ${CUDA_IMAGE}" in text
    assert "pip install --no-deps ." in text and "-c constraints.txt" in text
    assert re.search(r"^WORKDIR /opt/metarec$", text, re.M)
    assert "METAREC_PROJECT_DIR=/opt/metarec" in text
    assert '"/opt/metarec/infra/docker-entrypoint.sh"' in text
    # Flow runs write data/, models/, reports/ into the working copy: its owner is the user they run as.
    [user] = re.findall(r"^USER (\S+)$", text, re.M)
    assert f"chown {user}:{user} /opt/metarec" in text and f"COPY --chown={user}:{user} . ." in text
    for copied in re.findall(r"^COPY (?:--chown=\S+ )?(\S+) \S+$", text, re.M):
        assert (REPO / copied).exists(), copied
    ignored = {
        line for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines() if line[:1] != "#"
    }
    assert {".venv/", "data/", "infra/.env", ".dvc/config.local", ".dvc/cache/"} <= ignored
    assert not ignored & {".git", ".git/", "pipeline/", "flows/", "dvc.yaml", "params.yaml", "prefect.yaml"}


def test_entrypoint_sets_a_local_dvc_remote_and_runs_the_command(tmp_path: Path) -> None:
    script = INFRA / "docker-entrypoint.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    project = tmp_path / "project"
    project.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "METAREC_PROJECT_DIR": str(project),
    }
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=project, env=env, check=True)
    committed = (project / ".dvc" / "config").read_text()
    env.update({"DVC_REMOTE_URL": "s3://dvc", "DVC_S3_ENDPOINT_URL": "http://minio:9000"})
    done = subprocess.run(["sh", str(script), "sh", "-c", "pwd"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(project)
    local = (project / ".dvc" / "config.local").read_text()
    assert (
        "remote = storage" in local
        and "url = s3://dvc" in local
        and "endpointurl = http://minio:9000" in local
    )
    assert (project / ".dvc" / "config").read_text() == committed


def test_repository_dvc_config_has_no_default_remote() -> None:
    assert "remote" not in (REPO / ".dvc" / "config").read_text()


# --- .github/workflows ------------------------------------------------------------------------------------


def workflow(name: str) -> dict[str, Any]:
    loaded = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    loaded["on"] = loaded.pop(True)  # YAML 1.1 reads the key `on` as a boolean
    return loaded


def steps(job: dict[str, Any]) -> str:
    return "\n".join(str(step.get("run", "")) for step in job["steps"])


def test_ci_workflow_lints_typechecks_and_runs_every_test() -> None:
    ci = workflow("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    runs = "\n".join(steps(job) for job in ci["jobs"].values())
    for command in (
        "make lint",
        "make typecheck",
        "make test",
        "apt-get install -y --no-install-recommends postgresql",
    ):
        assert command in runs
    makefile = (REPO / "Makefile").read_text()
    assert "ruff check" in makefile and "mypy" in makefile and "pytest -q\n" in makefile  # no marker filter
    for job in ci["jobs"].values():
        [python] = [s["with"]["python-version"] for s in job["steps"] if "setup-python" in s.get("uses", "")]
        assert python == "3.11" and job["runs-on"].startswith("ubuntu")


def test_retrain_workflow_runs_the_smoke_flow_and_posts_the_metrics_diff() -> None:
    retrain = workflow("retrain.yml")
    assert retrain["on"]["push"]["branches"] == ["main"] and "workflow_dispatch" in retrain["on"]
    [job] = retrain["jobs"].values()
    [run] = [s["run"] for s in job["steps"] if "metarec run" in str(s.get("run", ""))]
    args = shlex.split(run)
    assert args[:2] == [".venv/bin/metarec", "run"]
    overrides = args[3::2]
    assert set(args[2::2]) == {"--set"} and overrides == SMOKE
    load_params(REPO / "params.yaml", overrides)
    summary = steps(job)
    assert "dvc metrics diff --md" in summary and '>> "$GITHUB_STEP_SUMMARY"' in summary


# --- docs/operations.md -----------------------------------------------------------------------------------


def test_documented_torchrun_launch_matches_the_trainer() -> None:
    from pipeline.training.train import parse_args

    docs = (REPO / "docs" / "operations.md").read_text()
    [launch] = re.findall(r"^torchrun --.*$", docs.replace("\\\n", " "), re.M)
    args = shlex.split(launch)
    for flag in ("--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d"):
        assert flag in args
    assert any(a.startswith("--rdzv-endpoint=") for a in args)
    module = args.index("-m")
    assert args[module + 1] == "pipeline.training.train"
    parsed = parse_args(args[module + 2 :])
    assert parsed.features == Path("data/features") and parsed.out == Path("models/meta")


def test_documented_deployments_and_services_exist(compose: dict[str, Any]) -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    from flows.deployments import NIGHTLY_SERVED

    declared = {d["name"] for d in prefect_yaml()["deployments"]} | {NIGHTLY_SERVED}
    for name in re.findall(rf"{FLOW_NAME}/([\w-]+)", docs):
        assert name in declared, name
    services = re.findall(r"docker compose -f infra/docker-compose.yml (?:exec|logs -f) ([\w-]+)", docs)
    assert services
    for service in services:
        assert service in compose["services"], service
