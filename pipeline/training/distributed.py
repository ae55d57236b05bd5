"""Process-group helpers: rank and world size from torchrun's environment, one all-reduce per meta-step."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from pipeline.meta.learner import resolve_device


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits; a plain ``python -m`` run is rank 0 of 1."""

    rank: int
    world_size: int
    local_rank: int

    @classmethod
    def from_environ(cls) -> DistEnv:
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(env: DistEnv, device_name: str, timeout_s: float = 600.0) -> torch.device:
    """Pick this rank's device (``cuda:LOCAL_RANK`` on GPUs) and join the group: NCCL on CUDA, gloo on CPU."""
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=timeout_s)
        device_id = device if device.type == "cuda" else None
        store = _attempt_store(timeout)
        if store is None:
            dist.init_process_group(backend, timeout=timeout, device_id=device_id)
        else:
            dist.init_process_group(
                backend,
                timeout=timeout,
                device_id=device_id,
                store=store,
                rank=env.rank,
                world_size=env.world_size,
            )
    return device


def _attempt_store(timeout: timedelta) -> dist.Store | None:
    """The torchrun agent's store, namespaced by restart attempt; None outside torchrun's shared store.

    torchrun (c10d rendezvous) hands workers its own store, which outlives a worker-group restart:
    without a fresh namespace the restarted group reads the dead group's addresses and hangs in
    its first connect.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"metarec/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", base)


def all_reduce_sum(flat: Tensor) -> None:
    """Sum ``flat`` over all ranks, in place."""
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)


def broadcast_parameters(tensors: list[Tensor]) -> None:
    """Make every rank start from rank 0's values (seeded alike they agree already; this guarantees it)."""
    for t in tensors:
        dist.broadcast(t.data, src=0)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
