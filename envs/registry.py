"""Env families, selected by the task string `<family>_<name>` (e.g. 'dmc_walker_walk').

To add a family: write a module with `make(name, *, seed, image_size, fast_render) -> gymnasium.Env`
(observation {'image': uint8 (S, S, 3), ...}; actions OneHot or Box(-1, 1)) and `names() -> list[str]`,
then add one line to FAMILIES. Family modules import their simulators lazily, so importing `envs`
stays cheap and headless setup runs first.
"""
from __future__ import annotations

import difflib
from typing import Callable, NamedTuple

import gymnasium

from envs import (bsuite, distracting_memory, dmc, memorymaze, minigrid, miniworld,
                  multi_doors_keys, rooms)


class Family(NamedTuple):
    make: Callable[..., gymnasium.Env]  # (name, *, seed, image_size, fast_render) -> env
    names: Callable[[], list[str]]      # valid names within the family
    action_repeat: int                  # default action repeat


FAMILIES: dict[str, Family] = {
    "miniworld": Family(miniworld.make, miniworld.names, miniworld.ACTION_REPEAT),
    "dmc": Family(dmc.make, dmc.names, dmc.ACTION_REPEAT),
    "dmc_proprio": Family(dmc.make_proprio, dmc.names, dmc.ACTION_REPEAT),
    "memorymaze": Family(memorymaze.make, memorymaze.names, memorymaze.ACTION_REPEAT),
    # Control that needs memory: minigrid_Memory<S> (pixels), bsuite_memory_len_<L> (a vector).
    "minigrid": Family(minigrid.make, minigrid.names, minigrid.ACTION_REPEAT),
    "bsuite": Family(bsuite.make, bsuite.names, bsuite.ACTION_REPEAT),
    # The paper's memory benchmarks (Sec. 3): rooms_<two|four|ten>[_teleport] (3D, MiniWorld),
    # distracting_memory_<100|200|400> and multi_doors_keys_<3|5|7> (2D, minigrid).
    "rooms": Family(rooms.make, rooms.names, rooms.ACTION_REPEAT),
    "distracting_memory": Family(distracting_memory.make, distracting_memory.names, distracting_memory.ACTION_REPEAT),
    "multi_doors_keys": Family(multi_doors_keys.make, multi_doors_keys.names, multi_doors_keys.ACTION_REPEAT),
}
ENV_FAMILIES: tuple[str, ...] = tuple(FAMILIES)


def task_choices(family: str) -> list[str]:
    """Every valid task string of one family, e.g. ['dmc_acrobot_swingup', ...]."""
    return [f"{family}_{name}" for name in FAMILIES[family].names()]


def parse_task(task: str) -> tuple[str, str]:
    """'dmc_ball_in_cup_catch' -> ('dmc', 'ball_in_cup_catch'); ValueError (one line) if unknown."""
    # Longest family first, because family names may contain '_' ('multi_doors_keys').
    for family in sorted(FAMILIES, key=len, reverse=True):
        if task.startswith(family + "_"):
            name = task[len(family) + 1:]
            valid = FAMILIES[family].names()
            if name not in valid:
                raise ValueError(f"unknown {family} task {task!r}; {_suggest(family, name, valid)}")
            return family, name
    family = task.split("_", 1)[0]
    raise ValueError(f"unknown env family {family!r} in task {task!r}; valid families: {', '.join(ENV_FAMILIES)} (task = <family>_<name>)")


def _suggest(family: str, name: str, valid: list[str]) -> str:
    """'choices: ...' for small families, else up to 5 close matches (all names if none is close)."""
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    if len(valid) <= 8 or not close:
        return "choices: " + ", ".join(f"{family}_{n}" for n in valid)
    return "close choices: " + ", ".join(f"{family}_{n}" for n in close) + f" (all: envs.task_choices({family!r}))"
