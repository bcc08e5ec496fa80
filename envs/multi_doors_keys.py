"""Multi Doors Keys (Deng et al. 2023, Sec. 3.4): task `multi_doors_keys_<keys>`:
multi_doors_keys_3, multi_doors_keys_5, multi_doors_keys_7.

Layout, rules and the 64x64 observation (with its held-keys strip) are documented in
envs/gridmemory.py (built on minigrid, imported on first use so that `import envs` stays cheap).
Actions OneHot(5): turn left, turn right, forward, pick up, open. Episodes are truncated after
LENGTH frames, the default context + query of the dataset (400 + 600 [ours]: the paper imagines
>= 595 steps).
"""
from __future__ import annotations

import gymnasium

ACTION_REPEAT = 1
KEYS = (3, 5, 7)
LENGTH = 1000


def names() -> list[str]:
    """Valid names: the paper's key counts, '3', '5', '7'."""
    return [str(k) for k in KEYS]


def make(name: str, *, seed: int, image_size: int, fast_render: bool) -> gymnasium.Env:
    """multi_doors_keys_<name>; seeding happens at reset."""
    del seed, fast_render
    from envs import gridmemory
    return gridmemory.build_doors_keys(int(name), max_steps=LENGTH - 1, image_size=image_size)
