"""Stage ``register``: log the run to MLflow, register the pyfunc model, and gate the ``champion`` alias.

The new version takes ``champion`` only if, on the same folds as the champion, its cold-start
(``new_user``) error is lower by more than ``register.min_improvement`` and a paired test gives
p < ``register.max_p`` (:mod:`pipeline.registry.gate`); otherwise it becomes ``challenger``. Every version
carries lineage tags (git commit, dataset hash, params hash, fold protocol, metrics per scenario), a
model card, and the served model's accuracy and latency with and without compression; its run holds the
evaluation (``cv.json``, ``shots.json``, the per-user values, the report with its figures) and the
meta-training curve. Aliases only: registry stages are deprecated.

Registration is idempotent: the run carries a ``registration_key`` tag (model fingerprint, params digest,
dataset hash, evaluation digest), and a rerun with the same key reuses that run's model version instead of
adding one. An http(s) tracking server is checked first, so that a server that is down fails the stage at
once, with the tracking URI named, before any work is done.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipeline.data.snapshot import source_digest
from pipeline.features.store import load_feature_set
from pipeline.io import read_json, write_json
from pipeline.meta.learners import load_learner
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.registry.card import model_card
from pipeline.registry.compression import serving_report
from pipeline.registry.gate import (
    CHALLENGER,
    CHAMPION,
    GATE_SCENARIO,
    META_MODEL,
    Evidence,
    GateDecision,
    decide,
    evidence,
)
from pipeline.registry.promote import PREVIOUS_CHAMPION, alias_version, promote
from pipeline.registry.pyfunc import COMPRESSION_KEY, MODEL_ARTIFACT, VOCAB_ARTIFACT
from pipeline.registry.scorer import NonFiniteScores

log = logging.getLogger(__name__)

CV_ARTIFACT = "metrics/cv.json"
EVALUATION_ARTIFACTS = "evaluation"
"""The run's folder holding the evaluation report (``reports/evaluation``: report.md and its figures) and
the per-user values."""
PER_USER_ARTIFACT = f"{EVALUATION_ARTIFACTS}/per_user.json"
"""Absent from runs logged before per-user values left ``cv.json``; the gate then reads them there."""
MODEL_CARD = "model_card.md"
FOLD_PROTOCOL_TAG = "fold_protocol"
KEY_TAG = "registration_key"
GATE_TAG = "gate"
"""Set last: a version with this tag finished registering."""
REGISTRATION_ARTIFACT = "registration.json"
SERVER_SCHEMES = ("http", "https", "databricks")
"""Tracking URIs served by a server, which chooses where artifacts go."""
HEALTH_TIMEOUT_S = 10.0
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pyarrow", "pydantic", "safetensors", "tqdm")
"""What the served model imports (the pyfunc, the meta-learner, the user encoder)."""
SERVED_MODEL = Path(__file__).with_name("served_model.py")
PACKAGE = Path(__file__).resolve().parents[1]
"""The ``pipeline`` package, shipped with the model so that it loads outside this repository."""


def tracking_uri(paths: Paths) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the project's sqlite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or paths.mlflow_uri


def redact(uri: str) -> str:
    """``uri`` without a password (credentials belong in ``MLFLOW_TRACKING_PASSWORD``, not in URIs)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


class ModelRefused(RuntimeError):
    """The model scores sampled users NaN or infinite: nothing is logged or registered."""


class TrackingUnavailable(ConnectionError):
    """The MLflow tracking server does not answer; the message names its URI."""


