"""Offline datasets of the memory benchmarks (paper Sec. 3: world models are trained offline on
episodes of scripted policies): one .npz file per episode.

    python -m memory.collect --configs four_rooms [--memory.episodes 100 --memory.workers 2 ...]

Blocks (configs.yaml): two_rooms, four_rooms, ten_rooms, two_rooms_teleport, four_rooms_teleport,
ten_rooms_teleport, distracting_memory, multi_doors_keys, memory_maze_probe; keys: the `memory` section
(`memory.seed` draws the episodes), `env.image_size` and `run.progress`.

Files: <out>/episode-<i:06d>.npz, written atomically (temp file + fsync + rename, as replay chunks
are). A readable file already there is kept, so a rerun adds only missing episodes and writes
again one that was cut short (copied half, say); leftover temp files of killed writes are removed.
Workers ignore Ctrl-C / SIGTERM (the parent stops them within a second) and exit on their own when
the parent dies (kill -9 included), so none goes on writing.
Episode i comes from envs.env_seed(memory.seed, i) alone (the env from that seed, the policy from
[that seed, 1]), so the worker count never changes a file. <out>/dataset.yaml records the settings;
a rerun into the same folder with other settings fails. `Replay(out, capacity, readonly=True)`
loads the folder, each file a stream of its own.

Arrays, one row per frame t < T, in the replay buffer's alignment (replay/buffer.py):
    image          uint8 (T, S, S, 3)
    action         float32 (T, A)  one-hot a_t that LED TO frame t; zeros at t=0 and at the
                                   teleport frame (the jump is not an action)
    reward         float32 (T,)    received arriving at frame t
    is_first, is_last, is_terminal bool (T,); is_terminal only where Distracting Memory ends
    phase          uint8 (T,)      0 context, 1 query. Rooms / Multi Doors Keys: frames
                                   [0, context) then [context, context + query). Distracting
                                   Memory: query = the frames after the agent first stands on the
                                   junction (the side choice and the rewarded step)
  rooms:              room int16 (T,), pose float32 (T, 3) (x, z, heading in radians),
                      teleport_source int32 (T,) (at the first query frame of a teleport variant:
                      the context frame whose pose it copies, so frame t == frame source; else -1)
  distracting_memory: cue int8 (T,), reward_step bool (T,) (an end square is reached: the step
                      whose reward is scored), cell int16 (T, 2)
  multi_doors_keys:   held bool (T, 8), door_open bool (T, K), door_color int8 (T, K), cell int16 (T, 2)
  memory_maze:        maze_layout uint8 (T, S, S), agent_pos float32 (T, 2), agent_dir float32 (T, 2),
                      targets_pos float32 (T, K, 2), targets_vec float32 (T, K, 2) (memory_maze's
                      conventions: envs/memorymaze.py; the probing targets of memory/probe.py);
                      phase as for rooms (context, then query)
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import signal
import sys
import threading
import time
import zipfile
from dataclasses import asdict, dataclass

import numpy as np
from ruamel.yaml import YAML

from common import interrupt
from common.config import UNUSED_BY_ENV, ConfigError
from envs import env_seed
from envs.headless import gl_errors
from memory.grid_policies import DistractingPolicy, DoorsKeysPolicy
from memory.policies import MazePolicy, RoomsPolicy
from replay.storage import remove_tmp, write_atomic

ENVS = tuple(UNUSED_BY_ENV)  # rooms, distracting_memory, multi_doors_keys, memory_maze
ROOM_WORDS = {2: "two", 4: "four", 10: "ten"}
EXTRAS = {"room": np.int16, "pose": np.float32, "teleport_source": np.int32, "cue": np.int8,
          "reward_step": bool, "cell": np.int16, "held": bool, "door_open": bool, "door_color": np.int8,
          "maze_layout": np.uint8, "agent_pos": np.float32, "agent_dir": np.float32,
          "targets_pos": np.float32, "targets_vec": np.float32}
INFO_KEY = {"reward_step": "reached"}  # dataset key -> env info key, where they differ
KEYS_OF = {"rooms": ("room", "pose", "teleport_source"),
           "distracting_memory": ("cue", "reward_step", "cell"),
           "multi_doors_keys": ("held", "door_open", "door_color", "cell"),
           "memory_maze": ("maze_layout", "agent_pos", "agent_dir", "targets_pos", "targets_vec")}


@dataclass(frozen=True)
class Spec:
    """What one episode depends on (besides its seed); saved as <out>/dataset.yaml."""
    env: str
    rooms: int
    teleport: bool
    width: int
    keys: int
    context: int
    query: int
    noise: float
    image_size: int
    maze: str = ""    # memory_maze: 9x9 | 11x11 | 13x13 | 15x15
    version: int = 1  # of this file format

    @classmethod
    def from_config(cls, config) -> "Spec":
        m = config.memory
        if m.env not in ENVS:
            raise ConfigError(f"config key 'memory.env' has unknown value {m.env!r} (choices: {', '.join(ENVS)})")
        if m.env == "rooms" and m.rooms not in ROOM_WORDS:
            raise ConfigError(f"config key 'memory.rooms' must be 2, 4 or 10, got {m.rooms}")
        for key in ("width", "keys", "context", "query", "episodes", "workers"):
            if m[key] < 1:
                raise ConfigError(f"config key 'memory.{key}' must be >= 1, got {m[key]}")
        if m.env == "multi_doors_keys" and config.env.image_size < 16:  # gridmemory.read_layout
            raise ConfigError(f"config key 'env.image_size' must be at least 16 for multi_doors_keys "
                              f"(its 5x5 window needs 3 px per cell), got {config.env.image_size}")
        if m.env == "memory_maze":
            from envs.memorymaze import SIZES, STEPS
            if m.maze not in SIZES:
                raise ConfigError(f"config key 'memory.maze' has unknown value {m.maze!r} (choices: {', '.join(SIZES)})")
            if m.context + m.query > STEPS[m.maze] + 1:
                raise ConfigError(f"memory.context + memory.query must be at most {STEPS[m.maze] + 1} "
                                  f"(a {m.maze} memory maze episode), got {m.context + m.query}")
        # Keys an env never reads (UNUSED_BY_ENV, which also lets them differ on resume) are
        # normalised, so they never make two equal datasets differ.
        unused = UNUSED_BY_ENV[m.env]

        def read(key: str, empty):
            return empty if f"memory.{key}" in unused else m[key]
        return cls(m.env, read("rooms", 0), read("teleport", False), read("width", 0), read("keys", 0),
                   read("context", 0), read("query", 0), read("noise", 0.0), config.env.image_size,
                   read("maze", ""))

    @property
    def name(self) -> str:
        """Default folder name, e.g. 'four_rooms_teleport', 'distracting_memory_100', and
        'distracting_memory_100_16px' for frames other than 64x64."""
        if self.env == "rooms":
            name = f"{ROOM_WORDS[self.rooms]}_rooms" + ("_teleport" if self.teleport else "")
        elif self.env == "memory_maze":
            name = f"memory_maze_{self.maze}"
        else:
            name = f"{self.env}_{self.width if self.env == 'distracting_memory' else self.keys}"
        return name if self.image_size == 64 else f"{name}_{self.image_size}px"

    @property
    def family(self) -> str:
        """The env family of the dataset's task (envs/registry.py)."""
        return "memorymaze" if self.env == "memory_maze" else self.env

    def build(self, seed: int = 0):
        """The env (wrapped: {'image'} observations, OneHot actions). seed: the first episode's
        (a memory maze is rebuilt when reset with another seed: ~5 s)."""
        if self.env == "rooms":
            from envs import rooms
            with gl_errors("rooms"):
                return rooms.build(self.rooms, context=self.context, query=self.query,
                                   teleport=self.teleport, image_size=self.image_size)
        if self.env == "memory_maze":
            from envs import memorymaze
            from envs.wrappers import OneHotAction
            return OneHotAction(memorymaze.MemoryMaze(self.maze, seed=seed, image_size=self.image_size,
                                                      global_obs=True))
        from envs import gridmemory
        if self.env == "distracting_memory":
            return gridmemory.build_distracting(self.width, max_steps=3 * self.width + 30, image_size=self.image_size)
        return gridmemory.build_doors_keys(self.keys, max_steps=self.context + self.query - 1, image_size=self.image_size)

    def policy(self, inner, rng: np.random.Generator):
        if self.env == "rooms":
            return RoomsPolicy(inner, rng, self.noise)
        if self.env == "distracting_memory":
            return DistractingPolicy(inner, rng)
        if self.env == "memory_maze":
            return MazePolicy(inner, rng, self.noise)
        return DoorsKeysPolicy(inner, rng, self.context + self.query, self.noise)


