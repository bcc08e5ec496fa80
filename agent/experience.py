"""The pieces main.py calls: collecting experience into replay, evaluation, open-loop videos.

Storing a step (replay alignment, replay/buffer.py): after env.step(a_{t-1}) returns o_t, r_t we
store {the model's observation keys of o_t, action a_{t-1}, reward r_t, flags of o_t}; a reset
observation is stored with a zero action and reward. Observation keys are those the world model
reads (world_models.observation_keys): the image uint8 (H, W, C), vectors float32 (n,).
gymnasium's vector envs auto-reset on the step *after* is_last (NEXT_STEP mode): that call
ignores the action and returns the first observation of the next episode (is_first).
"""
from __future__ import annotations

import numpy as np
import torch

from common import interrupt
from common.logger import openloop_grid
from common.parallel import world_size
from common.resources import replay_steps
from envs import env_seed, make_vector_env
from envs.spaces import OneHot
from replay import Replay, StreamSampler
from world_models import observation_keys

FLAGS = ("is_first", "is_last", "is_terminal")


def env_kwargs(config) -> dict:
    e = config.env
    return {"image_size": e.image_size, "action_repeat": e.action_repeat or None,
            "time_limit": e.time_limit or None, "fast_render": e.fast_render}


def replay_dir(logdir, rank: int = 0):
    """Rank 0 (and a single process) keeps <logdir>/replay; rank r > 0 of a data-parallel run
    writes its own shard <logdir>/replay/rank<r> (a subfolder, so rank 0 never reads it)."""
    return logdir / "replay" if rank == 0 else logdir / "replay" / f"rank{rank}"


class Collector:
    """Training env workers, the replay they fill, and episode statistics.

    seed: this process's seed (config.seed; common.parallel.rank_seed for rank r > 0 of a
    data-parallel run); batch_size: sequences per update of this process; rank picks the replay folder."""

    def __init__(self, config, logdir, start_step: int = 0, *, seed: int | None = None,
                 batch_size: int | None = None, rank: int = 0):
        self.config = config
        self.num_envs = config.env.envs
        seed = config.seed if seed is None else seed
        # Worker i is seeded from (seed, i) by make_vector_env; a resumed run continues with fresh
        # episodes (seed derived from the step) rather than replaying the opening ones.
        env_base = seed if start_step == 0 else env_seed(seed, start_step)
        self.envs = make_vector_env(config.task, self.num_envs, seed=env_base, **env_kwargs(config))
        # {key: (shape, dtype)} of one env's observations; the model's keys are stored in replay
        self.spaces = {k: (v.shape, v.dtype)
                       for k, v in self.envs.single_observation_space.spaces.items()}
        try:
            image_key, vectors = observation_keys(config, self.spaces)
        except ValueError:
            self.envs.close()
            raise
        self.image_key, self.vector_keys = image_key, tuple(vectors)
        space = self.envs.single_action_space
        self.discrete, self.act_dim = isinstance(space, OneHot), int(space.shape[0])
        self.low, self.high = (0.0, 1.0) if self.discrete else (-1.0, 1.0)
        # what _store writes: the model's observation keys, the action, reward and flags
        spec = {k: (tuple(self.spaces[k][0]), np.float32) for k in self.vector_keys}
        if self.image_key:
            spec[self.image_key] = (tuple(self.spaces[self.image_key][0]), np.uint8)
        spec.update({"action": ((self.act_dim,), np.float32), "reward": ((), np.float32),
                     **{k: ((), bool) for k in FLAGS}})
        # a chunk on disk with other keys or shapes (another run's) stops the run in one line
        self.replay = Replay(str(replay_dir(logdir, rank)), replay_steps(config, world_size()),
                             chunk_len=config.replay.chunk, seed=seed, spec=spec)
        self.stream = StreamSampler(self.replay, batch_size or config.train.batch_size,
                                    config.train.seq_len, seed=seed + 1)
        self.rng = np.random.default_rng(seed + 2)  # random prefill policy
        self.obs, _ = self.envs.reset()
        self.prev_action = np.zeros((self.num_envs, self.act_dim), np.float32)
        self.policy_state = None
        self.ret = np.zeros(self.num_envs)
        self.length = np.zeros(self.num_envs, np.int64)
        self._store(self.obs, self.prev_action, np.zeros(self.num_envs))

    def step(self, agent, random_policy: bool, logger) -> tuple[int, bool]:
        """Act once in every worker and store the outcome. Returns (env steps taken, whether the
        policy gave valid actions). Workers whose policy parameters are not finite act randomly
        this step and their policy state starts afresh (common/health.py counts it)."""
        if self.policy_state is None:
            self.policy_state = agent.initial_policy_state(self.num_envs)
        action, self.policy_state = agent.act(self.obs, self.policy_state, self.prev_action)
        valid = bool(np.isfinite(action).all())
        if random_policy or not valid:
            action = self._random_action()
        if not valid:
            self.policy_state = None
        obs, reward, _, _, _ = self.envs.step(action)
        first = obs["is_first"]
        action = np.where(first[:, None], 0.0, action).astype(np.float32)
        reward = np.where(first, 0.0, reward)
        self._store(obs, action, reward)
        self.obs, self.prev_action = obs, action
        self.ret += reward
        self.length += ~first
        for i in np.flatnonzero(obs["is_last"]):
            logger.scalar("episode/return", self.ret[i])
            logger.scalar("episode/length", self.length[i])
            self.ret[i], self.length[i] = 0.0, 0
        return self.num_envs, valid  # steps are agent steps; action repeat lives inside the env

    def _random_action(self):
        if self.discrete:
            idx = self.rng.integers(0, self.act_dim, self.num_envs)
            return np.eye(self.act_dim, dtype=np.float32)[idx]
        return self.rng.uniform(-1, 1, (self.num_envs, self.act_dim)).astype(np.float32)

    def _store(self, obs, action, reward):
        for i in range(self.num_envs):
            step = {k: np.asarray(obs[k][i], np.float32) for k in self.vector_keys}  # each (n,)
            if self.image_key:
                step[self.image_key] = obs[self.image_key][i]  # uint8 (H, W, C)
            step.update(action=action[i], reward=np.float32(reward[i]))
            step.update({k: bool(obs[k][i]) for k in FLAGS})
            self.replay.add(step, stream=i)

    def training_batch(self, batch_size: int, seq_len: int):
        """A training batch (numpy (B, T, ...)) and the rows whose carried state must reset."""
        if self.config.train.carry_state:
            return self.stream.sample()
        return self.replay.sample(batch_size, seq_len), None

    def sampler_state(self, state: dict | None = None):
        """Get (no argument) or set the generator states of both samplers, for resume."""
        gens = {"replay": self.replay.rng, "stream": self.stream.rng, "policy": self.rng}
        if state is None:
            return {k: g.bit_generator.state for k, g in gens.items()}
        for key, g in gens.items():
            g.bit_generator.state = state[key]
        return None

    def close(self):
        self.envs.close()


