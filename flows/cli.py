"""``metarec``: one command per pipeline stage, plus ``run`` (the whole retraining flow).

Stage commands are what ``dvc.yaml`` calls; ``run`` drives the same stages through the Prefect flow.
Errors print one clear message (no traceback unless ``--debug``) and exit non-zero.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.errors import DEBUG_ENV, TRANSIENT_EXIT, is_transient, report_to_flow
from pipeline.params import Params, load_params
from pipeline.paths import Paths

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

DEFAULT_PARAMS = Path("params.yaml")
ParamsOpt = Annotated[Path, typer.Option("--params", help="params file", show_default=True)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="override a param: section.key=value (repeatable)", show_default=False),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="show tracebacks")]
HostOpt = Annotated[str, typer.Option("--host", help="address to listen on")]
PortOpt = Annotated[int, typer.Option("--port", help="port to listen on")]


def project_defaults(root: Path) -> dict[str, str]:
    """The Makefile's quiet, offline, project-local settings for the project at ``root``: no telemetry,
    no Hugging Face downloads, Prefect's and DVC's state under ``root``, the project's MLflow store."""
    root = root.resolve()
    return {
        "DO_NOT_TRACK": "true",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "DVC_SITE_CACHE_DIR": str(root / ".dvc" / "tmp" / "site"),
        "MLFLOW_TRACKING_URI": Paths(root).mlflow_uri,
    }