def check_tracking_server(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """For an http(s) tracking URI, ask the server's ``/health`` once; raise :class:`TrackingUnavailable`
    when nothing answers (instead of MLflow's minutes of retries). Any HTTP answer counts as up; the
    health check needs no credentials, so any user info in the URI is left out of it."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    health = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout):
            pass
    except urllib.error.HTTPError:
        return
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingUnavailable(
            f"MLflow tracking server {redact(uri)} is not reachable ({reason}); start it or point "
            "MLFLOW_TRACKING_URI at a running one, then run register again (it registers once)"
        ) from None


@contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then restore the caller's setting.

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; left in place, a later call for
    another root would silently reuse this store.
    """
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # type: ignore[arg-type]  # None unsets it


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → ``{"section.key": value}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def metric_key(name: str) -> str:
    """``name`` as MLflow accepts it for a metric or tag key: ``ndcg@3`` → ``ndcg_at_3``."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


def cv_metrics(cv: dict[str, Any], source: Path) -> dict[str, float]:
    """``cv.json`` → ``{"<scenario>.<model>.<metric>": mean}`` with MLflow-safe keys (:func:`metric_key`);
    leaves that are not numbers are skipped."""
    scenarios = cv.get("scenarios")
    if not isinstance(scenarios, dict) or not scenarios:
        raise ValueError(f"{source}: expected a non-empty 'scenarios' mapping")
    metrics: dict[str, float] = {}
    for scenario, models in scenarios.items():
        if not isinstance(models, dict):
            raise ValueError(f"{source}: scenarios.{scenario}: expected a mapping of models")
        for model, results in models.items():
            if not isinstance(results, dict):
                raise ValueError(f"{source}: scenarios.{scenario}.{model}: expected a mapping of metrics")
            for metric, value in results.items():
                mean = value.get("mean") if isinstance(value, dict) else value
                if isinstance(mean, int | float) and not isinstance(mean, bool):
                    metrics[metric_key(f"{scenario}.{model}.{metric}")] = float(mean)
    return metrics


def git_commit(root: Path) -> str:
    """``HEAD`` of the repository holding ``root``; "unknown" outside git or before the first commit."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def dataset_hash(paths: Paths) -> str:
    """The hash ``dvc.lock`` records for the ingested data (several outs: a digest of all); else "unknown"."""
    lock = paths.root / "dvc.lock"
    if not lock.exists():
        return "unknown"
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    except yaml.YAMLError as exc:
        raise ValueError(f"{lock}: not valid YAML: {exc}") from None
    ingested = paths.ingested.relative_to(paths.root).as_posix()
    hashes = sorted(
        f"{out['path']}:{out.get(out.get('hash', 'md5'))}"
        for stage in stages.values()
        for out in stage.get("outs", [])
        if out["path"] == ingested or out["path"].startswith(ingested + "/")
    )
    if not hashes:
        return "unknown"
    if len(hashes) == 1:
        return hashes[0].partition(":")[2]
    return hashlib.md5("\n".join(hashes).encode()).hexdigest()


def pip_requirements() -> list[str]:
    """``REQUIREMENTS`` pinned to the versions installed here (local tags such as ``+cpu`` dropped)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def input_example(vocab: dict[str, Any]) -> list[dict[str, Any]]:
    """A new user with three ratings, asking for the top five of all the other items."""
    items = [str(i) for i in vocab["item_ids"][:3]]
    high, low = float(vocab["rating_max"]), float(vocab["rating_min"])
    ratings = [{"item_id": item, "rating": r} for item, r in zip(items, (high, low, high), strict=False)]
    return [{"user_id": "new-user", "ratings": ratings, "k": 5}]


def pyfunc_spec(paths: Paths, compression: str = "none") -> dict[str, Any]:
    """What the pyfunc model is made of: its code (no pickle), the model folder and vocab, its environment,
    and its ``model_config`` (the compression of the candidate pass)."""
    vocab_path = paths.features / "vocab.json"
    return {
        "python_model": str(SERVED_MODEL),
        "artifacts": {MODEL_ARTIFACT: str(paths.model), VOCAB_ARTIFACT: str(vocab_path)},
        "code_paths": [str(PACKAGE)],
        "pip_requirements": pip_requirements(),
        "input_example": input_example(read_json(vocab_path)),
        "model_config": {COMPRESSION_KEY: compression},
    }


def model_fingerprint(folder: Path) -> str:
    """sha256 over the names and bytes of the files of the model folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def registration_key(model_sha256: str, params_hash: str, data_hash: str, evaluation_sha256: str) -> str:
    """What makes two registrations the same: the trained model, the params, the data and the evaluation
    the gate reads (``cv.json`` and ``per_user.json``)."""
    parts = {"model": model_sha256, "params": params_hash, "data": data_hash, "evaluation": evaluation_sha256}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def registered_version(client: MlflowClient, experiment: str, name: str, key: str) -> ModelVersion | None:
    """The version of ``name`` logged by a run of ``experiment`` tagged with ``key``, if any."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.{KEY_TAG} = '{key}'")
    for run in runs:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
        if versions:
            return min(versions, key=lambda v: int(v.version))
    return None


def experiment_id(client: MlflowClient, name: str, uri: str, artifacts: Path) -> str:
    """The experiment's id (created if needed). Its artifacts go to ``artifacts`` for a local store; a
    tracking server chooses the place itself (``--artifacts-destination``)."""
    served = urlsplit(uri).scheme in SERVER_SCHEMES
    location = None if served else artifacts.resolve().as_uri()
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=location)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if location is not None and experiment.artifact_location != location:
        log.warning(
            "experiment %r keeps its artifacts in %s, not %s", name, experiment.artifact_location, location
        )
    return experiment.experiment_id


def champion_evidence(
    client: MlflowClient, uri: str, name: str, metric: str, alias: str = CHAMPION
) -> Evidence | None:
    """The gate's view of the evaluation logged with the run of the version ``alias`` points at: its
    ``cv.json`` and ``per_user.json`` (a run without the latter keeps its per-user values in ``cv.json``);
    None when it cannot be read."""
    champion = client.get_model_version_by_alias(name, alias)
    run_id = str(champion.run_id)

    def artifact(path: str) -> Any:
        return read_json(
            Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=uri))
        )

    try:
        logged = {f.path for f in client.list_artifacts(run_id, EVALUATION_ARTIFACTS)}
        per_user = artifact(PER_USER_ARTIFACT) if PER_USER_ARTIFACT in logged else None
        source = Path(f"version {champion.version}: {CV_ARTIFACT}")
        return evidence(artifact(CV_ARTIFACT), metric, source, per_user)
    except (MlflowException, OSError, ValueError) as exc:
        log.warning("champion version %s: no usable evaluation (%s)", champion.version, exc)
        return None


def transfer_tags(train: dict[str, Any], vocab: dict[str, Any]) -> dict[str, str]:
    """What the model takes from the language model (the transfer source) and what was trained on top."""
    uses_text = bool(train.get("use_text", True)) and bool(vocab.get("text_model"))
    return {
        "transfer.source": str(vocab.get("text_model") or "none"),
        "transfer.language_model": "frozen" if uses_text else "unused",
        "transfer.projection": str(train.get("text_projection", "trained")) if uses_text else "none",
        "transfer.user_profile": str(uses_text and bool(train.get("user_profile", False))).lower(),
    }


def _evaluation_artifacts(paths: Paths) -> list[tuple[Path, str]]:
    """What is logged beside ``cv.json``, with the run's artifact folder of each: the support-size curve,
    the per-user values, the evaluation report (markdown and figures) and the meta-training curve; those
    missing are skipped."""
    wanted = [
        (paths.shots_metrics, "metrics"),
        (paths.per_user_values, EVALUATION_ARTIFACTS),
        (paths.evaluation_report, EVALUATION_ARTIFACTS),
        (paths.train_curve, "plots"),
    ]
    return [(path, folder) for path, folder in wanted if path.exists()]


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the '{stage}' stage first")
    return path


def _gate(client: MlflowClient, uri: str, params: Params, new: Evidence, version: int) -> GateDecision:
    """Gate ``version`` against the champion; against the one before, when an interrupted registration of
    this same version had already made it the champion."""
    cfg = params.register
    alias = CHAMPION
    champion = alias_version(client, cfg.model_name, alias)
    if champion == version:
        alias = PREVIOUS_CHAMPION
        champion = alias_version(client, cfg.model_name, alias)
    old = None
    if champion is not None:
        old = champion_evidence(client, uri, cfg.model_name, cfg.gate_metric, alias)
    metric = f"{GATE_SCENARIO}.{META_MODEL}.{cfg.gate_metric}"
    return decide(new, old, champion, metric, cfg.min_improvement, cfg.max_p)


def register(params: Params, paths: Paths) -> dict[str, Any]:
    """Log params, CV metrics, lineage, model card and serving report; register; gate the aliases.

    Checks an http(s) tracking server first. A model that scores any of ``register.sample_users``
    sampled users NaN or infinite is refused (:class:`ModelRefused`) before anything is logged. A
    model, params, data and evaluation registered before give back that registration
    (``reports/registration.json`` as it was) instead of a new version; one whose registration was
    interrupted after its version was created is finished.
    """
    cfg = params.register
    _require(paths.model, "train")
    _require(paths.features / "vocab.json", "features")
    cv_path = _require(paths.cv_metrics, "evaluate")
    per_user_path = _require(paths.per_user_values, "evaluate")
    cv = read_json(cv_path)
    metrics = cv_metrics(cv, cv_path)
    new = evidence(cv, cfg.gate_metric, cv_path, read_json(per_user_path))
    uri = tracking_uri(paths)
    check_tracking_server(uri)
    lineage = {
        "git_commit": git_commit(paths.root),
        "dataset_hash": dataset_hash(paths),
        "source_sha256": source_digest(paths),
        "params_hash": params.digest(),
    }
    key = registration_key(
        model_fingerprint(paths.model),
        lineage["params_hash"],
        lineage["dataset_hash"],
        hashlib.sha256(cv_path.read_bytes() + per_user_path.read_bytes()).hexdigest(),
    )
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        existing = registered_version(client, cfg.experiment, cfg.model_name, key)
        if existing is not None and GATE_TAG in existing.tags:
            local = mlflow.artifacts.download_artifacts(
                run_id=existing.run_id, artifact_path=REGISTRATION_ARTIFACT, tracking_uri=uri
            )
            registration: dict[str, Any] = read_json(Path(local))
            log.info(
                "%s version %s holds this model, params, data and evaluation (run %s): not registered again",
                cfg.model_name,
                existing.version,
                existing.run_id,
            )
        else:
            registration = _register(params, paths, client, uri, existing, key, lineage, cv, metrics, new)
    except MlflowException as exc:
        first = str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else type(exc).__name__
        raise RuntimeError(f"MLflow at {redact(uri)}: {first}") from exc
    write_json(registration, paths.registration)
    return registration


def _register(
    params: Params,
    paths: Paths,
    client: MlflowClient,
    uri: str,
    existing: ModelVersion | None,
    key: str,
    lineage: dict[str, str],
    cv: dict[str, Any],
    metrics: dict[str, float],
    new: Evidence,
) -> dict[str, Any]:
    """Log and register a new version (or take ``existing``, whose registration was interrupted), tag it,
    gate it; the registration record is logged with the run before the version's ``gate`` tag, which
    marks the registration finished."""
    cfg = params.register
    learner = load_learner(paths.model, device="cpu")
    try:
        serving = serving_report(
            learner, load_feature_set(paths.features), cfg.compression, params.seed, cfg.sample_users
        )
    except NonFiniteScores as exc:
        raise ModelRefused(
            f"{paths.model} is not registered: on up to {cfg.sample_users} sampled users {exc}; "
            "retrain it (docs/training.md, 'Divergence')"
        ) from None
    vocab = read_json(paths.features / "vocab.json")
    card = model_card(params, cv, vocab, lineage, new.protocol, serving)
    tags = {
        **lineage,
        FOLD_PROTOCOL_TAG: new.protocol,
        "compression": cfg.compression,
        **transfer_tags(learner.config.to_dict(), vocab),
    }
    served = {k: v for k, v in serving.items() if not isinstance(v, str)}

    if existing is None:
        with _tracking(uri):
            experiment = experiment_id(client, cfg.experiment, uri, paths.mlflow_artifacts)
            run_name = f"register-{lineage['params_hash'][:8]}"
            with mlflow.start_run(experiment_id=experiment, run_name=run_name) as run:
                mlflow.set_tags({**tags, KEY_TAG: key})
                mlflow.log_params(flatten(params.to_dict()))
                mlflow.log_metrics({**metrics, **served})
                mlflow.log_artifact(str(paths.cv_metrics), artifact_path=Path(CV_ARTIFACT).parent.as_posix())
                for path, folder in _evaluation_artifacts(paths):
                    if path.is_dir():
                        mlflow.log_artifacts(str(path), artifact_path=folder)
                    else:
                        mlflow.log_artifact(str(path), artifact_path=folder)
                mlflow.log_text(card, MODEL_CARD)
                info = mlflow.pyfunc.log_model(
                    name="model", registered_model_name=cfg.model_name, **pyfunc_spec(paths, cfg.compression)
                )
        version, run_id = str(info.registered_model_version), run.info.run_id
    else:
        version, run_id = str(existing.version), str(existing.run_id)
        log.warning("finishing the interrupted registration of %s version %s", cfg.model_name, version)
    meta_metrics = {k: value for k, value in metrics.items() if k.split(".")[1] == META_MODEL}
    for k, value in {**tags, **meta_metrics}.items():
        client.set_model_version_tag(cfg.model_name, version, k, str(value))

    decision = _gate(client, uri, params, new, int(version))
    if decision.alias == CHAMPION:
        promote(client, cfg.model_name, int(version), f"gate: {decision.reason}")
    else:
        client.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
    gate_key = f"{GATE_SCENARIO}.{META_MODEL}.{cfg.gate_metric}"
    client.update_model_version(
        cfg.model_name, version, description=f"{gate_key} {new.mean:.4f}; {decision.reason}"
    )
    log.info("%s version %s is %s: %s", cfg.model_name, version, decision.alias, decision.reason)

    registration = {
        "name": cfg.model_name,
        "version": int(version),
        "alias": decision.alias,
        "run_id": run_id,
        "model_uri": f"models:/{cfg.model_name}/{version}",
        "previous_champion": decision.champion_version,
        "gate": decision.to_dict(),
        "serving": serving,
        "fold_protocol": new.protocol,
        "tracking_uri": redact(uri),
        "registration_key": key,
        **lineage,
    }
    client.log_dict(run_id, registration, REGISTRATION_ARTIFACT)
    client.set_model_version_tag(cfg.model_name, version, GATE_TAG, f"{decision.alias}: {decision.reason}")
    return registration
