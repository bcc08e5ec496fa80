"""Distracting Memory (Deng et al. 2023, Sec. 3.3): task `distracting_memory_<width>`, the hallway
length in cells: distracting_memory_100, distracting_memory_200, distracting_memory_400.

Layout, rules and the 64x64 observation are documented in envs/gridmemory.py (built on minigrid,
imported on first use so that `import envs` stays cheap). Actions OneHot(3): turn left, turn right,
forward. An episode ends (terminated) on an end square, reward 1 iff its colour is the cue's;
otherwise it is truncated after 3 * width + 30 steps.
"""
from __future__ import annotations

import gymnasium

ACTION_REPEAT = 1
WIDTHS = (100, 200, 400)


def names() -> list[str]:
    """Valid names: the paper's hallway widths, '100', '200', '400'."""
    return [str(w) for w in WIDTHS]


def make(name: str, *, seed: int, image_size: int, fast_render: bool) -> gymnasium.Env:
    """distracting_memory_<name>; seeding happens at reset."""
    del seed, fast_render
    from envs import gridmemory
    width = int(name)
    return gridmemory.build_distracting(width, max_steps=3 * width + 30, image_size=image_size)