def run_episode(env, spec: Spec, seed: int) -> dict[str, np.ndarray]:
    """One episode as arrays {key: (T, ...)} (layout in the module docstring)."""
    obs, info = env.reset(seed=seed)
    inner = env.unwrapped
    policy = spec.policy(inner, np.random.default_rng([seed, 1]))  # its own stream, not the env's
    no_action = np.zeros(env.action_space.n, np.float32)
    steps = [(obs["image"], no_action, 0.0, info)]
    length = spec.context + spec.query if spec.env != "distracting_memory" else None
    cut = length if spec.env == "memory_maze" else None  # its episodes outlast the dataset's
    terminated = truncated = False
    while not (terminated or truncated) and (cut is None or len(steps) < cut):
        interrupt.check()  # a Ctrl-C / SIGTERM stops a long episode within a step
        action = env.action_space.from_index(policy.act())
        obs, reward, terminated, truncated, info = env.step(action)
        if info.get("teleport_source", -1) >= 0:
            action = no_action  # paper Sec. 3.2: the agent is put there, it did not act
            policy.replan()
        steps.append((obs["image"], action, reward, info))
    T = len(steps)
    if length is not None and T != length:
        raise RuntimeError(f"{spec.name}: episode has {T} frames, expected {length}")
    arrays = {"image": np.stack([s[0] for s in steps]),                       # (T, S, S, 3)
              "action": np.stack([s[1] for s in steps]).astype(np.float32),   # (T, A)
              "reward": np.array([s[2] for s in steps], np.float32),          # (T,)
              "is_first": np.arange(T) == 0, "is_last": np.arange(T) == T - 1,
              "is_terminal": (np.arange(T) == T - 1) & terminated}
    for key in KEYS_OF[spec.env]:
        arrays[key] = np.array([s[3][INFO_KEY.get(key, key)] for s in steps], EXTRAS[key])
    if length is not None:
        arrays["phase"] = (np.arange(T) >= spec.context).astype(np.uint8)
    else:  # query = frames after the first one at the junction
        at = (arrays["cell"][:, 0] == inner.junction) & (arrays["cell"][:, 1] == 2)  # (T,)
        arrays["phase"] = (np.cumsum(at) - at > 0).astype(np.uint8)
    return arrays


