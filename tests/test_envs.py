"""Contract tests for envs/: one task per family, the wrappers on a toy env, errors, vector envs.

Shapes: single env image uint8 (64, 64, 3) and/or vectors float32 (n,), flags bool (); vector env
adds a leading (B,).
"""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import envs
from envs.headless import gl_errors
from envs.spaces import OneHot
from envs.wrappers import ActionRepeat, EpisodeFlags

TASKS = ["miniworld_FourRooms", "dmc_cartpole_balance", "memorymaze_9x9",
         "dmc_proprio_cartpole_balance", "minigrid_MemoryS7", "bsuite_memory_len_5"]
STEPS = 50
FLAGS = ("is_first", "is_last", "is_terminal")


def _random_episode(env, steps):
    """Reset, then `steps` random actions (resetting at episode ends); returns obs list, is_first list.

    Also checks that observations own their arrays: a renderer (or simulator) that reuses one
    buffer would make every stored observation equal to the latest one.
    """
    obs, _ = env.reset()
    own = lambda o: {k: np.array(v) for k, v in o.items() if k not in FLAGS}  # noqa: E731
    observations, resets, copies = [obs], [True], [own(obs)]
    for _ in range(steps):
        action = env.action_space.sample()
        assert env.action_space.contains(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        assert isinstance(reward, float)
        assert bool(obs["is_last"]) == (terminated or truncated) and bool(obs["is_terminal"]) == terminated
        observations.append(obs), resets.append(False), copies.append(own(obs))
        if terminated or truncated:
            obs, _ = env.reset()
            observations.append(obs), resets.append(True), copies.append(own(obs))
    for obs, copy in zip(observations, copies):
        for key, value in copy.items():
            np.testing.assert_array_equal(obs[key], value, err_msg=f"{key} buffer reused")
    return observations, resets


@pytest.mark.parametrize("task", TASKS)
def test_env_contract(task):
    size = 32 if task.startswith("minigrid_") else 64  # minigrid: 4 px per cell (the block's size)
    env = envs.make_env(task, seed=0, image_size=size)
    try:
        if task.startswith("dmc_"):
            assert type(env.action_space) is gymnasium.spaces.Box and env.action_space.dtype == np.float32
            assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
        else:
            assert isinstance(env.action_space, OneHot)
            assert np.sum(env.action_space.sample()) == 1
        keys = [k for k in env.observation_space.spaces if k not in FLAGS]
        images = [k for k in keys if k == "image"]
        vectors = [k for k in keys if k != "image"]
        assert images or vectors
        observations, resets = _random_episode(env, STEPS)
        for obs, reset in zip(observations, resets):
            assert env.observation_space.contains(obs)
            for key in images:
                assert obs[key].shape == (size, size, 3) and obs[key].dtype == np.uint8
                assert obs[key].std() > 0, "constant image"
            for key in vectors:
                assert obs[key].ndim == 1 and obs[key].dtype == np.float32
                assert np.isfinite(obs[key]).all()
            assert bool(obs["is_first"]) == reset, "is_first must be True exactly on reset"
        for key in keys:
            stack = np.stack([obs[key] for obs in observations])  # (T, ...)
            assert np.any(stack != stack[:1]), f"{key} never changes under random actions"
        # Seeding: reset(seed=0) after some steps replays the first observation of the seed-0 env.
        again, _ = env.reset(seed=0)
        for key in keys:
            np.testing.assert_array_equal(again[key], observations[0][key])
    finally:
        env.close()


@pytest.mark.parametrize("task, suggestion", [
    ("miniworld_FourRoom", "miniworld_FourRooms"),
    ("dmc_walker_wlak", "dmc_walker_walk"),
    ("memorymaze_10x10", "memorymaze_9x9"),
    ("minigrid_MemoryS8", "minigrid_MemoryS7"),
    ("bsuite_memory_len_11", "bsuite_memory_len_1"),
    ("dmc_proprio_walker_wlak", "dmc_proprio_walker_walk"),
])
def test_unknown_name_lists_close_choices(task, suggestion):
    with pytest.raises(ValueError) as err:
        envs.make_env(task, seed=0)
    message = str(err.value)
    assert suggestion in message and task in message and "\n" not in message


def test_unknown_family_lists_families():
    with pytest.raises(ValueError) as err:
        envs.make_env("atari_pong", seed=0)
    message = str(err.value)
    assert "'atari'" in message and all(f in message for f in envs.ENV_FAMILIES) and "\n" not in message


def test_task_choices_and_families():
    assert set(envs.ENV_FAMILIES) >= {"miniworld", "dmc", "memorymaze"}
    assert "dmc_ball_in_cup_catch" in envs.task_choices("dmc")
    assert envs.parse_task("dmc_ball_in_cup_catch") == ("dmc", "ball_in_cup_catch")
    assert envs.parse_task("dmc_proprio_ball_in_cup_catch") == ("dmc_proprio", "ball_in_cup_catch")
    assert envs.parse_task("minigrid_MemoryS13Random") == ("minigrid", "MemoryS13Random")
    assert envs.parse_task("bsuite_memory_len_100") == ("bsuite", "memory_len_100")


def test_dmc_proprio_is_the_pixel_tasks_vectors_without_rendering():
    """Same seed, same actions: dmc_proprio's vectors equal those dmc carries beside its image
    (dm_control's own observations, float32), and the proprio env never builds a camera."""
    proprio = envs.make_env("dmc_proprio_walker_walk", seed=3)
    pixels = envs.make_env("dmc_walker_walk", seed=3, fast_render=True)
    try:
        assert set(proprio.observation_space) == set(pixels.observation_space) - {"image"}
        assert proprio.observation_space["height"].shape == (1,)  # a dm_control scalar
        a, b = proprio.reset()[0], pixels.reset()[0]
        rng = np.random.default_rng(0)
        for _ in range(5):
            action = rng.uniform(-1, 1, proprio.action_space.shape).astype(np.float32)
            a, b = proprio.step(action)[0], pixels.step(action)[0]
        for key in ("orientations", "height", "velocity"):
            np.testing.assert_array_equal(a[key], b[key])
        physics = proprio.unwrapped._env.physics
        np.testing.assert_allclose(a["height"], [physics.torso_height()], rtol=1e-6)
        assert proprio.unwrapped._camera is None and pixels.unwrapped._camera is not None
    finally:
        proprio.close(), pixels.close()


@pytest.mark.parametrize("size, tile", [(32, 4), (64, 9)])
def test_minigrid_view_is_minigrids_own_at_whole_pixels(size, tile):
    """The image is MiniGrid's egocentric 7x7 view drawn at `tile` px per cell, centred on a black
    canvas; OneHot(3) actions are MiniGrid's left, right, forward."""
    env = envs.make_env("minigrid_MemoryS9", seed=0, image_size=size)
    try:
        obs, _ = env.reset()
        inner = env.unwrapped
        view = inner.get_pov_render(tile)  # (7 tile, 7 tile, 3)
        top = (size - 7 * tile) // 2
        np.testing.assert_array_equal(obs["image"][top:top + 7 * tile, top:top + 7 * tile], view)
        border = obs["image"].copy()
        border[top:top + 7 * tile, top:top + 7 * tile] = 0
        assert not border.any()
        heading = inner.agent_dir
        obs, *_ = env.step(np.array([0, 1, 0], np.float32))  # right: heading + 1
        assert inner.agent_dir == (heading + 1) % 4
        assert env.action_space.n == 3
    finally:
        env.close()


def test_bsuite_memory_len_rewards_recalling_the_first_observation():
    """A policy that answers the context bit seen at the start gets +1 in every episode, its
    opposite -1; episodes last L + 1 actions; the lengths are bsuite's own sweep."""
    from bsuite.experiments.memory_len import sweep
    from envs import bsuite as family
    assert family.LENGTHS == tuple(s["memory_length"] for s in sweep.SETTINGS)
    L = 7
    env = envs.make_env(f"bsuite_memory_len_{L}", seed=0)
    contexts = []
    for flip in (False, True):
        for _ in range(10):
            obs, _ = env.reset()
            context = obs["observation"][2]  # +-1
            contexts.append(context)
            answer = int(context > 0) ^ flip
            steps, done = 0, False
            while not done:
                action = env.action_space.from_index(answer)
                obs, reward, terminated, truncated, _ = env.step(action)
                steps, done = steps + 1, terminated or truncated
            assert terminated and steps == L + 1 and reward == (-1.0 if flip else 1.0)
    assert set(contexts) == {-1.0, 1.0}


def test_onehot_space():
    space = OneHot(5, seed=0)
    samples = np.stack([space.sample() for _ in range(100)])  # (100, 5)
    assert samples.dtype == np.float32 and np.all(samples.sum(1) == 1)
    assert space.contains(space.from_index(2)) and not space.contains(np.full(5, 0.2, np.float32))


class _Counter(gymnasium.Env):
    """Toy env: reward 1 per step, terminates after `end` steps; image holds the step count."""

    def __init__(self, end):
        self.end, self.t = end, 0
        self.observation_space = gymnasium.spaces.Dict({"image": gymnasium.spaces.Box(0, 255, (2, 2, 3), np.uint8)})
        self.action_space = gymnasium.spaces.Discrete(2)

    def _obs(self):
        return {"image": np.full((2, 2, 3), self.t, np.uint8)}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.t >= self.end, False, {}


def test_action_repeat_time_limit_and_flags():
    # Terminates at inner step 5: repeat 2 gives rewards 2, 2, then 1 with is_terminal.
    env = EpisodeFlags(ActionRepeat(_Counter(end=5), 2))
    env.reset()
    rewards, flags = [], []
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(0)
        rewards.append(reward), flags.append((bool(obs["is_last"]), bool(obs["is_terminal"])))
    assert rewards == [2.0, 2.0, 1.0] and obs["image"][0, 0, 0] == 5
    assert flags == [(False, False), (False, False), (True, True)]
    # A time-limit truncation is is_last but not is_terminal.
    env = EpisodeFlags(gymnasium.wrappers.TimeLimit(_Counter(end=100), 2))
    env.reset(), env.step(0)
    obs, _, terminated, truncated, _ = env.step(0)
    assert truncated and not terminated and obs["is_last"] and not obs["is_terminal"]


def test_gl_errors_name_the_packages():
    with pytest.raises(RuntimeError, match="libegl1 libgl1 libgl1-mesa-dri") as err:
        with gl_errors("miniworld_FourRooms"):
            raise ImportError('Library "EGL" not found.')
    assert "\n" not in str(err.value)
    with pytest.raises(KeyError):  # other errors pass through unchanged
        with gl_errors("x"):
            raise KeyError("image")


def test_vector_env_batches_and_autoresets():
    """2 async workers (spawn); NEXT_STEP autoreset: the step after is_last returns is_first."""
    venv = envs.make_vector_env("miniworld_FourRooms", 2, seed=0, time_limit=3)
    try:
        assert isinstance(venv, gymnasium.vector.AsyncVectorEnv)
        obs, _ = venv.reset()
        assert obs["image"].shape == (2, 64, 64, 3) and obs["image"].dtype == np.uint8
        assert obs["is_first"].shape == (2,) and obs["is_first"].all()
        assert not np.array_equal(obs["image"][0], obs["image"][1]), "envs 0 and 1 must get different seeds"
        for t in range(1, 5):
            actions = np.stack([venv.single_action_space.sample() for _ in range(2)])  # (2, n)
            obs, reward, terminated, truncated, _ = venv.step(actions)
            assert reward.shape == (2,)
            assert obs["is_last"].all() == (t == 3) and truncated.all() == (t == 3)
            assert obs["is_first"].all() == (t == 4) and not obs["is_terminal"].any()
    finally:
        venv.close()
