"""DeepMind Control Suite: from pixels, task `dmc_<domain>_<task>`; proprioceptive only, task
`dmc_proprio_<domain>_<task>`.

Examples: dmc_cartpole_balance, dmc_walker_walk, dmc_proprio_cartpole_swingup (domains may contain
'_', so names are matched against dm_control.suite.ALL_TASKS). Observation, as DreamerV3's dmc env:
the task's own observations as float32 vectors (n,) under their dm_control names (a scalar becomes
(1,); e.g. cartpole: position (3,), velocity (2,)), plus {'image': uint8 (S, S, 3)} from pixels.
The proprio family never renders, so it runs at physics speed. Which keys the world model reads is
its choice (wm.cnn_keys / wm.mlp_keys; the `dmc` block reads the image, `dmc_proprio` the vectors).
Actions Box(-1, 1, (A,), float32), rescaled to the task's bounds by gymnasium's RescaleAction.
Episodes are dm_control's 1000 physics-control steps (500 agent steps at the default repeat 2) and
end truncated, never terminated.
"""
from __future__ import annotations

import functools

import gymnasium
import numpy as np

from envs.dm_adapter import DmEnv
from envs.headless import gl_import

# DreamerV3 (embodied/envs/dmc.py) films quadruped from camera 2 and every other domain from camera 0.
CAMERAS = {"quadruped": 2}
ACTION_REPEAT = 2  # DreamerV3's dmc default


@functools.cache
def _tasks() -> dict[str, tuple[str, str]]:
    suite = gl_import("dm_control.suite")
    return {f"{domain}_{task}": (domain, task) for domain, task in suite.ALL_TASKS}


def names() -> list[str]:
    """Valid `<domain>_<task>` names, e.g. 'walker_walk'."""
    return sorted(_tasks())


def make(name: str, *, seed: int, image_size: int, fast_render: bool,
         render: bool = True) -> gymnasium.Env:
    """The dm_control task `name` ('<domain>_<task>') seeded with `seed`: its vectors and, with
    `render`, (S, S, 3) images."""
    suite = gl_import("dm_control.suite")
    domain, task = _tasks()[name]
    env = suite.load(domain, task, task_kwargs={"random": seed})
    family = "dmc" if render else "dmc_proprio"
    inner = DMC(env, CAMERAS.get(domain, 0), image_size, fast_render, name=f"{family}_{name}",
                render=render)
    ones = np.ones(inner.action_space.shape, np.float32)  # float32 bounds keep the space float32
    return gymnasium.wrappers.RescaleAction(inner, -ones, ones)


def make_proprio(name: str, *, seed: int, image_size: int, fast_render: bool) -> gymnasium.Env:
    """dmc_proprio_<name>: the task's vectors only, nothing rendered (image_size, fast_render
    unused)."""
    return make(name, seed=seed, image_size=image_size, fast_render=fast_render, render=False)


class DMC(DmEnv):
    """A dm_control control.Environment: its observations as float32 vectors, rendered from one
    camera when `render`; actions in the task's own bounds."""

    def __init__(self, env, camera_id: int, image_size: int, fast_render: bool, name: str,
                 render: bool = True):
        super().__init__(env, image_size, name)
        self._render = render
        self._sizes = {k: max(1, int(np.prod(spec.shape))) for k, spec in
                       env.observation_spec().items()}  # dm_control name -> flat size
        vectors = {k: gymnasium.spaces.Box(-np.inf, np.inf, (n,), np.float32)
                   for k, n in self._sizes.items()}
        if render:
            vectors["image"] = self.observation_space["image"]
        self.observation_space = gymnasium.spaces.Dict(vectors)
        spec = env.action_spec()
        low = np.broadcast_to(spec.minimum, spec.shape).astype(np.float32)
        high = np.broadcast_to(spec.maximum, spec.shape).astype(np.float32)
        self.action_space = gymnasium.spaces.Box(low, high, spec.shape, np.float32)
        self._camera_id, self._size = camera_id, image_size
        self._camera, self._camera_physics = None, None
        self._flags = {}
        if fast_render:
            import mujoco

            # Anti-aliasing: MSAA samples of the offscreen buffer. MuJoCo reads this when the GL
            # context is made, i.e. at the first render, so it must be set before that.
            env.physics.model.vis.quality.offsamples = 0
            # Shadows and floor reflections cost extra render passes; on CPU (llvmpipe) these two
            # plus MSAA are ~90% of the frame time. The skybox is kept so that images keep their
            # usual background (dropping it too is ~25% faster but leaves the sky black).
            self._flags = {mujoco.mjtRndFlag.mjRND_SHADOW: False, mujoco.mjtRndFlag.mjRND_REFLECTION: False}

    def _reseed(self, seed: int) -> None:
        # suite tasks draw every initial state from task.random (a RandomState); reseeding it in
        # place is what suite.load(task_kwargs={'random': seed}) would have done.
        self._env.task.random.seed(seed)

    def _obs(self, time_step) -> dict:
        obs = {k: np.array(time_step.observation[k], np.float32).reshape(n)  # (n,), a copy
               for k, n in self._sizes.items()}
        if self._render:
            obs["image"] = self._image(time_step)
        return obs

    def _image(self, time_step) -> np.ndarray:
        from dm_control.mujoco import engine

        physics = self._env.physics
        # One camera for the episode: physics.render() builds (and frees) a new scene every frame.
        if self._camera_physics is not physics:
            self._camera = engine.Camera(physics, self._size, self._size, self._camera_id)
            self._camera_physics = physics
        # Camera.render returns a flipped view of its one reusable buffer: copy, or every stored
        # observation would alias the latest frame.
        return self._camera.render(render_flag_overrides=self._flags).copy()

    def close(self):
        self._camera, self._camera_physics = None, None
        super().close()
