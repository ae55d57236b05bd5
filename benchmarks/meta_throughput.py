"""Meta-training throughput (tasks/s) of MeLU's loop, vmap and CUDA-graph implementations and of the
meta-learned fold-in, plus peak memory.

    python benchmarks/meta_throughput.py --device cpu --json benchmarks/results/meta_throughput_cpu.json
    python benchmarks/meta_throughput.py --device cuda --json benchmarks/results/meta_throughput_cuda.json

MeLU-sized problem: 32-d embeddings of 4 user fields, item id, 1 item field, genres and a 384-d text
projection (256 inputs) → 64 → 64 → 1; second-order MAML, 5 inner steps, support 64, query 10, adapting
the decision layers. ``foldin``: the meta-learned fold-in (``train.model: foldin``, params.yaml's
``train.foldin``: 32 factors, content MLP 128, ranking head on) on the same items and tasks: one ridge
solve per task and the ranking head's softmax over all items. One measured step is a full meta-step (meta-
gradient and Adam update) on a fixed, pre-built batch; tasks/s comes from the median step time (and the
best one), which keeps the numbers stable on a shared machine. Each (implementation, meta-batch) runs in
its own process, so peak memory is its own: peak resident set size on CPU (torch itself included), peak
allocated CUDA memory on CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.features.store import FeatureSet  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.meta.batching import pad_tasks  # noqa: E402
from pipeline.meta.foldin import FoldInBatch, FoldInLearner  # noqa: E402
from pipeline.meta.learner import MetaLearner  # noqa: E402

USER_CARDS, ITEM_CARDS, N_ITEMS, N_GENRES, TEXT_DIM = (8, 3, 22, 10), (9,), 1682, 18, 384
SUPPORT, QUERY = 64, 10
CONFIG = {
    "algorithm": "maml",
    "adapt": "decision",
    "embedding_dim": 32,
    "hidden": [64, 64],
    "inner_steps": 5,
    "inner_lr": 0.05,
    "outer_lr": 1e-3,
    "max_support": SUPPORT,
    "query_size": QUERY,
    "item_dropout": 0.0,
}


def melu_sized_feature_set(seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    vocab = {
        "user_fields": [f"u{k}" for k in range(len(USER_CARDS))],
        "user_vocab": {f"u{k}": [str(v) for v in range(c - 1)] for k, c in enumerate(USER_CARDS)},
        "item_fields": ["i0"],
        "item_vocab": {"i0": [str(v) for v in range(ITEM_CARDS[0] - 1)]},
        "rating_min": 1.0,
        "rating_max": 5.0,
    }
    return FeatureSet(
        user_cats=np.zeros((1, len(USER_CARDS)), np.int64),
        item_cats=rng.integers(0, ITEM_CARDS[0], (N_ITEMS, 1)),
        item_multi=(rng.random((N_ITEMS, N_GENRES)) < 0.1).astype(np.float32),
        item_text=rng.normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32),
        vocab=vocab,
        ratings={},
    )


def foldin_learner(meta_batch: int, device: str) -> FoldInLearner:
    config = {"model": "foldin", "foldin": {"batch": meta_batch}, "device": device}
    learner = FoldInLearner.create(config, melu_sized_feature_set(), seed=0)
    learner.tower.set_training_rows(np.arange(N_ITEMS), np.full(N_ITEMS, 3.5))
    return learner


def measure(
    impl: str, meta_batch: int, device: str, min_seconds: float, max_steps: int, bf16: bool
) -> dict[str, Any]:
    """Tasks/s of full meta-steps of one implementation at one meta-batch size (run in a fresh process)."""
    fs = melu_sized_feature_set()
    learner: MetaLearner | FoldInLearner
    if impl == "foldin":
        learner = foldin_learner(meta_batch, device)
    else:
        learner = MetaLearner.create(
            {**CONFIG, "impl": impl, "meta_batch": meta_batch, "device": device, "bf16": bf16}, fs, seed=0
        )
        learner.model.item_seen.fill_(True)
    rng = np.random.default_rng(1)
    items = [rng.choice(N_ITEMS, SUPPORT + QUERY, replace=False) for _ in range(meta_batch)]
    ratings = [rng.integers(1, 6, SUPPORT + QUERY).astype(np.float32) for _ in range(meta_batch)]
    users = np.stack([rng.integers(0, c, meta_batch) for c in USER_CARDS], axis=1)
    padded = pad_tasks(
        users,
        [i[:SUPPORT] for i in items],
        [r[:SUPPORT] for r in ratings],
        [i[SUPPORT:] for i in items],
        [r[SUPPORT:] for r in ratings],
    )
    batch: Any = padded
    if impl == "foldin":
        batch = FoldInBatch.of(padded, torch.zeros(N_ITEMS + 1, dtype=torch.bool), meta_batch * QUERY)
    cuda = learner.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(2 if cuda else 1):  # warm-up (and, for the graph, capture)
        learner.train_step(batch, meta_batch)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_steps and (len(times) < 3 or time.perf_counter() - start < min_seconds):
        t0 = time.perf_counter()
        learner.train_step(batch, meta_batch)
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > 60:  # the slowest configurations: three steps are enough
            break
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ) / 2**20
    return {
        "impl": impl + ("_bf16" if bf16 else ""),
        "meta_batch": meta_batch,
        "tasks_per_s": round(meta_batch / statistics.median(times), 1),
        "tasks_per_s_best": round(meta_batch / min(times), 1),
        "peak_mem_mb": round(peak, 1),
        "steps": len(times),
    }


def plan(device: str, batches: list[int], quick: bool, bf16: bool) -> list[tuple[str, int, bool]]:
    impls = ["loop", "vmap"] + (["graph"] if device == "cuda" else []) + ["foldin"]
    runs = [
        (impl, mb, False) for mb in batches for impl in impls if not (impl == "loop" and quick and mb > 32)
    ]
    if bf16 and device == "cuda":
        runs += [(impl, mb, True) for mb in batches for impl in ("vmap", "graph")]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="fewer meta-batch sizes, shorter timing")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast (CUDA only)")
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--meta-batches",
        type=int,
        nargs="+",
        default=None,
        help="meta-batch sizes (default: 32 256 2048; --quick: 32 256)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "META_BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    min_seconds, max_steps = (1.0, 50) if args.quick else (3.0, 200)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.meta_batches = args.meta_batches or ([32, 256] if args.quick else [32, 256, 2048])
    if args.worker:
        result = measure(
            args.worker[0], int(args.worker[1]), args.device, min_seconds, max_steps, args.worker_bf16
        )
        print("RESULT " + json.dumps(result), flush=True)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    results: list[dict[str, Any]] = []

    def save() -> None:  # after every measurement, so an interrupted run keeps what it measured
        write_json(
            {
                "device": device_name,
                "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "results": results,
            },
            args.json,
        )

    if args.device == "cpu":
        results += [
            {
                "impl": "graph",
                "meta_batch": mb,
                "tasks_per_s": None,
                "peak_mem_mb": None,
                "skipped": "CUDA graphs need a CUDA device",
            }
            for mb in args.meta_batches
        ]
    for impl, mb, bf16 in plan(args.device, args.meta_batches, args.quick, args.bf16):
        cmd = [
            sys.executable,
            __file__,
            "--device",
            args.device,
            "--json",
            str(args.json),
            "--worker",
            impl,
            str(mb),
            *(["--threads", str(args.threads)] if args.threads else []),
            *(["--quick"] if args.quick else []),
            *(["--worker-bf16"] if bf16 else []),
        ]
        done = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            result = {
                "impl": impl + ("_bf16" if bf16 else ""),
                "meta_batch": mb,
                "tasks_per_s": None,
                "peak_mem_mb": None,
                "error": " | ".join(tail),
            }
        else:
            result = json.loads(lines[-1][len("RESULT ") :])
        print(json.dumps(result), flush=True)
        results.append(result)
        save()


if __name__ == "__main__":
    main()
