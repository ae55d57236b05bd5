"""The ``train`` stage worker: meta-train on every user of a FeatureSet, on one process or under torchrun.

    python -m pipeline.training.train --features DIR --config CONFIG.json --out DIR [--checkpoints DIR]
    torchrun --standalone --nproc_per_node=N -m pipeline.training.train ...

Rank and world size come from the environment. The tasks of each meta-batch are split across ranks and
their gradients summed, so N processes train exactly the model one process would at the same global
meta-batch and seed. Rank 0 writes checkpoints every ``checkpoint_every`` meta-steps and, at the end,
the model (the learner's ``save`` format) with ``history.json``. On start the newest valid checkpoint of
the same run is resumed, so ``torchrun --max-restarts=K`` survives a killed worker.

Fault injection for tests: ``METAREC_TEST_CRASH_AT_STEP=k`` makes rank ``METAREC_TEST_CRASH_RANK``
(default 1) exit abruptly after meta-step k, on torchrun's first attempt only; with
``METAREC_TEST_CRASH_MODE=raise`` it raises a RuntimeError instead (a traceback of its own).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch.distributed.elastic.multiprocessing.errors import record

from pipeline.features.store import FeatureSet, load_feature_set
from pipeline.io import atomic_dir
from pipeline.meta.config import TrainConfig
from pipeline.meta.learners import create_learner
from pipeline.meta.loop import TrainState
from pipeline.training import checkpoint, distributed

logger = logging.getLogger("pipeline.training.train")

HISTORY = "history.json"
CRASH_STEP_ENV = "METAREC_TEST_CRASH_AT_STEP"
CRASH_RANK_ENV = "METAREC_TEST_CRASH_RANK"
CRASH_MODE_ENV = "METAREC_TEST_CRASH_MODE"
# Changing these never changes the trained model, so a checkpoint stays valid across them.
RUNTIME_ONLY = ("nproc", "nnodes", "rdzv_endpoint", "device", "checkpoint_every", "impl", "max_restarts")


def fingerprint(config: TrainConfig, fs: FeatureSet, seed: int) -> str:
    """Identity of a training run: config (minus runtime-only fields), seed, and the task data."""
    digest = hashlib.sha256()
    relevant = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_ONLY}
    digest.update(json.dumps({"config": relevant, "seed": seed}, sort_keys=True).encode())
    for name in ("user_index", "item_index", "rating", "is_query"):
        digest.update(np.ascontiguousarray(fs.tasks[name]).tobytes())
    for arr in (fs.user_cats, fs.item_cats, fs.item_multi, fs.item_text):
        digest.update(np.ascontiguousarray(arr).tobytes())
    return digest.hexdigest()


def run(features: Path, config: dict[str, Any], out: Path, checkpoints: Path | None, seed: int) -> list[dict]:
    """Train on this process's share; returns the history (rank 0 also writes ``out``)."""
    env = distributed.DistEnv.from_environ()
    cfg = TrainConfig.from_dict(config)
    device = distributed.setup(env, cfg.device)
    try:
        fs = load_feature_set(features)
        learner = create_learner(cfg, fs, seed, device=device)
        sampler: Any = learner.sampler(fs)  # the learner's own kind of sampler
        run_id = fingerprint(cfg, fs, seed)
        state = TrainState()
        ckpt = checkpoint.load_latest(checkpoints, run_id, device) if checkpoints else None
        if ckpt is not None:
            state = checkpoint.restore(learner, ckpt)
            if env.is_main:
                logger.info("resumed from %s (meta-step %d)", ckpt.path, state.step)
        elif env.distributed:
            distributed.broadcast_parameters(learner.meta_parameters())

        def on_checkpoint(s: TrainState) -> None:
            if env.is_main and checkpoints is not None:
                checkpoint.save_checkpoint(checkpoints, learner, s, run_id)

        t0 = time.perf_counter()
        state = learner.train(
            sampler,
            state,
            rank=env.rank,
            world_size=env.world_size,
            reduce=distributed.all_reduce_sum if env.distributed else None,
            checkpoint_every=cfg.checkpoint_every,
            on_checkpoint=on_checkpoint,
            on_step=_fault_injection(env),
            progress=env.is_main,
        )
        if env.is_main:
            with atomic_dir(out) as tmp:
                learner.write(tmp)
                (tmp / HISTORY).write_text(json.dumps(state.history, indent=2) + "\n")
            logger.info(
                "trained %d meta-steps in %.1f s on %d process(es); model in %s",
                state.step,
                time.perf_counter() - t0,
                env.world_size,
                out,
            )
        distributed.barrier()
        return state.history
    finally:
        distributed.teardown()


def _fault_injection(env: distributed.DistEnv) -> Any:
    crash_at = os.environ.get(CRASH_STEP_ENV)
    first_attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0
    if crash_at is None or not first_attempt or env.rank != int(os.environ.get(CRASH_RANK_ENV, "1")):
        return None

    def crash(step: int) -> None:
        if step != int(crash_at):
            return
        if os.environ.get(CRASH_MODE_ENV) == "raise":
            raise RuntimeError(f"fault injection: rank {env.rank} raises at meta-step {step}")
        logger.error("fault injection: rank %d exits at meta-step %d", env.rank, step)
        os._exit(1)

    return crash


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.training.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--features", type=Path, required=True, help="FeatureSet folder (data/features)")
    parser.add_argument(
        "--config", type=Path, required=True, help="JSON of the train params (TrainParams fields)"
    )
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--checkpoints", type=Path, default=None, help="checkpoint folder (resume from it)")
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


@record
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        config = json.loads(args.config.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{args.config}: cannot read the train config: {exc}") from None
    if not isinstance(config, dict):
        raise SystemExit(f"{args.config}: expected a JSON object of train params")
    run(args.features, config, args.out, args.checkpoints, args.seed)


if __name__ == "__main__":
    main()
