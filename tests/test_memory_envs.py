"""The memory benchmarks (paper Sec. 3): envs, scripted policies and offline datasets.

Small settings throughout (short rooms episodes, hallways of a few cells). At most one MiniWorld
env is alive at a time: two in one process corrupt each other's GL state.
Shapes: image uint8 (64, 64, 3) per frame; dataset arrays (T, ...).
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import envs
from common.config import ConfigError, load_blocks, merge
from envs import env_seed, gridmemory, rooms
from memory import collect
from memory.collect import Spec, run_episode
from replay import Replay

TASKS = ["rooms_two", "rooms_ten_teleport", "distracting_memory_100", "multi_doors_keys_7"]


def _config(block: str, tmp_path, **overrides):
    overrides = {"run.progress": "false", "memory.out": str(tmp_path), **overrides}
    return merge(load_blocks(), [block], overrides)


@pytest.mark.parametrize("task", TASKS)
def test_env_contract(task):
    env = envs.make_env(task, seed=0)
    try:
        obs, _ = env.reset()
        first = obs["image"].copy()
        images = [first]
        for _ in range(30):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            assert env.observation_space.contains(obs) and isinstance(reward, float)
            images.append(obs["image"])
            if terminated or truncated:
                break
        images = np.stack(images)  # (T, 64, 64, 3)
        assert images.shape[1:] == (64, 64, 3) and images.dtype == np.uint8
        assert all(image.std() > 0 for image in images), "constant image"
        assert np.any(images != images[:1]), "images never change"
        np.testing.assert_array_equal(env.reset(seed=0)[0]["image"], first)  # seeded by make_env
    finally:
        env.close()


def test_task_names():
    assert envs.task_choices("rooms") == ["rooms_two", "rooms_two_teleport", "rooms_four",
                                          "rooms_four_teleport", "rooms_ten", "rooms_ten_teleport"]
    assert envs.parse_task("distracting_memory_400") == ("distracting_memory", "400")
    assert envs.parse_task("multi_doors_keys_5") == ("multi_doors_keys", "5")


def test_rooms_have_distinct_walls():
    env = rooms.build(10, context=5, query=5, teleport=False)
    try:
        inner = env.unwrapped
        for seed in range(3):
            env.reset(seed=seed)
            ids = inner.wall_ids  # (10,) PALETTE index per room
            looks = {(room.wall_tex_name, room.tint) for room in inner.rooms[:10]}
            assert len(set(ids.tolist())) == 10 and len(looks) == 10 and len(inner.rooms) == 10
            objects = [inner.room_of(e.pos) for e in inner.entities if e is not inner.agent]
            assert np.all(np.bincount(objects, minlength=10) >= 2)
            # Rendered: each room's walls, seen from its centre, have a different mean colour.
            colours = []
            for index in range(10):
                x, z = inner.room_centre(index)
                inner.agent.pos, inner.agent.dir = np.array([x, 0.0, z]), np.pi / 2  # facing -z wall
                colours.append(inner.render_obs()[20:40].reshape(-1, 3).mean(0))
            distances = np.linalg.norm(np.array(colours)[:, None] - np.array(colours)[None], axis=-1)
            assert np.all(distances[~np.eye(10, dtype=bool)] > 6)  # measured minimum ~12
    finally:
        env.close()


def test_policy_visits_every_room_within_the_context():
    spec = Spec("rooms", 4, False, 0, 0, 500, 1, 0.2, 64)  # Four Rooms' default context
    env = spec.build()
    try:
        for index in range(2):
            arrays = run_episode(env, spec, env_seed(0, index))
            assert set(arrays["room"][:500].tolist()) == {0, 1, 2, 3}
    finally:
        env.close()


def test_teleport_goes_to_a_context_pose():
    context, query = 60, 20
    spec = Spec("rooms", 2, True, 0, 0, context, query, 0.2, 64)
    env = spec.build()
    try:
        arrays = run_episode(env, spec, env_seed(0, 0))
    finally:
        env.close()
    source = arrays["teleport_source"]  # (T,)
    assert len(source) == context + query and np.flatnonzero(source >= 0).tolist() == [context]
    s = int(source[context])
    assert 0 <= s < context
    np.testing.assert_array_equal(arrays["pose"][context], arrays["pose"][s])
    np.testing.assert_array_equal(arrays["image"][context], arrays["image"][s])
    assert not arrays["action"][context].any() and arrays["phase"].tolist() == [0] * context + [1] * query


def _cue_tile(inner, image):
    """The 12x12 tile of the cue cell (2, 2) in the window of `image` (uint8 (64, 64, 3))."""
    ax, ay = inner.agent_pos
    dx, dy = 2 - ax + 2, 2 - ay + 2
    return image[gridmemory.STRIP + dy * 12:gridmemory.STRIP + dy * 12 + 12, 2 + dx * 12:2 + dx * 12 + 12]


@pytest.fixture
def hallway6():
    """A Distracting Memory env with a 6-cell hallway: (spec, wrapped env, inner env)."""
    spec = Spec("distracting_memory", 0, False, 6, 0, 0, 0, 0.0, 64)
    env = spec.build()
    yield spec, env, env.unwrapped
    env.close()


def test_distracting_memory_reward_and_cue(hallway6):
    spec, env, inner = hallway6
    rewards = []
    for index in range(100):
        seed = env_seed(0, index)
        obs, info = env.reset(seed=seed)
        cue = gridmemory.COLOURS[info["cue"]]
        pale = (gridmemory.constants.COLORS[cue] / 2).astype(np.uint8)
        np.testing.assert_array_equal(_cue_tile(inner, obs["image"])[6, 6], pale)  # cue in view
        ends = {y: inner.grid.get(inner.junction, y).color for y in (1, 3)}
        assert len(set(ends.values())) == 2 and cue in ends.values()
        arrays = run_episode(env, spec, seed)
        last = arrays["cell"][-1]
        assert arrays["is_terminal"][-1] and arrays["reward_step"].tolist() == [False] * (len(arrays["cell"]) - 1) + [True]
        assert arrays["reward"][-1] == float(ends[int(last[1])] == cue)  # 1 iff the cue's colour
        assert arrays["reward"][:-1].sum() == 0 and arrays["phase"][-1] == 1
        rewards.append(arrays["reward"][-1])
    assert 0.35 <= np.mean(rewards) <= 0.65


def test_multi_doors_keys_door_needs_its_key():
    env = gridmemory.build_doors_keys(3, max_steps=100)
    env.reset(seed=0)
    inner = env.unwrapped
    for x in range(inner.width):  # clear the room's keys; we place them ourselves
        for y in range(3, 8):
            if isinstance(inner.grid.get(x, y), gridmemory.Key):
                inner.grid.set(x, y, None)
    act = lambda a: env.step(env.action_space.from_index(a))  # noqa: E731
    door, (x, _, front) = inner.doors[0], inner.slots[0]
    other = next(c for c in gridmemory.COLOURS if c != door.color)
    inner.agent_pos, inner.agent_dir = (x, front), 3  # in front of the top door, facing it
    inner.held = {other}
    assert act(gridmemory.OPEN)[1] == 0.0 and door.is_locked and not door.is_open  # wrong key
    inner.agent_dir = 1  # face down; a key of the door's colour lies there
    inner.grid.set(x, front + 1, gridmemory.Key(door.color))
    obs, *_ , info = act(gridmemory.PICKUP)
    assert inner.held == {other, door.color} and inner.grid.get(x, front + 1) is None
    assert obs["image"][:gridmemory.STRIP].any()  # the strip shows the held keys
    inner.agent_dir = 3
    _, reward, _, _, info = act(gridmemory.OPEN)
    assert reward == 1.0 and door.is_open and not door.is_locked and inner.held == {other}
    assert info["door_open"].tolist() == [True, False, False]
    assert act(gridmemory.OPEN)[1] == 0.0 and door.is_open  # it stays open
    act(gridmemory.FORWARD)
    assert tuple(inner.agent_pos) == (x, 2)  # through the open door


def test_multi_doors_keys_policy_opens_doors():
    spec = Spec("multi_doors_keys", 0, False, 0, 3, 100, 300, 0.1, 64)
    arrays = run_episode(spec.build(), spec, env_seed(0, 0))
    opened = arrays["door_open"][-1]  # (3,)
    assert opened.all() and arrays["reward"].sum() == 3 and not arrays["held"][-1].any()
    assert (np.diff(arrays["door_open"].astype(int), axis=0) >= 0).all()  # doors never close


def _load(folder):
    return {name: dict(np.load(os.path.join(folder, name))) for name in sorted(os.listdir(folder))
            if name.endswith(".npz")}


@pytest.mark.parametrize("block, overrides", [
    ("distracting_memory", {"memory.width": "8", "memory.episodes": "3"}),
    ("multi_doors_keys", {"memory.episodes": "2", "memory.context": "30", "memory.query": "40"}),
    ("two_rooms_teleport", {"memory.episodes": "2", "memory.context": "15", "memory.query": "10"}),
])
def test_dataset_deterministic_reused_and_loadable(block, overrides, tmp_path):
    first = collect.collect(_config(block, tmp_path / "a", **overrides))
    collect.collect(_config(block, tmp_path / "b", **overrides))
    a, b = _load(tmp_path / "a"), _load(tmp_path / "b")
    assert first["written"] == int(overrides["memory.episodes"]) and a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            np.testing.assert_array_equal(a[name][key], b[name][key], err_msg=f"{name} {key}")
    episode = next(iter(a.values()))
    T = len(episode["image"])
    assert episode["image"].shape == (T, 64, 64, 3) and episode["action"].dtype == np.float32
    assert episode["is_first"][0] and episode["is_last"][-1] and not episode["action"][0].any()
    # A rerun keeps the files there (same mtimes) and writes nothing.
    mtimes = {n: os.path.getmtime(tmp_path / "a" / n) for n in a}
    again = collect.collect(_config(block, tmp_path / "a", **overrides))
    assert again["written"] == 0 and {n: os.path.getmtime(tmp_path / "a" / n) for n in a} == mtimes
    replay = Replay(str(tmp_path / "a"), 10**5, readonly=True)
    streams = list(replay.streams())
    assert len(replay) == sum(len(e["image"]) for e in a.values()) and len(streams) == len(a)
    np.testing.assert_array_equal(streams[0]["image"], a[min(a)]["image"])


def test_dataset_parallel_equals_serial_and_settings_are_checked(tmp_path):
    overrides = {"memory.width": "5", "memory.episodes": "4"}
    collect.collect(_config("distracting_memory", tmp_path / "serial", **overrides))
    collect.collect(_config("distracting_memory", tmp_path / "parallel", **overrides, **{"memory.workers": "2"}))
    serial, parallel = _load(tmp_path / "serial"), _load(tmp_path / "parallel")
    assert serial.keys() == parallel.keys() and len(serial) == 4
    for name in serial:
        for key in serial[name]:
            np.testing.assert_array_equal(serial[name][key], parallel[name][key])
    with pytest.raises(ConfigError, match="width"):
        collect.collect(_config("distracting_memory", tmp_path / "serial", **{"memory.width": "6"}))


def test_cli(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "memory.collect", "--configs", "distracting_memory",
                         "--memory.width", "4", "--memory.episodes", "2", "--memory.out", str(tmp_path),
                         "--run.progress", "false"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "wrote 2 episodes" in ok.stdout and len(_load(tmp_path)) == 2
    bad = subprocess.run([sys.executable, "-m", "memory.collect", "--memory.env", "mazes"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "memory.env" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_distracting_memory_distractors_vary_and_the_cue_leaves_view(hallway6):
    spec, env, inner = hallway6
    hallways = []
    for index in range(3):
        seed = env_seed(1, index)
        env.reset(seed=seed)
        hallways.append(tuple(inner.grid.get(x, 2).color for x in range(4, inner.junction)))
        arrays = run_episode(env, spec, seed)
        # the 5x5 window is centred on the agent: from hallway cell x >= 5 on, the cue cell (2, 2)
        # is more than 2 cells away, so the cue must be remembered, not seen
        in_hallway = arrays["cell"][:, 0] >= 5
        assert in_hallway.any() and (np.abs(arrays["cell"][in_hallway, 0] - 2) > 2).all()
    assert len(set(hallways)) == 3  # distractors are drawn anew each episode


def test_memory_maze_dataset_holds_the_probe_targets_and_the_policy_explores(tmp_path):
    overrides = {"memory.episodes": "1", "memory.context": "60", "memory.query": "60"}
    collect.collect(_config("memory_maze_probe", tmp_path / "a", **overrides))
    collect.collect(_config("memory_maze_probe", tmp_path / "b", **overrides))
    a, b = _load(tmp_path / "a"), _load(tmp_path / "b")
    for key in a["episode-000000.npz"]:  # deterministic from the seed
        np.testing.assert_array_equal(a["episode-000000.npz"][key], b["episode-000000.npz"][key], err_msg=key)
    e = a["episode-000000.npz"]
    T = 120
    assert e["image"].shape == (T, 64, 64, 3) and e["maze_layout"].shape == (T, 9, 9)
    assert e["targets_pos"].shape == e["targets_vec"].shape == (T, 3, 2)
    assert (e["maze_layout"] == e["maze_layout"][0]).all() and np.bincount(e["phase"]).tolist() == [60, 60]
    layout, pos, heading = e["maze_layout"][0], e["agent_pos"], e["agent_dir"]
    assert all(layout[int(y), int(x)] == 1 for x, y in pos)  # layout[y, x], 1 = free, agent inside
    np.testing.assert_allclose(np.linalg.norm(heading, axis=-1), 1, atol=1e-4)
    rel = e["targets_pos"] - pos[:, None]  # (T, K, 2): targets_vec = (to the right, ahead)
    right = np.stack([heading[:, 1], -heading[:, 0]], -1)[:, None]
    np.testing.assert_allclose(e["targets_vec"][..., 0], (rel * right).sum(-1), atol=1e-3)
    np.testing.assert_allclose(e["targets_vec"][..., 1], (rel * heading[:, None]).sum(-1), atol=1e-3)
    # The waypoint driver moves through the maze: several cells, far from where it started.
    assert len({(int(x), int(y)) for x, y in pos}) >= 6
    assert np.linalg.norm(pos - pos[0], axis=-1).max() > 2.5
    assert e["action"][1:].any(-1).all() and not e["action"][0].any()


@pytest.mark.parametrize("overrides, message", [
    ({"memory.maze": "7x7"}, "memory.maze.*choices: 9x9, 11x11, 13x13, 15x15"),
    ({"memory.context": "600", "memory.query": "500"}, "at most 1001"),
])
def test_memory_maze_settings_are_checked(overrides, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        Spec.from_config(_config("memory_maze_probe", tmp_path, **overrides))


def test_datasets_written_before_a_spec_key_existed_still_load(tmp_path):
    config = _config("distracting_memory", tmp_path, **{"memory.width": "4"})
    spec = Spec.from_config(config)
    collect.check_folder(str(tmp_path), spec, 0)
    text = (tmp_path / "dataset.yaml").read_text()
    assert "maze:" in text
    (tmp_path / "dataset.yaml").write_text("".join(l for l in text.splitlines(True) if not l.startswith("maze:")))
    collect.check_folder(str(tmp_path), spec, 0)  # the missing key takes its default
    with pytest.raises(ConfigError, match="maze"):
        collect.check_folder(str(tmp_path), Spec(**{**spec.__dict__, "maze": "9x9"}), 0)


def test_training_seeds_share_a_dataset_and_memory_seed_draws_another(tmp_path):
    """memory.report trains several seeds on one dataset: the run's seed must not change (or refuse)
    the episodes; memory.seed is the dataset's own seed."""
    overrides = {"memory.width": "6", "memory.episodes": "2"}
    collect.collect(_config("distracting_memory", tmp_path / "a", **overrides))
    again = collect.collect(_config("distracting_memory", tmp_path / "a", seed="1", **overrides))
    assert again["written"] == 0  # seed 1 reuses seed 0's dataset
    collect.collect(_config("distracting_memory", tmp_path / "b", **{**overrides, "memory.seed": "1"}))
    a, b = _load(tmp_path / "a"), _load(tmp_path / "b")
    assert any(not np.array_equal(a[n]["image"], b[n]["image"]) for n in a)  # other episodes
    with pytest.raises(ConfigError, match="memory.seed=0 but this command gives memory.seed=1"):
        collect.collect(_config("distracting_memory", tmp_path / "a", **{**overrides, "memory.seed": "1"}))


