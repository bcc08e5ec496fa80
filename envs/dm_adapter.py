"""dm_env.Environment -> gymnasium.Env, shared by the dmc, memorymaze and bsuite families.

A subclass says how to reseed the dm_env and how to read the observation (by default one image;
it may convert actions);
this class maps dm_env's step types to gymnasium's (terminated, truncated):
    last() and discount == 0  -> terminated (true end, no bootstrap)
    last() and discount  > 0  -> truncated  (dm_env's own time limit)
"""
from __future__ import annotations

import dm_env
import gymnasium
import numpy as np

from envs.headless import gl_errors


class DmEnv(gymnasium.Env):
    """Observation {'image': uint8 (S, S, 3)} unless a subclass replaces `observation_space` and
    `_obs`; action space set by the subclass."""

    metadata = {"render_modes": []}
    skip_image = False  # envs.wrappers.ActionRepeat: True = step() may reuse the last observation

    def __init__(self, env: dm_env.Environment, image_size: int, name: str):
        self._env = env
        self._name = name
        self._last_obs = None
        self.observation_space = gymnasium.spaces.Dict(
            {"image": gymnasium.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)}
        )

    # --- what a subclass provides -------------------------------------------------------------
    def _reseed(self, seed: int) -> None:
        """Make the next dm_env reset a deterministic function of `seed`."""
        raise NotImplementedError

    def _image(self, time_step: dm_env.TimeStep) -> np.ndarray:
        """The uint8 (S, S, 3) image for this time step."""
        raise NotImplementedError

    def _obs(self, time_step: dm_env.TimeStep) -> dict:
        """The observation dict for this time step (default: {'image': self._image(time_step)});
        its arrays must not be reused by later steps."""
        return {"image": self._image(time_step)}

    def _dm_action(self, action):
        return action

    def _info(self, time_step: dm_env.TimeStep) -> dict:
        """The info dict of reset/step (default: empty)."""
        return {}

    # --- gymnasium API ------------------------------------------------------------------------
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._reseed(int(seed))
        with gl_errors(self._name):  # the first MuJoCo render happens here
            time_step = self._env.reset()
            self._last_obs = self._obs(time_step)
        return dict(self._last_obs), self._info(time_step)

    def step(self, action):
        time_step = self._env.step(self._dm_action(action))
        last = time_step.last()
        terminated = bool(last and time_step.discount == 0)
        truncated = bool(last and not terminated)
        reward = float(time_step.reward or 0.0)
        if not self.skip_image or last:
            self._last_obs = self._obs(time_step)
        return dict(self._last_obs), reward, terminated, truncated, self._info(time_step)

    def close(self):
        self._env.close()
