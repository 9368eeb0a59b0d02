"""MTDM data parallel under `torchrun`: process group, DDP wrapping, per-rank batch shards, metric averaging.

Every rank draws the same permutation of the fit rows (a generator of its own, seeded alike on all ranks) and
takes every world-th row of each batch, so one optimizer step sees the same global batch as a single process
would and DDP's gradient average is that batch's mean gradient. Validation rows are sharded the same way and
the ranks' log losses are averaged weighted by their row counts: the exact log loss of the whole valid day,
the same on every rank, so every rank takes the same early-stopping decision. Only rank 0 writes the run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist
from torch import nn

from gbmcvr.deep.batches import Tensors
from gbmcvr.errors import UserError


def launched_by_torchrun() -> bool:
    """Whether `torchrun` started this process (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


@dataclass(frozen=True)
class DataParallel:
    """This process's place in the process group and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    seed: int

    def wrap(self, models: list[nn.Module]) -> list[nn.Module]:
        """DistributedDataParallel around each model (forward/backward go through these; state stays in `models`)."""
        ids = [self.local_rank] if self.device.type == "cuda" else None
        return [nn.parallel.DistributedDataParallel(m, device_ids=ids, find_unused_parameters=True) for m in models]

    def batch_generator(self) -> torch.Generator:
        """The generator of the fit-row permutation: seeded alike on every rank, used for nothing else."""
        return torch.Generator().manual_seed(self.seed)

    def shard(self, idx: torch.Tensor) -> torch.Tensor | None:
        """This rank's rows of a global batch; None (on every rank alike) for a batch too small to share."""
        if len(idx) < self.world_size:
            return None
        return idx[self.rank :: self.world_size]

    def mean(self, value: float, weight: float) -> float:
        """The `weight`-weighted mean of `value` over the ranks (all_reduce of value * weight and weight)."""
        t = torch.tensor([value * weight, weight], dtype=torch.float64, device=self.reduce_device)
        dist.all_reduce(t)
        return float(t[0] / t[1])

    @property
    def reduce_device(self) -> torch.device:
        """Where all_reduce tensors live: the GPU under nccl, the CPU under gloo."""
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


@contextlib.contextmanager
def process_group(device: torch.device, seed: int) -> Iterator[DataParallel]:
    """Join the process group `torchrun` describes (nccl on CUDA, gloo on CPU); leave it on exit."""
    if not launched_by_torchrun():
        raise UserError(
            "--ddp needs the processes torchrun starts: launch with `torchrun --nproc_per_node N -m gbmcvr train mtdm ...`"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield DataParallel(dist.get_rank(), dist.get_world_size(), local_rank, device, seed)
    finally:
        dist.destroy_process_group()


def shard_rows(data: Tensors, parallel: DataParallel) -> Tensors:
    """This rank's rows (every world-th, from its rank) of a split's tensors."""
    part = slice(parallel.rank, None, parallel.world_size)
    return Tensors(*(getattr(data, f.name)[part] if getattr(data, f.name) is not None else None for f in fields(data)))


def mean_tasks(tasks: dict[str, dict[str, float]], weight: float, parallel: DataParallel) -> dict[str, dict]:
    """Per-task metrics averaged over the ranks in one all_reduce (a rank without a task's rows adds nothing)."""
    names = ("logloss", "auc")
    flat = [tasks[t].get(m, 0.0) if tasks[t] else 0.0 for t in tasks for m in names]
    weights = [weight if tasks[t] else 0.0 for t in tasks for _ in names]
    t = torch.tensor([v * w for v, w in zip(flat, weights, strict=True)] + weights, dtype=torch.float64)
    t = t.to(parallel.reduce_device)
    dist.all_reduce(t)
    t = t.cpu()
    n = len(flat)
    sums, totals = t[:n].tolist(), t[n:].tolist()
    out: dict[str, dict] = {}
    for i, task in enumerate(tasks):
        pairs = {m: sums[i * 2 + j] / totals[i * 2 + j] for j, m in enumerate(names) if totals[i * 2 + j] > 0}
        out[task] = pairs
    return out