@pytest.mark.parametrize("env", ["distracting_memory", "multi_doors_keys"])
def test_a_grid_episode_depends_on_exactly_the_keys_its_env_reads(env):
    """UNUSED_BY_ENV (which keys may differ when a run resumes, and which the dataset spec drops)
    against the env and its policy themselves: an episode built from a spec with one field changed
    is the same for every field the table lists and differs for every other one. (The rooms and
    Memory Maze envs are left out: MiniWorld allows one env per process, a maze episode takes ~14 s.)"""
    import dataclasses
    from common.config import UNUSED_BY_ENV
    base = Spec(env, rooms=4, teleport=False, width=6, keys=3, context=12, query=10, noise=0.2,
                image_size=16, maze="9x9")
    changed = {"rooms": 2, "teleport": True, "width": 8, "keys": 5, "context": 14, "query": 12,
               "noise": 0.6, "maze": "11x11"}

    def episode(spec):
        return run_episode(spec.build(seed=3), spec, seed=3)
    reference = episode(base)
    for key, value in changed.items():
        other = episode(dataclasses.replace(base, **{key: value}))
        same = other.keys() == reference.keys() and all(
            np.array_equal(other[k], reference[k]) for k in reference)
        assert same == (f"memory.{key}" in UNUSED_BY_ENV[env]), (env, key)


