"""Shared by the registry, promotion and serving tests: a tiny planted feature set, the files ``register``
reads, and a real ``mlflow models serve`` process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.features.categorical import encode_users
from pipeline.features.store import FeatureSet, save_feature_set
from pipeline.meta.learner import MetaLearner
from pipeline.meta.learners import Learner
from pipeline.params import Params
from pipeline.paths import Paths
from pipeline.registry.register import register

N_USERS, N_ITEMS = 60, 24
LIKES_A = np.arange(0, 12)
"""Half the planted users like items 0-11 and dislike 12-23; the other half the reverse."""
TRAIN_CONFIG = {
    "model": "melu",
    "embedding_dim": 8,
    "hidden": [16, 16],
    "inner_steps": 3,
    "inner_lr": 0.3,
    "outer_lr": 1e-2,
    "meta_batch": 10,
    "epochs": 10,
    "max_support": 16,
    "query_size": 4,
    "device": "cpu",
    "lr_schedule": "constant",
    "item_dropout": 0.0,
}
"""Pinned beyond the defaults, so that the planted tastes are learnt in a few seconds whatever they are."""
FOLDS = 3


def item_id(index: int) -> str:
    return str(1000 + index)


def title(index: int) -> str:
    return f"Film {index} ({1980 + index})"


def tiny_feature_set(seed: int = 0) -> FeatureSet:
    """Users with real attribute codes (``encode_users``); ratings 4-5 on the liked half, 1-2 on the other."""
    rng = np.random.default_rng(seed)
    users = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(N_USERS)],
            "age": rng.integers(15, 60, N_USERS),
            "gender": rng.choice(["F", "M"], N_USERS),
            "occupation": rng.choice(["artist", "doctor", "student"], N_USERS),
        }
    )
    encoded = encode_users(users)
    user_rows, item_rows, ratings = [], [], []
    for u in range(N_USERS):
        items = rng.choice(N_ITEMS, 14, replace=False)
        liked = np.isin(items, LIKES_A) == (u % 2 == 0)
        user_rows.append(np.full(len(items), u))
        item_rows.append(items)
        ratings.append(np.where(liked, rng.choice([4, 5], len(items)), rng.choice([1, 2], len(items))))
    user = np.concatenate(user_rows).astype(np.int32)
    item = np.concatenate(item_rows).astype(np.int32)
    rating = np.concatenate(ratings).astype(np.float32)
    is_query = np.zeros(len(user), bool)
    for u in range(N_USERS):
        is_query[rng.choice(np.flatnonzero(user == u), 4, replace=False)] = True
    vocab = {
        "user_ids": users["user_id"].tolist(),
        "item_ids": [item_id(i) for i in range(N_ITEMS)],
        "item_titles": [title(i) for i in range(N_ITEMS)],
        "user_fields": encoded.fields,
        "user_vocab": encoded.vocab,
        "user_bins": encoded.bins,
        "item_fields": ["decade"],
        "item_vocab": {"decade": ["1980", "1990"]},
        "multi_vocab": ["g0", "g1", "g2"],
        "text_model": "random",
        "rating_min": 1.0,
        "rating_max": 5.0,
    }
    return FeatureSet(
        user_cats=encoded.codes,
        item_cats=rng.integers(0, 3, (N_ITEMS, 1)).astype(np.int64),
        item_multi=(rng.random((N_ITEMS, 3)) < 0.4).astype(np.float32),
        item_text=rng.normal(size=(N_ITEMS, 8)).astype(np.float32),
        vocab=vocab,
        ratings={
            "user_index": user,
            "item_index": item,
            "rating": rating,
            "timestamp": np.arange(len(user), dtype=np.int64),
        },
        tasks={"user_index": user, "item_index": item, "rating": rating, "is_query": is_query},
    )


def cv_result(
    meta_mae: float,
    per_fold: list[float] | None = None,
    seed: int = 42,
    weighting: str = "user",
) -> dict:
    """A ``cv.json`` as ``evaluate`` writes it; per-fold MAEs default to ``meta_mae`` -0.02, +0.02, 0."""
    folds = per_fold if per_fold is not None else [meta_mae - 0.02, meta_mae + 0.02, meta_mae]
    cv = {
        "scenarios": {
            "new_user": {
                "meta": {
                    "mae": {"mean": meta_mae, "std": 0.02},
                    "rmse": {"mean": meta_mae + 0.2, "std": 0.02},
                },
                "global_mean": {"mae": {"mean": 0.95, "std": 0.01}},
            },
            "warm": {"meta": {"mae": {"mean": 0.70, "std": 0.01}}},
        },
        "protocol": "kfold",
        "folds": len(folds),
        "support_size": 5,
        "seed": seed,
        "weighting": weighting,
        "per_fold": {"new_user": {"meta": {"mae": folds, "rmse": [v + 0.2 for v in folds]}}},
    }
    return cv


def per_user_result(mae: dict[str, float]) -> dict:
    """A ``per_user.json`` as ``evaluate`` writes it: the meta model's new_user MAE per user id."""
    return {"new_user": {"meta": {"mae": mae}}}