_ENV: dict[Spec, object] = {}  # one env per process, reused across its episodes


def collect_one(spec: Spec, seed: int, index: int, out: str) -> tuple[int, int, float]:
    """Write episode `index` to `out`; returns (index, frames, seconds)."""
    start = time.perf_counter()
    if spec not in _ENV:
        close_envs()  # one MiniWorld env per process
        _ENV[spec] = spec.build(env_seed(seed, index))
    arrays = run_episode(_ENV[spec], spec, env_seed(seed, index))
    write_atomic(episode_path(out, index), arrays)
    return index, len(arrays["image"]), time.perf_counter() - start


def close_envs() -> None:
    while _ENV:
        _ENV.popitem()[1].close()


def episode_path(out: str, index: int) -> str:
    return os.path.join(out, f"episode-{index:06d}.npz")


def complete(path: str) -> bool:
    """The episode file is there and whole: its zip directory (written last) lists image and
    flags. Cheap (nothing is decompressed); a file cut short has no directory."""
    try:
        with zipfile.ZipFile(path) as f:
            return {"image.npy", "is_first.npy", "is_last.npy"} <= set(f.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _worker_start(stop, parent: int) -> None:
    """In each collection worker: leave Ctrl-C / SIGTERM to the parent, and exit at once when
    it sets `stop` or is gone (kill -9: this process is re-parented)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def watch():
        while not stop.wait(0.2):
            if os.getppid() != parent:
                break
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _collect_parallel(spec: Spec, seed: int, todo: list[int], out: str, workers: int, done):
    """collect_one for every index of `todo` in `workers` spawned processes; done(result) as
    each ends. A stop request or an error stops the workers within a second."""
    # spawn, never fork: a forked child of a process that rendered with GL hangs, and two
    # MiniWorld envs in one process corrupt each other (envs/make.py); this process renders nothing.
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    pool = concurrent.futures.ProcessPoolExecutor(
        min(workers, len(todo)), mp_context=ctx, initializer=_worker_start,
        initargs=(stop, os.getpid()))
    try:
        pending = {pool.submit(collect_one, spec, seed, i, out) for i in todo}
        while pending:
            interrupt.check()
            finished, pending = concurrent.futures.wait(
                pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                done(future.result())
    except BaseException:
        stop.set()  # the workers exit now, mid-episode (its temp file is removed on the rerun)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def check_folder(out: str, spec: Spec, seed: int) -> None:
    """Create `out` with dataset.yaml, or check that the one there has the same settings.
    Stale temp files of killed writes are removed."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"dataset folder {out} is a file: give another --memory.out")
    os.makedirs(out, exist_ok=True)
    remove_tmp(out)
    meta, path = {**asdict(spec), "seed": seed}, os.path.join(out, "dataset.yaml")
    if os.path.exists(path):
        saved = _read_meta(path)
        defaults = asdict(Spec("", 0, False, 0, 0, 0, 0, 0.0, 0))  # keys added later: older files lack them
        for key in sorted(set(saved) | set(meta)):
            if saved.get(key, defaults.get(key)) != meta.get(key):
                name = "memory.seed" if key == "seed" else key  # not the run's --seed
                raise ConfigError(f"{out} holds a dataset with {name}={saved.get(key, defaults.get(key))!r} but this "
                                 f"command gives {name}={meta.get(key)!r}: use another --memory.out or the same settings")
        return
    with open(path + ".tmp", "w") as f:
        YAML().dump(meta, f)
    os.replace(path + ".tmp", path)


def _read_meta(path: str) -> dict:
    """A dataset.yaml as a dict, or a one-line ConfigError naming it."""
    way_out = "restore it, or give another --memory.out"
    try:
        with open(path) as f:
            saved = YAML(typ="safe").load(f)
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not the dataset's settings: {way_out}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - undecodable bytes, every YAML parser error
        raise ConfigError(f"{path} is not valid YAML ({type(e).__name__}): {way_out}") from None
    if not isinstance(saved, dict):
        what = "nothing" if saved is None else "a " + type(saved).__name__
        raise ConfigError(f"{path} holds {what}, not the dataset's settings: {way_out}")
    return saved


def dataset_folder(config) -> str:
    """memory.out with '{name}' replaced by the dataset's name (`debug`: datasets/debug/{name});
    '' = datasets/<name>."""
    return (config.memory.out or os.path.join("datasets", "{name}")).replace(
        "{name}", Spec.from_config(config).name)


def collect(config) -> dict:
    """Write the missing episodes of the dataset `config` describes; returns counts and timings."""
    spec, m = Spec.from_config(config), config.memory
    out = dataset_folder(config)
    check_folder(out, spec, m.seed)
    todo = [i for i in range(m.episodes) if not complete(episode_path(out, i))]
    bar = None
    if config.run.progress:
        from tqdm import tqdm
        bar = tqdm(total=m.episodes, initial=m.episodes - len(todo), unit="episode", desc=spec.name, dynamic_ncols=True)
    frames, busy, start = 0, 0.0, time.perf_counter()

    def done(result):
        nonlocal frames, busy
        frames, busy = frames + result[1], busy + result[2]
        if bar is not None:
            bar.update(1)

    try:
        if m.workers == 1 or len(todo) <= 1:
            for i in todo:
                done(collect_one(spec, m.seed, i, out))
        else:
            _collect_parallel(spec, m.seed, todo, out, m.workers, done)
    finally:
        close_envs()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    return {"folder": out, "written": len(todo), "kept": m.episodes - len(todo), "frames": frames,
            "seconds": wall, "seconds_per_episode": busy / max(len(todo), 1)}


def main(argv=None) -> None:
    from common.cli import fail, parse, storage_failure
    interrupt.install()
    config = parse(sys.argv[1:] if argv is None else argv, prog="python -m memory.collect",
                   description="Generate an offline dataset for one of the paper's memory benchmarks.")
    try:
        print(f"size {config.size} (sizes follow the device unless named, as in main.py): "
              f"{config.memory.episodes} episodes into {dataset_folder(config)}", flush=True)
        stats = collect(config)
    except ConfigError as e:
        fail(str(e))
    except KeyboardInterrupt:  # every episode written so far is complete and kept
        raise SystemExit(interrupt.exit_code()) from None
    except OSError as e:
        if storage_failure(e) is None:
            raise
        fail(storage_failure(e))
    print(f"{stats['folder']}: wrote {stats['written']} episodes ({stats['frames']} frames) in "
          f"{stats['seconds']:.1f} s, {stats['seconds_per_episode']:.2f} s per episode per worker; "
          f"kept {stats['kept']} already there")


if __name__ == "__main__":
    main()
