"""Contract tests for envs/: one task per family, the wrappers on a toy env, errors, vector envs.

Shapes: single env image uint8 (64, 64, 3), flags bool (); vector env adds a leading (B,).
"""
from __future__ import annotations

import gymnasium
import numpy as np
import pytest

import envs
from envs.headless import gl_errors
from envs.spaces import OneHot
from envs.wrappers import ActionRepeat, EpisodeFlags

TASKS = ["miniworld_FourRooms", "dmc_cartpole_balance", "memorymaze_9x9"]
STEPS = 50


def _random_episode(env, steps):
    """Reset, then `steps` random actions (resetting at episode ends); returns obs list, is_first list.

    Also checks that observations own their images: a renderer that reuses one buffer would make
    every stored image equal to the latest frame.
    """
    obs, _ = env.reset()
    observations, resets, copies = [obs], [True], [obs["image"].copy()]
    for _ in range(steps):
        action = env.action_space.sample()
        assert env.action_space.contains(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        assert isinstance(reward, float)
        assert bool(obs["is_last"]) == (terminated or truncated) and bool(obs["is_terminal"]) == terminated
        observations.append(obs), resets.append(False), copies.append(obs["image"].copy())
        if terminated or truncated:
            obs, _ = env.reset()
            observations.append(obs), resets.append(True), copies.append(obs["image"].copy())
    for obs, copy in zip(observations, copies):
        np.testing.assert_array_equal(obs["image"], copy, err_msg="image buffer reused across steps")
    return observations, resets


@pytest.mark.parametrize("task", TASKS)
def test_env_contract(task):
    env = envs.make_env(task, seed=0)
    try:
        if task.startswith("dmc_"):
            assert type(env.action_space) is gymnasium.spaces.Box and env.action_space.dtype == np.float32
            assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
        else:
            assert isinstance(env.action_space, OneHot)
            assert np.sum(env.action_space.sample()) == 1
        observations, resets = _random_episode(env, STEPS)
        for obs, reset in zip(observations, resets):
            assert env.observation_space.contains(obs)
            assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
            assert obs["image"].std() > 0, "constant image"
            assert bool(obs["is_first"]) == reset, "is_first must be True exactly on reset"
        images = np.stack([obs["image"] for obs in observations])  # (T, 64, 64, 3)
        assert np.any(images != images[:1]), "images never change under random actions"
        # Seeding: reset(seed=0) after some steps replays the first image of the seed-0 env.
        again, _ = env.reset(seed=0)
        np.testing.assert_array_equal(again["image"], observations[0]["image"])
    finally:
        env.close()


@pytest.mark.parametrize("task, suggestion", [
    ("miniworld_FourRoom", "miniworld_FourRooms"),
    ("dmc_walker_wlak", "dmc_walker_walk"),
    ("memorymaze_10x10", "memorymaze_9x9"),
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
