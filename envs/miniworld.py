"""MiniWorld (Chevalier-Boisvert et al. 2023): task `miniworld_<Name>` -> gymnasium id 'MiniWorld-<Name>-v0'.

Examples: miniworld_FourRooms, miniworld_MazeS3Fast, miniworld_OneRoom. Observation
{'image': uint8 (S, S, 3)} (+ 'goal' for Sign); actions OneHot(n), n = the env's Discrete size.
Episodes end truncated at the env's own max_episode_steps unless a goal terminates them.
One MiniWorld env per process: two in one process corrupt each other's GL state.
"""
from __future__ import annotations

import contextlib
import io
import re
import sys

import gymnasium

from envs.headless import gl_import
from envs.wrappers import OneHotAction

ACTION_REPEAT = 1
_ID = re.compile(r"MiniWorld-(.+)-v0")


def names() -> list[str]:
    """Valid names, e.g. 'FourRooms' (every 'MiniWorld-<Name>-v0' that miniworld registers)."""
    gl_import("miniworld")  # registers the gymnasium ids (and creates pyglet's GL context)
    return sorted(m.group(1) for m in map(_ID.fullmatch, gymnasium.registry) if m)


def make(name: str, *, seed: int, image_size: int, fast_render: bool) -> gymnasium.Env:
    """MiniWorld-<name>-v0 rendering (S, S, 3) observations. Seeding happens at reset (MiniWorld
    draws its world from np_random in reset()); fast_render has no effect (it renders ~1000 fps)."""
    del seed, fast_render
    gl_import("miniworld")
    # MiniWorld's default observation is 60x80 (H x W): ask for a square image.
    with quiet():
        env = gymnasium.make(f"MiniWorld-{name}-v0", obs_width=image_size, obs_height=image_size,
                             disable_env_checker=True)
    return OneHotAction(ImageDict(env))


@contextlib.contextmanager
def quiet():
    """Build a MiniWorld env without its prints about multisampling: it asks for 8 and 16 samples
    and prints (not warns) 'Falling back to num_samples=4' for each under Mesa's llvmpipe. Other
    output of the block is passed on."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines(keepends=True):
            if not line.startswith("Falling back to num_samples="):
                sys.stdout.write(line)


class ImageDict(gymnasium.ObservationWrapper):
    """MiniWorld's image array (or Sign's {'obs', 'goal'} dict) -> {'image': uint8 (S, S, 3), ...}."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        space = env.observation_space
        if isinstance(space, gymnasium.spaces.Dict):
            extras = {k: v for k, v in space.spaces.items() if k != "obs"}
            self.observation_space = gymnasium.spaces.Dict({"image": space["obs"], **extras})
        else:
            self.observation_space = gymnasium.spaces.Dict({"image": space})

    def observation(self, obs):
        if isinstance(obs, dict):
            return {"image": obs["obs"], **{k: v for k, v in obs.items() if k != "obs"}}
        return {"image": obs}