def main() -> None:
    """The ``metarec`` script: :func:`project_defaults` for what the environment leaves unset, then the
    CLI. Set before any command imports Prefect (which reads its settings at import) or MLflow, and
    inherited by what the commands start (``dvc repro``, ``torchrun``, ``mlflow models serve``)."""
    for key, value in project_defaults(Path.cwd()).items():
        if not os.environ.get(key):
            os.environ[key] = value
    app()


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if not debug:
        for noisy in ("great_expectations", "mlflow", "alembic", "sentence_transformers", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _execute(
    name: str,
    params_file: Path,
    overrides: list[str] | None,
    debug: bool,
    body: Callable[[Params, Paths], Any],
) -> Any:
    """Load params, run ``body``; turn any failure into one readable line and exit code 1 (2: bad params,
    ``TRANSIENT_EXIT``: a retry may heal it)."""
    debug = debug or os.environ.get(DEBUG_ENV) == "1"
    _configure_logging(debug)
    try:
        params = load_params(params_file, overrides or [])
    except ValueError as exc:
        typer.secho(f"metarec {name}: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None
    try:
        return body(params, Paths(Path.cwd()))
    except (KeyboardInterrupt, typer.Exit):
        raise
    except Exception as exc:
        code = TRANSIENT_EXIT if is_transient(exc) else 1
        if report_to_flow(name, exc) and not debug:
            raise typer.Exit(code) from None  # the flow that ran this stage reports the failure
        if debug:
            raise
        typer.secho(f"metarec {name} failed: {exc}", err=True, fg="red")
        typer.secho("(run again with --debug for the traceback)", err=True, fg="bright_black")
        raise typer.Exit(code) from None


@app.command()
def source(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Find the raw files (data.path, the mirror or a download) and link them under data/source for DVC."""
    from pipeline.data.snapshot import snapshot_source

    manifest = _execute("source", params, set_, debug, snapshot_source)
    typer.echo(f"source: {manifest['layout']}, {len(manifest['files'])} file(s)")


@app.command()
def ingest(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Read the configured source and write typed parquet tables (ratings, users, items)."""
    from pipeline.data.ingest import ingest as run_ingest

    counts = _execute("ingest", params, set_, debug, run_ingest)
    typer.echo(f"ingested: {json.dumps(counts)}")


@app.command()
def validate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Run the Great Expectations suites over the ingested tables; stop on failure."""
    from pipeline.validation.validate import validate as run_validate

    report = _execute("validate", params, set_, debug, run_validate)
    typer.echo(f"validation passed: {report.summary()}")


@app.command()
def features(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Embed item text, encode attributes, build per-user tasks."""
    from pipeline.features.build import build_features

    fs = _execute("features", params, set_, debug, build_features)
    typer.echo(f"features: {fs.n_users} users, {fs.n_items} items, text dim {fs.text_dim}")


@app.command()
def train(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Meta-train the recommender through torchrun (gloo on CPU, NCCL on GPU)."""
    from pipeline.training.stage import train_stage

    summary = _execute("train", params, set_, debug, train_stage)
    typer.echo(f"trained: {json.dumps(summary)}")


@app.command()
def evaluate(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Cross-validate every model on the same folds; write metrics/cv.json."""
    from pipeline.evaluation.cv import evaluate as run_evaluate
    from pipeline.evaluation.report import format_table

    cv = _execute("evaluate", params, set_, debug, run_evaluate)
    typer.echo(format_table(cv))


@app.command()
def tune(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Search each model's hyperparameters (Optuna) on validation users; write the tuned-params file."""
    from pipeline.tuning.tune import tune as run_tune

    result = _execute("tune", params, set_, debug, run_tune)
    for model, best in result["models"].items():
        values = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["values"].items()
        )
        typer.echo(
            f"{model}: {best['metric']} {best['value']:.4f} (trial {best['trial']} of {best['trials']}, "
            f"{best['pruned']} pruned, {best['failed']} failed): {values}"
        )
    typer.echo(f"tuned values written to {result['tuned']}")


@app.command()
def register(params: ParamsOpt = Path("params.yaml"), set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Log the run to MLflow, register the model, move the champion alias if it wins."""
    from pipeline.registry.register import register as run_register

    info = _execute("register", params, set_, debug, run_register)
    typer.echo(f"registered {info['name']} version {info['version']} as {info['alias']}")


def _drop_prefect_errors(record: logging.LogRecord) -> bool:
    """False for the Prefect engine's records of a failure (the CLI prints its own summary)."""
    if not record.name.startswith("prefect"):
        return True
    failed = record.getMessage().startswith(("Finished in state Failed", "Finished in state Crashed"))
    return record.levelno < logging.ERROR and not failed


def _flow_output(debug: bool) -> None:
    """With ``--debug`` the stages a flow runs show their tracebacks too; without, the Prefect engine's error
    records (tracebacks) stay off the console: a failed run prints one summary, and the Prefect API still
    records the tracebacks with the run."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
        return
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            if type(handler).__name__ == "PrefectConsoleHandler":  # Prefect's logging already set up
                handler.setLevel(logging.CRITICAL)
            elif logger is logging.getLogger() and _drop_prefect_errors not in handler.filters:
                handler.addFilter(_drop_prefect_errors)


@app.command()
def run(params: ParamsOpt = DEFAULT_PARAMS, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """The whole retraining flow (Prefect): ingest → validate → features → train → evaluate → register.

    ``--params FILE`` other than params.yaml sets FILE's keys in params.yaml, like ``--set`` (the stages
    DVC runs read params.yaml), e.g. ``--params params/ml1m.yaml``."""
    if params != DEFAULT_PARAMS:
        from flows.params_file import overrides_from

        try:
            set_ = [*overrides_from(params), *(set_ or [])]
        except ValueError as exc:
            typer.secho(f"metarec run: {exc}", err=True, fg="red")
            raise typer.Exit(2) from None
        params = DEFAULT_PARAMS

    def body(p: Params, paths: Paths) -> dict[str, Any]:
        _flow_output(debug)
        from flows.retrain import retrain

        return retrain(params_file=str(params), overrides=list(set_ or []), root=str(paths.root))

    result = _execute("run", params, set_, debug, body)
    if not result["table_printed"]:
        typer.echo(result["table"])
    typer.echo(
        f"registered {result['registration']['name']} version {result['registration']['version']}"
        f" as {result['registration']['alias']}"
    )


@app.command()
def promote(
    version: Annotated[int | None, typer.Option("--version", help="make version N the champion")] = None,
    rollback: Annotated[bool, typer.Option("--rollback", help="back to the previous champion")] = False,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Move the champion alias by hand: `--version N`, or `--rollback` to the previous champion."""

    def body(p: Params, paths: Paths) -> Any:
        from mlflow import MlflowClient

        from pipeline.registry.promote import promote as run_promote
        from pipeline.registry.promote import rollback as run_rollback
        from pipeline.registry.register import tracking_uri

        if (version is None) != rollback:
            raise ValueError("give exactly one of --version N or --rollback")
        uri = tracking_uri(paths)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        name = p.register.model_name
        if version is None:
            return run_rollback(client, name)
        return run_promote(client, name, version, "manual")

    moved = _execute("promote", params, set_, debug, body)
    unchanged = "" if moved.moved else ", unchanged"
    typer.echo(f"champion: version {moved.champion} (was {moved.previous_champion}){unchanged}")


def _hand_over(command: list[str], uri: str) -> None:
    """Become ``command`` (an MLflow server on the project's store at ``uri``); its output is the user's."""
    from pipeline.registry.serve import mlflow_environment

    sys.stderr.flush()
    os.execve(command[0], command, mlflow_environment(uri, os.environ))


@app.command()
def serve(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 5001,
    alias: Annotated[str, typer.Option("--alias", help="registry alias to serve")] = "champion",
    model_name: Annotated[
        str | None, typer.Option("--model-name", help="registered model [default: register.model_name]")
    ] = None,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Serve models:/NAME@ALIAS with `mlflow models serve` (POST /invocations); Ctrl-C stops."""

    def body(p: Params, paths: Paths) -> None:
        from pipeline.registry.register import tracking_uri
        from pipeline.registry.serve import serve_command, served_version

        uri = tracking_uri(paths)
        name = model_name or p.register.model_name
        version = served_version(uri, name, alias)
        typer.echo(f"serving {name}@{alias} (version {version}): http://{host}:{port}/invocations", err=True)
        _hand_over(serve_command(name, alias, host, port), uri)

    _execute("serve", params, set_, debug, body)


@app.command()
def ui(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 5000,
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """The MLflow UI on the project's store (runs, registry, aliases); Ctrl-C stops."""

    def body(p: Params, paths: Paths) -> None:
        from pipeline.registry.register import tracking_uri
        from pipeline.registry.serve import ui_command

        uri = tracking_uri(paths)
        typer.echo(f"MLflow UI of {uri} at http://{host}:{port}", err=True)
        _hand_over(ui_command(uri, host, port), uri)

    _execute("ui", params, set_, debug, body)


feedback_app = typer.Typer(no_args_is_help=True, help="Feed new ratings back into the data.")
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("add")
def feedback_add(
    file: Annotated[Path, typer.Argument(help="CSV or JSONL of user_id, item_id, rating, timestamp")],
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Validate FILE, store it as a DVC-tracked feedback batch, retrain once enough ratings arrived."""

    def body(p: Params, paths: Paths) -> dict[str, Any]:
        _flow_output(debug)
        from flows.feedback import feedback

        overrides = list(set_ or [])
        return feedback(file=str(file), params_file=str(params), overrides=overrides, root=str(paths.root))

    result = _execute("feedback add", params, set_, debug, body)
    state = "stored as" if result["added"] else "already stored as"
    typer.echo(
        f"{result['rows']} ratings {state} feedback/{result['batch']}; "
        f"{result['pending']} new since the last retraining (retrain after {result['retrain_after']})"
    )
    if result["retrained"]:
        reg = result["registration"]
        typer.echo(f"retrained: registered {reg['name']} version {reg['version']} as {reg['alias']}")


@app.command("serve-flows")
def serve_flows_command(
    params: ParamsOpt = Path("params.yaml"),
    set_: SetOpt = None,
    debug: DebugOpt = False,
    cron: Annotated[str, typer.Option("--cron", help="nightly schedule (cron, UTC)")] = "0 3 * * *",
) -> None:
    """Serve the nightly retraining from this machine (needs PREFECT_API_URL); Ctrl-C stops."""
    from flows.deployments import serve_flows

    _execute(
        "serve-flows",
        params,
        set_,
        debug,
        lambda p, paths: serve_flows(paths.root, str(params), list(set_ or []), cron),
    )
