"""Memory a run will need, estimated before anything is built, against what the machine has.

A lower bound, so a run it refuses could never have fit (and one it lets through still may not):

    replay / dataset   steps held x bytes per step (uint8 image, action, reward, flags, indices)
    model              weights counted on the meta device (nothing allocated) x 16 bytes:
                       float32 weights, gradients and AdamW's two moments
    batch              per frame of one update: the float image, its reconstruction and that
                       reconstruction's gradient, plus the first encoder / last decoder stage;
                       offline: a pass is offline.chunk steps (0: the whole window), plus the
                       rows' uint8 frames (batch x window)

On a CUDA device the model and batch are compared with the GPU's memory, the replay with the RAM.
"""
from __future__ import annotations

import math
import os

import torch

from common.cli import fail

GB = 1e9


def ram_bytes() -> int:
    """Physical memory of this machine."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def parameter_count(build) -> int:
    """Weights of the model `build()` returns (the agent online, the world model offline), counted
    without allocating them: it runs on the meta device. The caller builds it for one 64x64 image
    observation and act_dim 1 (a few input rows: close enough); where the config's observation
    keys (wm.cnn_keys / wm.mlp_keys) pick vectors only, the env's spaces are not known yet: 0
    (vector models are small; the env's own check of the keys comes when it is built)."""
    from common.config import ConfigError
    try:
        with torch.device("meta"):
            model = build(torch.device("meta"))
    except ConfigError:
        return 0
    return sum(p.numel() for p in model.parameters())


def replay_steps(config, ranks: int = 1) -> int:
    """Size of one process's replay ring: replay.capacity, or, when fewer, room for everything this
    process can collect, so that a capacity beyond the run is never allocated and nothing is
    evicted that a capacity-sized ring would keep. config.steps counts env steps of all ranks; the
    replay holds one entry per env step plus each start's reset observation (one per env at the
    start and again at every resume, so twice the steps bounds any number of resumes)."""
    return max(1, min(config.replay.capacity,
                      2 * math.ceil(config.steps / ranks) + config.env.envs))


def estimate(config, batch: int, ranks: int, build) -> dict[str, float]:
    """Bytes this process needs at least: {'replay' or 'dataset', 'model', 'batch'}; build(device)
    builds the model (see parameter_count)."""
    S, m = config.env.image_size, config.memory
    frame = 3 * S * S
    stages = 2 * (S // 2) ** 2 * config.wm.cnn_depth  # first encoder + last decoder stage
    per_frame = 4.0 * (3 * frame + 2 * stages)
    if config.mode == "offline":
        length = 3 * m.width + 31 if m.env == "distracting_memory" else m.context + m.query
        window = config.offline.window or length
        held = {"dataset": float(m.episodes) * length * (frame + 64)}
        # the rows' frames, and one backward pass over offline.chunk steps (0: the whole row)
        activations = float(batch) * window * (frame + per_frame * (config.offline.chunk or window)
                                               / window)
    else:
        steps = min(config.replay.capacity, math.ceil(config.steps / ranks))  # at least held
        held = {"replay": float(steps) * (frame + 64)}
        activations = float(batch) * config.train.seq_len * per_frame
    return {**held, "model": 16.0 * parameter_count(build), "batch": activations}


LOWER = {"replay": "replay.capacity", "dataset": "memory.episodes or memory.context/query",
         "model": "wm.d_model, wm.units, wm.cnn_depth or ac.units",
         "batch": "train.batch_size, train.seq_len, offline.window or offline.chunk"}


def _gb(n: float) -> str:
    return f"{n / GB:.0f} GB" if n >= 10 * GB else f"{n / GB:.2g} GB"


def check_memory(config, device, batch: int, build, ranks: int = 1) -> None:
    """Exit with one line when the estimate exceeds this machine's memory. build(device): the
    model of this run (the agent online, the world model offline), see parameter_count."""
    need = estimate(config, batch, ranks, build)
    places = [("memory", ram_bytes(), list(need))]
    if torch.device(device).type == "cuda":
        gpu = torch.cuda.get_device_properties(torch.device(device)).total_memory
        places = [("memory", ram_bytes(), [k for k in need if k in ("replay", "dataset")]),
                  ("GPU memory", gpu, ["model", "batch"])]
    for where, have, parts in places:
        total = sum(need[k] for k in parts)
        if total > have:
            big = max(parts, key=need.get)
            terms = ", ".join(f"{k} {_gb(need[k])}" for k in parts)
            fail(f"this run needs at least {_gb(total)} of {where} ({terms}) but this machine "
                 f"has {_gb(have)}: lower {LOWER[big]}")
