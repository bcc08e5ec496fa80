"""Wrappers that give every env family one interface (see `envs.make_env` for the stack order).

Observation contract after `EpisodeFlags` (the outermost wrapper):
    image        uint8 (H, W, 3)   (every family but the vector ones, dmc_proprio and bsuite)
    <vector>     float32 (n,)      (dmc, dmc_proprio: the task's proprioception; bsuite)
    is_first     bool ()   True only on the observation returned by reset()
    is_last      bool ()   True on the last observation of an episode (terminated or truncated)
    is_terminal  bool ()   True only when the episode ended by termination (no bootstrap)
plus any family extras (e.g. MiniWorld-Sign's `goal`).
"""
from __future__ import annotations

import gymnasium
import numpy as np

from envs.spaces import OneHot

FLAG_KEYS = ("is_first", "is_last", "is_terminal")


class OneHotAction(gymnasium.ActionWrapper):
    """Discrete(n) env -> OneHot(n) actions; the inner env receives argmax(action) as an int."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        if not isinstance(env.action_space, gymnasium.spaces.Discrete):
            raise TypeError(f"OneHotAction needs a Discrete action space, got {env.action_space}")
        self._start = int(env.action_space.start)
        self.action_space = OneHot(int(env.action_space.n))

    def action(self, action) -> int:
        action = np.asarray(action)
        if action.shape != self.action_space.shape:
            raise ValueError(f"expected a one-hot action of shape {self.action_space.shape}, got {action.shape}")
        return self._start + int(np.argmax(action))


class ActionRepeat(gymnasium.Wrapper):
    """Repeat each action `repeat` times, summing rewards; stops early when the episode ends.

    An env whose images are expensive may define a bool attribute `skip_image` on its unwrapped
    env: while it is True, step() may return the previous image instead of rendering, except on the
    step that ends the episode. We set it for every repeat but the last, so dmc renders once per
    agent step instead of `repeat` times.
    """

    def __init__(self, env: gymnasium.Env, repeat: int):
        super().__init__(env)
        if repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {repeat}")
        self.repeat = repeat

    def step(self, action):
        inner = self.env.unwrapped
        lazy = hasattr(inner, "skip_image")
        total = 0.0
        try:
            for i in range(self.repeat):
                if lazy:
                    inner.skip_image = i < self.repeat - 1
                obs, reward, terminated, truncated, info = self.env.step(action)
                total += float(reward)
                if terminated or truncated:
                    break
        finally:
            if lazy:
                inner.skip_image = False
        return obs, total, terminated, truncated, info


class EpisodeFlags(gymnasium.Wrapper):
    """Add is_first / is_last / is_terminal to the dict observation (shapes: scalar bool).

    It must sit outside TimeLimit so that a time-limit truncation also sets is_last.
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        inner = env.observation_space
        if not isinstance(inner, gymnasium.spaces.Dict):
            raise TypeError(f"EpisodeFlags needs a Dict observation, got {inner}")
        flag = gymnasium.spaces.Box(low=0, high=1, shape=(), dtype=bool)
        self.observation_space = gymnasium.spaces.Dict({**inner.spaces, **{k: flag for k in FLAG_KEYS}})

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._flag(obs, first=True, last=False, terminal=False), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        terminated, truncated = bool(terminated), bool(truncated)
        obs = self._flag(obs, first=False, last=terminated or truncated, terminal=terminated)
        return obs, float(reward), terminated, truncated, info

    @staticmethod
    def _flag(obs: dict, first: bool, last: bool, terminal: bool) -> dict:
        # 0-d arrays, as the Box(shape=()) spaces say (np.bool_ scalars fail Box.contains checks).
        return {**obs, "is_first": np.array(first), "is_last": np.array(last), "is_terminal": np.array(terminal)}


class SeedOnFirstReset(gymnasium.Wrapper):
    """Seed the env (and its action space) from the construction seed on the first reset.

    So `make_env(task, seed=s)` followed by `reset()` equals `reset(seed=s)`: an env built with the
    same seed replays the same episodes, and vector workers need not pass seeds to reset().
    """

    def __init__(self, env: gymnasium.Env, seed: int):
        super().__init__(env)
        self._seed = int(seed)
        self._seeded = False

    def reset(self, *, seed=None, options=None):
        if seed is None and not self._seeded:
            seed = self._seed
        if seed is not None:
            self.action_space.seed(seed)
            self._seeded = True
        return self.env.reset(seed=seed, options=options)