def doors_keys_episodes(keys: int, size: int, count: int = 3, context: int = 60, query: int = 60) -> list[dict]:
    spec = Spec("multi_doors_keys", 0, False, 0, keys, context, query, 0.1, size)
    return [run_episode(spec.build(), spec, env_seed(0, i)) for i in range(count)]


@pytest.mark.parametrize("keys, size", [(3, 16), (7, 16), (3, 32), (3, 64)])
def test_multi_doors_keys_frames_read_back_the_held_keys_and_doors(keys, size):
    """memory.evaluate.read_doors_keys on recorded frames gives back the recorded keys and doors
    (envs.gridmemory.read_layout matches render_view); a frame changed to show another state is read
    as wrong exactly there."""
    from memory import evaluate
    episodes = doors_keys_episodes(keys, size)
    frames = np.stack([e["image"] for e in episodes])  # (3, 120, S, S, 3)
    read = evaluate.read_doors_keys(episodes, frames, 0)
    assert read["held"].all() and read["door"][read["visible"]].all()
    assert 0.1 < read["visible"].mean() < 0.9
    held = np.stack([e["held"] for e in episodes])
    assert held.any() and (~held).any(-1).all()  # keys were held, never all eight

    labels, _, cells, opened, locked = gridmemory.read_layout(size)
    changed = frames.copy()
    changed[..., (labels >= 0) & (labels < gridmemory.WINDOW), :] = 0  # blank the strip everywhere
    assert (evaluate.read_doors_keys(episodes, changed, 0)["held"] == ~held.any(-1)).all()
    b, t, k = map(int, np.argwhere(read["visible"])[0])  # one visible door: show the other state
    e, view = episodes[b], gridmemory.VIEW
    agent, (x, y, _) = e["cell"][t], gridmemory.door_cells(keys)[k]
    cell = (x - agent[0] + view // 2) + view * (y - agent[1] + view // 2)
    changed = frames.copy()
    changed[b, t].reshape(-1, 3)[cells[cell]] = (locked if e["door_open"][t, k] else opened)[e["door_color"][t, k]]
    read = evaluate.read_doors_keys(episodes, changed, 0)
    visible = read["visible"]  # where a door is out of view, "door" means nothing
    assert not read["door"][b, t, k] and read["door"][visible].sum() == visible.sum() - 1


def test_multi_doors_keys_refuses_frames_too_small_to_read():
    with pytest.raises(ValueError, match="8 px"):
        gridmemory.read_layout(8)  # 1.5 px per cell
    config = _config("multi_doors_keys", "/tmp", **{"env.image_size": "8"})
    with pytest.raises(ConfigError, match="env.image_size' must be at least 16 for multi_doors_keys"):
        Spec.from_config(config)
