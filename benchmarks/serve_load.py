"""Serving latency under load: the real ``mlflow models serve`` on 127.0.0.1, concurrent new users.

    python benchmarks/serve_load.py --json benchmarks/results/serve_load.json
    python benchmarks/serve_load.py --model-uri models:/metarec/3 --duration 30 --workers 2 --threads 1

Starts the server for ``--model-uri`` (tracking store: ``MLFLOW_TRACKING_URI``, else the project's
``mlruns.db``), waits for ``/ping``, then ``--clients`` closed-loop clients (one keep-alive connection
each) send requests for ``--duration`` seconds: each a brand-new user with ``--ratings`` random ratings
of distinct known items, asking for the top 10 of every other item (the default candidates). Reports
p50/p90/p99 latency, requests per second and counts per status class (plus connection errors); exits 1
on any 5xx or connection error. By default the server is exactly the README's ``mlflow models serve``
(one worker, torch's default threads). The clients run on the same machine as the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.io import write_json  # noqa: E402
from pipeline.paths import Paths  # noqa: E402
from pipeline.registry.register import tracking_uri  # noqa: E402

READY_TIMEOUT_S = 180
PAYLOADS_PER_CLIENT = 500


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_vocab(model_uri: str, uri: str) -> dict[str, Any]:
    """The vocabulary the served model was registered with (its ``vocab`` artifact)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    with tempfile.TemporaryDirectory() as folder:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder))
        [vocab] = local.glob("**/vocab.json")
        return json.loads(vocab.read_text())


def payloads(vocab: dict[str, Any], n: int, n_ratings: int, seed: int) -> list[bytes]:
    """``n`` request bodies, each a new user with ``n_ratings`` ratings of distinct items, k = 10."""
    rng = np.random.default_rng(seed)
    items = np.asarray([str(i) for i in vocab["item_ids"]])
    lo, hi = int(vocab["rating_min"]), int(vocab["rating_max"])
    bodies = []
    for k in range(n):
        rated = rng.choice(items.size, n_ratings, replace=False)
        stars = rng.integers(lo, hi + 1, n_ratings)
        ratings = [{"item_id": str(items[i]), "rating": float(r)} for i, r in zip(rated, stars, strict=True)]
        bodies.append(
            json.dumps({"inputs": [{"user_id": f"bench-{seed}-{k}", "ratings": ratings, "k": 10}]}).encode()
        )
    return bodies


def start_server(
    model_uri: str, uri: str, port: int, workers: int, threads: int | None, log: Path
) -> subprocess.Popen:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"  # mlflow execs uvicorn
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port), "-w", str(workers)]
    with log.open("w") as out:
        server = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop(server)
                raise RuntimeError(f"server not ready; its log:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.5)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def client(port: int, bodies: list[bytes], deadline: float, out: list[tuple[float, int]]) -> None:
    """Send ``bodies`` in turn until ``deadline``; append (seconds, status) per request, status 0 on an
    connection error (the connection is then reopened)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    k = 0
    while time.monotonic() < deadline:
        body = bodies[k % len(bodies)]
        k += 1
        start = time.perf_counter()
        try:
            conn.request("POST", "/invocations", body, headers)
            response = conn.getresponse()
            response.read()
            out.append((time.perf_counter() - start, response.status))
        except (OSError, http.client.HTTPException):
            out.append((time.perf_counter() - start, 0))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.close()


def run_load(port: int, bodies: list[list[bytes]], duration: float) -> tuple[list[tuple[float, int]], float]:
    results: list[list[tuple[float, int]]] = [[] for _ in bodies]
    deadline = time.monotonic() + duration
    start = time.perf_counter()
    threads = [
        threading.Thread(target=client, args=(port, b, deadline, r))
        for b, r in zip(bodies, results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [x for r in results for x in r], time.perf_counter() - start


def summarize(samples: list[tuple[float, int]], elapsed: float) -> dict[str, Any]:
    ok = np.array([s for s, status in samples if 200 <= status < 300]) * 1e3
    statuses = [status for _, status in samples]
    return {
        "requests": len(samples),
        "ok": int(ok.size),
        "4xx": sum(400 <= s < 500 for s in statuses),
        "5xx": sum(500 <= s < 600 for s in statuses),
        "connection_errors": statuses.count(0),
        "rps": len(samples) / elapsed,
        "p50_ms": float(np.percentile(ok, 50)) if ok.size else None,
        "p90_ms": float(np.percentile(ok, 90)) if ok.size else None,
        "p99_ms": float(np.percentile(ok, 99)) if ok.size else None,
        "max_ms": float(ok.max()) if ok.size else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-uri", default="models:/metarec@champion")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--ratings", type=int, default=10, help="ratings per new user")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (mlflow's default)")
    parser.add_argument(
        "--threads", type=int, help="torch threads per worker (default: torch's, one per core)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    uri = tracking_uri(Paths(Path.cwd()))
    vocab = model_vocab(args.model_uri, uri)
    bodies = [payloads(vocab, PAYLOADS_PER_CLIENT, args.ratings, args.seed + c) for c in range(args.clients)]
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "serve.log"
        started = time.perf_counter()
        server = start_server(args.model_uri, uri, port, args.workers, args.threads, log)
        ready_s = time.perf_counter() - started
        try:
            run_load(port, bodies, args.warmup)
            samples, elapsed = run_load(port, bodies, args.duration)
        finally:
            stop(server)
    result = {
        "model_uri": args.model_uri,
        "items": len(vocab["item_ids"]),
        "clients": args.clients,
        "ratings_per_user": args.ratings,
        "workers": args.workers,
        "torch_threads": args.threads or "default",
        "duration_s": args.duration,
        "server_ready_s": ready_s,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        **summarize(samples, elapsed),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(result, args.json)
    if result["5xx"] or result["connection_errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
