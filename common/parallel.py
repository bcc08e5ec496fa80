"""Data parallelism with torch.distributed: one process per device, launched by torchrun.

    torchrun --nproc_per_node N main.py --configs ...     # N processes ("ranks") on this machine

Every rank holds a full copy of the agent, collects from its own env workers into its own replay
shard and trains on its own batch. After each backward the gradients are averaged over ranks
(`average_gradients`), before clipping and the optimiser step, so all ranks keep identical
parameters; decisions that skip a step are agreed by all ranks (`all_true`), so no rank waits
in a collective that another rank skipped.

Without torchrun (no WORLD_SIZE in the environment, or WORLD_SIZE=1) nothing here creates a process
group and every helper is the identity: rank 0 of 1, gradients untouched, flags as given.
Backend: nccl for CUDA devices, gloo for the CPU.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

from common.cli import fail


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the only rank that writes TensorBoard, metrics.jsonl, videos and checkpoints."""
    return rank() == 0


def launched() -> bool:
    """True when started by torchrun (or any env:// launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the process group when launched with several processes; returns this rank's device
    (cuda:<LOCAL_RANK> when `device` is a CUDA device). A single process returns `device` as is."""
    if not launched() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def close(wait: bool = False) -> None:
    """Leave the process group. wait (a normal end): first wait until every rank gets here, so no
    rank tears its connections down while another still works (rank 0 evaluates and writes alone;
    a gloo teardown racing a live peer aborted a rank once in CI). Not after an error: the other
    ranks may never arrive (torchrun stops them)."""
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective buffers live: the current CUDA device under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def batch_size(config) -> int:
    """Sequences per update of this rank: train.batch_size, or train.global_batch split evenly."""
    ranks, total = world_size(), config.train.global_batch
    if total and total % ranks:
        fail(f"train.global_batch ({total}) must be a multiple of the number of processes "
             f"({ranks})")
    return total // ranks if total else config.train.batch_size


def rank_seed(seed: int, rank_: int | None = None) -> int:
    """The seed of a rank's env workers, replay sampler and sampling noise. Rank 0 keeps `seed` (a
    single process is unchanged); rank r > 0 gets an independent stream SeedSequence(seed).spawn
    child r, distinct from the per-worker seeds SeedSequence((seed, i)) of envs.env_seed."""
    r = rank() if rank_ is None else rank_
    if r == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(r,)).generate_state(1)[0])


def shard(indices):
    """This rank's contiguous slice of `indices` (a sequence or array). Every rank gets the same
    count, len // world_size, so ranks run the same number of steps; the remainder is dropped."""
    n = len(indices) // world_size()
    return indices[rank() * n:(rank() + 1) * n]


@torch.no_grad()
def average_gradients(params) -> None:
    """Replace each parameter's .grad by its mean over ranks, in one flat all_reduce.

    A parameter without a gradient on this rank contributes zeros; it gets a gradient afterwards
    iff some rank had one (a has-gradient flag per parameter travels in the same buffer), so every
    rank's optimiser sees the same set of gradients. Call after backward, before clipping."""
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    device = _comm_device()
    flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(device)
            for p in params]
    has = torch.tensor([p.grad is not None for p in params], dtype=flat[0].dtype, device=device)
    buffer = torch.cat(flat + [has])  # (sum of numels + P,)
    dist.all_reduce(buffer)
    buffer /= world_size()
    offset = 0
    for p, v in zip(params, flat):
        grad = buffer[offset:offset + v.numel()].view_as(p).to(p.device)
        offset += v.numel()
        p.grad = grad.clone() if p.grad is None else p.grad.copy_(grad)
    for p, had in zip(params, buffer[offset:].tolist()):
        if had == 0:
            p.grad = None  # no rank produced one: the optimiser skips it as in one process


def all_true(flag) -> bool:
    """True iff `flag` (bool or 0-d tensor) is true on every rank."""
    ok = bool(flag)
    if world_size() == 1:
        return ok
    t = torch.tensor(1.0 if ok else 0.0, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


all_reduce_flag = all_true  # the name memory/train.py may look for


def all_gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every rank's `x` (same shape everywhere) concatenated along dim 0, in rank order:
    (n, ...) -> (world_size * n, ...). The identity in a single process. No gradient."""
    if world_size() == 1:
        return x
    buf = x.detach().to(_comm_device()).contiguous()
    parts = [torch.empty_like(buf) for _ in range(world_size())]
    dist.all_gather(parts, buf)
    return torch.cat(parts).to(x.device)


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank (identical start, as DDP does)."""
    if world_size() == 1:
        return
    device = _comm_device()
    for t in module.state_dict().values():
        buf = t.to(device)
        dist.broadcast(buf, 0)
        t.copy_(buf)


def gather_lists(values: dict[str, list]) -> dict[str, list]:
    """Merge {name: [values]} from every rank (for logging): lists of a name are concatenated."""
    if world_size() == 1:
        return values
    parts = [None] * world_size()
    dist.all_gather_object(parts, values)
    merged: dict[str, list] = {}
    for part in parts:
        for key, vals in part.items():
            merged.setdefault(key, []).extend(vals)
    return merged