@torch.no_grad()
def evaluate(config, agent, logger, step: int, video: bool) -> dict | None:
    """Greedy episodes in separate workers; returns eval/return, eval/length and eval/success (the
    fraction of episodes with a positive return: the success rate of tasks that reward success
    alone, minigrid Memory and bsuite memory_len); logs a video when the env has an image.
    None when the policy gives a non-finite action (the evaluation stops there)."""
    n = config.env.eval_envs
    envs = make_vector_env(config.task, n, seed=env_seed(config.seed + 10_000, step),
                           **env_kwargs(config))
    try:
        obs, _ = envs.reset()
        act_dim = int(envs.single_action_space.shape[0])
        state, prev = agent.initial_policy_state(n), np.zeros((n, act_dim), np.float32)
        ret, length, frames, results = np.zeros(n), np.zeros(n, int), [], []
        quota, done = -(-config.run.eval_episodes // n), np.zeros(n, int)
        recording = video and "image" in obs  # a proprioceptive env has nothing to film
        while len(results) < quota * n:
            interrupt.check()  # a long evaluation stops within one env step
            if recording:
                frames.append(obs["image"][0])
            action, state = agent.act(obs, state, prev, greedy=True)
            if not np.isfinite(action).all():
                return None
            obs, reward, _, _, _ = envs.step(action)
            first = obs["is_first"]
            prev = np.where(first[:, None], 0.0, action).astype(np.float32)
            ret += np.where(first, 0.0, reward)
            length += ~first
            for i in np.flatnonzero(obs["is_last"]):
                if done[i] < quota:  # equal episodes per worker: no bias towards short episodes
                    results.append((ret[i], length[i]))
                    done[i] += 1
                ret[i], length[i] = 0.0, 0
                recording = recording and i != 0  # the video shows worker 0's first episode
        if video and frames:
            logger.video("eval/policy", np.stack(frames), step)
    finally:
        envs.close()
    return {"return": float(np.mean([r for r, _ in results])),
            "length": float(np.mean([l for _, l in results])),
            "success": float(np.mean([r > 0 for r, _ in results]))}


@torch.no_grad()
def openloop_video(config, agent, collector, logger, step: int, rows: int = 4) -> None:
    """Rows truth / model / |error| for a few replayed sequences: context frames reconstructed,
    then imagined from the recorded actions alone. Nothing without an image key."""
    key = agent.wm.image_key
    if key is None:
        return
    batch = collector.replay.sample(min(rows, config.train.batch_size), config.train.seq_len)
    data = {k: torch.as_tensor(v, device=agent.device) for k, v in batch.items()}
    context = min(config.run.openloop_context, config.train.seq_len - 1)
    pred = agent.wm.openloop(data, context)
    model = ((pred + 0.5).clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
    logger.video("eval/openloop", openloop_grid(batch[key], model), step)
