"""MiniGrid's Memory tasks (Chevalier-Boisvert et al. 2023) from pixels: task `minigrid_<Name>`.

Names: MemoryS7, MemoryS9, MemoryS11, MemoryS13, MemoryS13Random, MemoryS17Random (gymnasium ids
'MiniGrid-<Name>-v0'). The agent starts in a small room holding a cue object (a key or a ball),
walks down a hallway of S - 6 cells (random length in the Random variants) and at its end must step
next to the one of two objects that matches the cue: reward 1 - 0.9 t / max_steps and terminated;
the wrong one terminates with 0; truncated after 5 S^2 steps. So a return > 0 is a success, and a
policy that reaches an end but guesses succeeds half the time (chance 0.5).

Observation {'image': uint8 (S, S, 3)} at an exact resolution: MiniGrid's own egocentric 7x7 view
(RGBImgPartialObsWrapper: the agent at the bottom centre, facing up) drawn by its tile renderer at
tile = S // 7 whole pixels per cell, centred on a black S x S canvas (S = 32: 4 px per cell, 28 x 28
plus a 2 px border; 64: 9 px, 63 x 63 plus 1 px). As in MiniGrid's RGB view, cells hidden behind
walls are drawn without the highlight of visible ones, not blanked. Actions OneHot(3): turn left,
turn right, forward. MemoryEnv ignores its other four actions (pick up becomes toggle, which does
nothing to keys and balls; drop and done do nothing), so they are left out [ours].
"""
from __future__ import annotations

import gymnasium
import numpy as np

from envs.wrappers import OneHotAction

ACTION_REPEAT = 1
NAMES = ("MemoryS7", "MemoryS9", "MemoryS11", "MemoryS13", "MemoryS13Random", "MemoryS17Random")
VIEW = 7          # MiniGrid's agent_view_size: cells per side of the egocentric view
NAVIGATION = 3    # left, right, forward: the first three of MiniGrid's actions


def names() -> list[str]:
    """Valid names, e.g. 'MemoryS7'."""
    return list(NAMES)


def hallway(name: str) -> int:
    """Hallway length in cells between the start room and the choice (the longest for the Random
    variants): the distance the cue must be carried, S - 6 for MemoryS<S>."""
    size = int(name.removeprefix("Memory").removesuffix("Random").removeprefix("S"))
    return size - 6


def make(name: str, *, seed: int, image_size: int, fast_render: bool) -> gymnasium.Env:
    """MiniGrid-<name>-v0 seen through the 7x7 egocentric view at image_size // 7 pixels per cell;
    seeding happens at reset."""
    del seed, fast_render
    if image_size < VIEW:
        raise ValueError(f"minigrid: image_size must be >= {VIEW} (one pixel per cell), "
                         f"got {image_size}")
    import minigrid  # noqa: F401  (registers the MiniGrid-* gymnasium ids)
    from minigrid.wrappers import RGBImgPartialObsWrapper
    env = gymnasium.make(f"MiniGrid-{name}-v0", disable_env_checker=True)
    env = ImageOnly(RGBImgPartialObsWrapper(env, tile_size=image_size // VIEW), image_size)
    env.action_space = gymnasium.spaces.Discrete(NAVIGATION)  # OneHotAction maps 0..2 unchanged
    return OneHotAction(env)


class ImageOnly(gymnasium.ObservationWrapper):
    """MiniGrid's {'image' (7 t, 7 t, 3), 'direction', 'mission'} -> {'image': uint8 (S, S, 3)},
    the view centred on a black canvas (the direction is in the view; the mission is constant)."""

    def __init__(self, env: gymnasium.Env, size: int):
        super().__init__(env)
        self.size = size
        self.observation_space = gymnasium.spaces.Dict(
            {"image": gymnasium.spaces.Box(0, 255, (size, size, 3), np.uint8)})

    def observation(self, obs):
        view = obs["image"]  # (7 t, 7 t, 3)
        canvas = np.zeros((self.size, self.size, 3), np.uint8)
        top = (self.size - view.shape[0]) // 2
        left = (self.size - view.shape[1]) // 2
        canvas[top:top + view.shape[0], left:left + view.shape[1]] = view
        return {"image": canvas}
