"""BSuite's memory length task (Osband et al. 2020, 'memory_len'): task `bsuite_memory_len_<L>`.

L (the memory length) is one of bsuite's sweep: 1-10, 12, 14, 17, 20, 25, 30, 40, ..., 100. The
first observation (and the one after the first step, bsuite's MemoryChain reads it before counting
the step) shows a context bit c = +-1; later ones show only the time left; after L + 1 actions the
episode terminates with reward +1 if the last action equals the context bit, else -1. All other
rewards are 0, so a return > 0 is a success and a guess succeeds half the time (chance 0.5, mean
return 0). R2I (Samsami et al. 2024) reports longer solved lengths with S5 in DreamerV3 than
DreamerV3's RSSM on it.

Observation {'observation': float32 (3,)}: bsuite's (1, 3) array [time left 1 - t / L, query
(always 0 with one bit), context (+-1 at t = 0, else 0)], flattened; DreamerV3's dm_env adapter
also names it 'observation'. Actions OneHot(2). Seeding: reset(seed=s) rebuilds the MemoryChain
with seed s (bsuite seeds its generator only at construction).
"""
from __future__ import annotations

import gymnasium
import numpy as np

from envs.dm_adapter import DmEnv
from envs.wrappers import OneHotAction

ACTION_REPEAT = 1
# bsuite.experiments.memory_len.sweep (kept here so that parsing a task does not import bsuite,
# whose package __init__ imports pandas; tests/test_envs.py checks they agree)
LENGTHS = (*range(1, 11), 12, 14, 17, 20, 25, *range(30, 105, 10))


def names() -> list[str]:
    """Valid names: 'memory_len_<L>' for L in bsuite's sweep."""
    return [f"memory_len_{n}" for n in LENGTHS]


def memory_length(name: str) -> int:
    """'memory_len_<L>' -> L."""
    return int(name.removeprefix("memory_len_"))


def make(name: str, *, seed: int, image_size: int, fast_render: bool) -> gymnasium.Env:
    """bsuite memory_len with length L from `name`, seeded with `seed` (image_size, fast_render
    unused: the observation is a vector)."""
    del image_size, fast_render
    return OneHotAction(MemoryLen(memory_length(name), seed=seed))


def _chain(length: int, seed: int):
    from bsuite.environments.memory_chain import MemoryChain
    return MemoryChain(memory_length=length, num_bits=1, seed=seed)


class MemoryLen(DmEnv):
    """bsuite's MemoryChain with one bit as a gymnasium env; Discrete(2) actions."""

    def __init__(self, length: int, *, seed: int):
        self._length = length
        super().__init__(_chain(length, seed), image_size=1, name=f"bsuite_memory_len_{length}")
        self.observation_space = gymnasium.spaces.Dict(
            {"observation": gymnasium.spaces.Box(-1.0, 1.0, (3,), np.float32)})
        self.action_space = gymnasium.spaces.Discrete(2)

    def _reseed(self, seed: int) -> None:
        self._env = _chain(self._length, seed)  # cheap: a few numpy draws

    def _obs(self, time_step) -> dict:
        return {"observation": np.array(time_step.observation, np.float32).reshape(3)}

    def _dm_action(self, action):
        return int(action)
