"""Memory Maze (Pasukonis et al. 2022): task `memorymaze_<size>`, size in 9x9, 11x11, 13x13, 15x15.

Built from memory_maze's dm_env tasks (its gym registrations need the old gym API, which breaks on
numpy 2). Observation {'image': uint8 (S, S, 3)} with the target colour drawn as the image border,
as in the paper's image-only setting; actions OneHot(6): noop, forward, left, right,
forward+left, forward+right. Control runs at 4 Hz; episodes last 1000/2000/3000/4000 steps by
size and end truncated, never terminated. Reward +1 per target reached.

`MemoryMaze(..., global_obs=True)` (the offline probing datasets, memory/collect.py) also returns the
hidden state in `info` at reset and every step, in memory_maze's conventions: `maze_layout` uint8
(S, S), 1 = free cell, row 0 at the bottom (layout[y, x]); `agent_pos` (2,) in cell units, (0, 0)
the bottom-left corner (cell (x, y) spans [x, x+1) x [y, y+1)); `agent_dir` (2,) unit heading
vector; `targets_pos` (K, 2) object positions, same units; `targets_vec` (K, 2) object positions
relative to the agent in its own frame: (distance to its right, distance ahead). The image is the
same as without it.
"""
from __future__ import annotations

import contextlib
import io
import logging

import gymnasium
import numpy as np

from envs.dm_adapter import DmEnv
from envs.headless import gl_import
from envs.wrappers import OneHotAction

SIZES = ("9x9", "11x11", "13x13", "15x15")
ACTION_REPEAT = 1  # the task already acts at 4 Hz
STEPS = {"9x9": 1000, "11x11": 2000, "13x13": 3000, "15x15": 4000}  # agent steps per episode
STATE_KEYS = ("maze_layout", "agent_pos", "agent_dir", "targets_pos", "targets_vec")


def names() -> list[str]:
    """Valid sizes, e.g. '9x9'."""
    return list(SIZES)


def make(name: str, *, seed: int, image_size: int, fast_render: bool) -> gymnasium.Env:
    """A `name`-sized memory maze seeded with `seed`; fast_render is accepted and has no effect
    (rendering is ~20% of a step here; the Python contact loop of the target props dominates)."""
    del fast_render
    return OneHotAction(MemoryMaze(name, seed=seed, image_size=image_size))


def _build(size: str, seed: int, image_size: int, global_obs: bool = False):
    # `import memory_maze` imports the old gym, which prints a deprecation notice to stderr; we only
    # use memory_maze's dm_env tasks, never gym.
    with contextlib.redirect_stderr(io.StringIO()):
        tasks = gl_import("memory_maze.tasks")

    absl = logging.getLogger("absl")
    if not any(isinstance(f, _NoFreeJointFilter) for f in absl.filters):
        absl.addFilter(_NoFreeJointFilter())
    factory = getattr(tasks, f"memory_maze_{size}")
    return factory(seed=seed, image_only_obs=not global_obs, global_observables=global_obs,
                   camera_resolution=image_size)


class _NoFreeJointFilter(logging.Filter):
    """Drops the warning dm_control logs at every memory-maze episode start (the targets are
    fixed props); other absl messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Cannot set velocity on Entity with no free joint" not in record.getMessage()


class MemoryMaze(DmEnv):
    """One memory maze. reset(seed=s) rebuilds the task, because the maze layouts come from a
    labmaze generator that is seeded only at construction."""

    def __init__(self, size: str, *, seed: int, image_size: int, global_obs: bool = False):
        self._size, self._image_size, self._global = size, image_size, global_obs
        self._built_seed, self._fresh = seed, True
        self.state: dict[str, np.ndarray] = {}  # global_obs: the latest hidden state (module docstring)
        super().__init__(_build(size, seed, image_size, global_obs), image_size, name=f"memorymaze_{size}")
        self.action_space = gymnasium.spaces.Discrete(int(self._env.action_spec().num_values))

    def reset(self, *, seed=None, options=None):
        result = super().reset(seed=seed, options=options)
        self._fresh = False
        return result

    def _reseed(self, seed: int) -> None:
        if self._fresh and seed == self._built_seed:
            return  # built with this seed and not reset yet: building again (~5 s) gives the same env
        self._env.close()
        self._env, self._built_seed = _build(self._size, seed, self._image_size, self._global), seed

    def _image(self, time_step) -> np.ndarray:
        return time_step.observation["image"] if self._global else time_step.observation

    def _info(self, time_step) -> dict:
        if not self._global:
            return {}
        self.state = {k: np.array(time_step.observation[k]) for k in STATE_KEYS}
        return dict(self.state)

    def _dm_action(self, action):
        return int(action)
