"""make_env / make_vector_env: the one entry point to every env family.

Wrapper stack of make_env, inner to outer:
    family env        obs {'image': uint8 (S, S, 3), ...}, actions OneHot(n) or Box(-1, 1, (A,))
    ActionRepeat      rewards summed over the repeats
    TimeLimit         gymnasium's; counts agent steps (after action repeat); optional
    EpisodeFlags      adds is_first / is_last / is_terminal (scalar bool)
    SeedOnFirstReset  the first reset() uses the construction seed
"""
from __future__ import annotations

import concurrent.futures
import functools
import multiprocessing

import gymnasium
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from envs.headless import gl_errors
from envs.registry import FAMILIES, parse_task
from envs.wrappers import ActionRepeat, EpisodeFlags, SeedOnFirstReset


def make_env(task: str, *, seed: int, image_size: int = 64, action_repeat: int | None = None,
             time_limit: int | None = None, fast_render: bool = False) -> gymnasium.Env:
    """One env for `task` ('<family>_<name>', e.g. 'dmc_walker_walk', 'miniworld_FourRooms').

    seed: the first reset() without a seed behaves as reset(seed=seed), so equal seeds give equal
        episodes. action_repeat: None = the family default (dmc 2, others 1). time_limit: in agent
        steps; None = the env's own limit. fast_render: dmc only, no MSAA/shadows/reflections.
    """
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    family, name = parse_task(task)
    spec = FAMILIES[family]
    with gl_errors(task):  # MiniWorld renders its first frame while being built
        env = spec.make(name, seed=int(seed), image_size=int(image_size), fast_render=fast_render)
    repeat = spec.action_repeat if action_repeat is None else action_repeat
    if repeat != 1:
        env = ActionRepeat(env, repeat)
    if time_limit is not None:
        env = gymnasium.wrappers.TimeLimit(env, time_limit)
    return SeedOnFirstReset(EpisodeFlags(env), int(seed))


def env_seed(seed: int, index: int) -> int:
    """The seed of env `index` of a run seeded with `seed`: independent streams via SeedSequence."""
    return int(np.random.SeedSequence((seed, index)).generate_state(1)[0])


def make_vector_env(task: str, num_envs: int, *, seed: int, context: str = "spawn", **kw) -> gymnasium.vector.VectorEnv:
    """`num_envs` copies of make_env(task, seed=env_seed(seed, i), **kw), batched along axis 0.

    Observations: dict of (B, ...) arrays, e.g. image uint8 (B, S, S, 3), is_first bool (B,).
    num_envs == 1: SyncVectorEnv in this process. Otherwise AsyncVectorEnv, one env per worker
    process started with `context` ('spawn' or 'forkserver': forking after GL rendering hangs the
    child, and two MiniWorld envs in one process corrupt each other). Every env is built inside its
    worker; the spaces gymnasium wants up front come from one throw-away env in a child process,
    so this process never opens a GL context.

    Seeds: reset() without a seed seeds env i with env_seed(seed, i); reset(seed=s) follows
    gymnasium (env i gets s + i).

    Autoreset (gymnasium 1.4, AutoresetMode.NEXT_STEP): when env i's step t ends an episode, that
    step returns the final observation (is_last=True, is_terminal=terminated) with its reward and
    terminated/truncated flags. The NEXT step() ignores action i, calls env i's reset() and returns
    the first observation of the new episode (is_first=True, is_last=False, is_terminal=False) with
    reward 0.0 and terminated=truncated=False. So every observation is a real one, none is lost,
    and the action sent with an is_last observation is discarded.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    fns = [functools.partial(make_env, task, seed=env_seed(seed, i), **kw) for i in range(num_envs)]
    if num_envs == 1:
        return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.NEXT_STEP)
    obs_space, act_space = _probe_spaces(fns[0], context)
    fns[0] = _BuiltInWorker(fns[0], obs_space, act_space)
    return AsyncVectorEnv(fns, context=context, autoreset_mode=AutoresetMode.NEXT_STEP)


def _spaces_of(fn) -> tuple[gymnasium.Space, gymnasium.Space]:
    env = fn()
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _probe_spaces(fn, context: str):
    """The spaces of fn()'s env, built in a fresh child process (errors such as an unknown task
    are re-raised here unchanged)."""
    ctx = multiprocessing.get_context(context)
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        return pool.submit(_spaces_of, fn).result()


class _SpacesOnly(gymnasium.Env):
    """Stands in for AsyncVectorEnv's 'dummy' env (built in the parent just to read the spaces)."""

    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space


class _BuiltInWorker:
    """Env constructor that builds the real env only after being unpickled, i.e. in a worker;
    called in this process it returns a _SpacesOnly with the probed spaces."""

    def __init__(self, fn, observation_space, action_space):
        self.fn, self.spaces, self.in_worker = fn, (observation_space, action_space), False

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.in_worker = True

    def __call__(self) -> gymnasium.Env:
        return self.fn() if self.in_worker else _SpacesOnly(*self.spaces)