def write_cv(
    paths: Paths, meta_mae: float, per_user: dict[str, float] | None = None, **kwargs: object
) -> None:
    """``cv.json`` and ``per_user.json`` (no users unless ``per_user``), as ``evaluate`` writes them."""
    paths.metrics.mkdir(parents=True, exist_ok=True)
    paths.cv_metrics.write_text(json.dumps(cv_result(meta_mae, **kwargs)))  # type: ignore[arg-type]
    paths.per_user_values.parent.mkdir(parents=True, exist_ok=True)
    paths.per_user_values.write_text(json.dumps(per_user_result(per_user or {})))


def stage_inputs(root: Path, learner: Learner, fs: FeatureSet) -> Paths:
    """A project root holding what ``register`` reads: the model, the feature set, cv.json, dvc.lock."""
    paths = Paths(root)
    learner.save(paths.model)
    save_feature_set(fs, paths.features)
    write_cv(paths, 0.80)
    paths.shots_metrics.write_text(json.dumps({"scenario": "new_user", "metric": "mae", "models": {}}))
    paths.evaluation_report.mkdir(parents=True)
    (paths.evaluation_report / "report.md").write_text("# Evaluation\n")
    paths.source.mkdir(parents=True)
    manifest = {"files": {}, "layout": "synthetic", "source": "synthetic"}
    (paths.source / "manifest.json").write_text(json.dumps(manifest) + "\n")
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  ingest:\n    cmd: metarec ingest\n    outs:\n"
        "    - path: data/ingested\n      hash: md5\n      md5: 0f1e2d3c4b5a69788796a5b4c3d2e1f0.dir\n"
        "      size: 123\n      nfiles: 3\n  features:\n    cmd: metarec features\n    outs:\n"
        "    - path: data/features\n      hash: md5\n      md5: ffff.dir\n"
    )
    return paths


def git_repo(root: Path) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=root, check=True)


def ratings(liked: np.ndarray, disliked: np.ndarray) -> list[dict]:
    return [{"item_id": item_id(i), "rating": 5.0} for i in liked] + [
        {"item_id": item_id(i), "rating": 1.0} for i in disliked
    ]


A_USER = ratings(np.array([0, 1, 2]), np.array([12, 13, 14]))
B_USER = ratings(np.array([12, 13, 14]), np.array([0, 1, 2]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    """POST ``body``; the status and the response text, for error statuses too."""
    request = urllib.request.Request(url, body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@contextmanager
def http_server(
    command: list[str],
    port: int,
    env: dict[str, str],
    log_path: Path,
    ready: str = "/ping",
    timeout_s: float = 120,
) -> Iterator[str]:
    """``command`` (a server on ``port`` of 127.0.0.1) run in ``log_path``'s folder; yields the base URL
    once ``ready`` answers, stops the whole process group afterwards."""
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command,
            env=env,
            cwd=log_path.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready}", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"server not ready:\n{log_path.read_text()[-3000:]}") from None
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}"
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=30)


@contextmanager
def model_server(model_uri: str, tracking_uri: str, log_path: Path, timeout_s: float = 120) -> Iterator[str]:
    """``mlflow models serve`` of ``model_uri`` on a free loopback port; yields the base URL once it
    answers ``/ping``."""
    port = free_port()
    # mlflow execs ``uvicorn`` by name: the venv's bin must be on PATH even when it is not activated
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    with http_server(
        [*cmd, "-h", "127.0.0.1", "-p", str(port)], port, env, log_path, timeout_s=timeout_s
    ) as url:
        yield url


def registered_champion(root: Path) -> dict:
    """A project at ``root`` whose store (``root/mlruns.db``) holds a tiny model meta-trained on the planted
    tastes, registered by the register stage as ``metarec@champion``; the registration record."""
    fs = tiny_feature_set()
    learner = MetaLearner.create(TRAIN_CONFIG, fs, seed=0, device=torch.device("cpu"))
    learner.fit(fs, progress=False)
    paths = stage_inputs(root, learner, fs)
    git_repo(root)
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        registration = register(Params(), paths)
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    assert registration["alias"] == "champion"
    return registration
