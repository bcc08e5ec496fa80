"""Issue 19: no bad checkpoint ever, one clear line for every bad value or file, clean exits.

One table per class of fault. Most rows call the checking code in-process and expect exit status 2
(SystemExit) with ONE stderr line naming the value or file, and the files there left as they were;
a few end-to-end runs of main.py check the exit code, stderr and that the previous checkpoint and
replay are byte-identical afterwards.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import main
from common import checkpoint
from common.cli import parse, prepare_logdir
from common.config import ConfigError
from common.health import Diverged, Health, adamw, close_all, load_optimizer
from common.logger import Logger
from memory import collect
from memory.train import load_episodes
from replay import Replay
from replay.buffer import ChunkMismatch
from tests.test_agent import agent_for, make_batch

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEBUG = ["--configs", "debug", "miniworld", "s4wm"]


def one_line(capsys, needle: str) -> str:
    """The single stderr line of a user error; it names `needle` and holds no traceback."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    return lines[0]


def digest(folder) -> dict:
    """{relative path: sha256} of every file below `folder` (byte-identical checks)."""
    folder = pathlib.Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 2, 3: every value is checked for its meaning before anything runs --------------------------
@pytest.mark.parametrize("args, needle", [
    (["--train.train_ratio", "nan"], "'train.train_ratio' must be a finite number"),
    (["--train.train_ratio", "inf"], "'train.train_ratio' must be a finite number"),
    (["--configs", "debug", "tssm", "--tssm.n_heads", "3"], "'tssm.n_heads' (3) must divide"),
    (["--s4wm.d_state", "7"], "'s4wm.d_state' must be >= 2 and even, got 7"),
    (["--s5wm.d_state", "9"], "'s5wm.d_state' must be >= 2 and even"),
    (["--env.action_repeat", "-2"], "'env.action_repeat' must be >= 0"),
    (["--env.time_limit", "-1"], "'env.time_limit' must be >= 0"),
    (["--env.image_size", "48"], "'env.image_size' must be >= 8 and a power of two"),
    (["--wm.lr", "-0.001"], "'wm.lr' must be in (0, 1]"),
    (["--wm.lr", "1e6"], "'wm.lr' must be in (0, 1]"),
    (["--ac.actor_lr", "1e6"], "'ac.actor_lr' must be in (0, 1]"),
    (["--ac.critic_lr", "0"], "'ac.critic_lr' must be in (0, 1]"),
    (["--wm.eps", "-1e-8"], "'wm.eps' must be > 0"),
    (["--ac.eps", "0"], "'ac.eps' must be > 0"),
    (["--wm.grad_clip", "-1"], "'wm.grad_clip' must be > 0"),
    (["--ac.grad_clip", "-100"], "'ac.grad_clip' must be > 0"),
    (["--run.checkpoint_every", "-1"], "'run.checkpoint_every' must be >= 0"),
    (["--ac.gamma", "1.5"], "'ac.gamma' must be in (0, 1]"),
    (["--wm.unimix", "1"], "'wm.unimix' must be in [0, 1)"),
    (["--seed", "-3"], "'seed' must be in [0, 4294967296)"),
    (["--s4wm.dt_min", "0.5", "--s4wm.dt_max", "0.1"], "'s4wm.dt_min' (0.5) must be <= s4wm.dt_max"),
    (["--wm.lr", "1e-4", "--wm.lr", "1e-3"], "'--wm.lr' is given twice"),
    (["--configs"], "--configs"),  # argparse's own errors are one line too
])
def test_bad_values_exit_2_with_one_line(args, needle, capsys):
    with pytest.raises(SystemExit) as e:
        parse(args)
    assert e.value.code == 2
    one_line(capsys, needle)


@pytest.mark.parametrize("args, needle", [
    (["--train.batch_size", "100000"], "a batch could never be sampled"),
    (["--replay.capacity", "50"], "replay.capacity (50) must be >="),
    (["--wm.d_model", "40000"], "lower wm.d_model"),  # ~150 GB of weights: estimated, not built
    (["--replay.capacity", "100000000", "--steps", "100000000"], "lower replay.capacity"),
])
def test_run_level_checks_fail_before_anything_is_written(args, needle, capsys, tmp_path):
    config = parse([*DEBUG, "--logdir", str(tmp_path / "run"), *args])
    with pytest.raises(SystemExit) as e:
        main.run(config, torch.device("cpu"))
    assert e.value.code == 2
    one_line(capsys, needle)
    assert not (tmp_path / "run").exists()  # a later, corrected command starts afresh


def test_a_replay_capacity_beyond_the_run_allocates_only_what_the_run_collects(tmp_path):
    """replay.capacity 1e11 (745 GB of ring indices) with a 300-step run: the ring has room for
    what the run can collect, its 300 steps and a reset observation per env at every (re)start
    (it used to allocate the capacity and die with a MemoryError traceback)."""
    from agent.experience import Collector
    config = parse([*DEBUG, "--replay.capacity", "100000000000", "--logdir", str(tmp_path)])
    collector = Collector(config, tmp_path)
    try:
        assert collector.replay.capacity == 2 * config.steps + config.env.envs == 601
    finally:
        collector.close()
    from common.resources import replay_steps
    assert replay_steps(parse([*DEBUG, "--replay.capacity", "200"])) == 200  # the capacity binds
    assert replay_steps(config, ranks=2) == 2 * 150 + 1  # each rank collects its share of the steps


def test_configs_given_twice_merge_in_order_and_offline_needs_a_memory_task(capsys):
    config = parse(["--configs", "debug", "--configs", "tssm", "dmc"])
    assert (config.steps, config.backbone, config.task) == (300, "tssm", "dmc_walker_walk")
    with pytest.raises(SystemExit) as e:
        main.offline_name(parse(["--configs", "debug", "miniworld", "--mode", "offline"]))
    assert e.value.code == 2
    one_line(capsys, "(four_rooms, a rooms dataset), not on task miniworld_FourRooms")
    assert main.offline_name(parse(["--configs", "four_rooms_teleport"])).endswith("teleport")
    wider = parse(["--configs", "distracting_memory", "--memory.width", "200"])
    assert main.offline_name(wider) == "offline_distracting_memory_200"  # the family decides


# ---- 4: every file read or written gives one line, exit 2, and loses nothing --------------------
@pytest.fixture
def logdir(tmp_path):
    """A run folder as a previous run left it: config.yaml, a checkpoint, replay chunks."""
    config = parse([*DEBUG, "--logdir", str(tmp_path / "run")])
    path = prepare_logdir(config)
    checkpoint.save(path / "checkpoint.pt", {"step": 5, "agent": {"w": torch.ones(3)}})
    replay = Replay(str(path / "replay"), 100, chunk_len=4, spec=SPEC)
    for t in range(6):
        replay.add(step_of(t))
    replay.flush()
    return config, path


SPEC = {"image": ((64, 64, 3), np.uint8), "action": ((3,), np.float32),
        "reward": ((), np.float32), "is_first": ((), bool), "is_last": ((), bool),
        "is_terminal": ((), bool)}


def step_of(t: int, size: int = 64) -> dict:
    return {"image": np.full((size, size, 3), t, np.uint8), "action": np.zeros(3, np.float32),
            "reward": np.float32(t), "is_first": t == 0, "is_last": False, "is_terminal": False}


def _write(path: pathlib.Path, content):
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize("content, needle", [
    ("", "config.yaml is empty"),
    (bytes(range(256)) * 4, "config.yaml is not text"),
    ("a: [1, 2\n", "config.yaml is not valid YAML"),
    ("- 1\n- 2\n", "config.yaml holds a list"),
    ("DIR", "config.yaml is a directory"),
    ("backbone: rssm\n", "backbone='rssm'"),
])
def test_a_bad_saved_config_stops_the_resume(logdir, content, needle, capsys):
    config, path = logdir
    _write(path / "config.yaml", content)
    before = digest(path)
    with pytest.raises(SystemExit) as e:
        prepare_logdir(config)
    assert e.value.code == 2
    one_line(capsys, needle)
    assert digest(path) == before


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_a_logdir_that_is_or_lies_under_a_file(tmp_path, where, capsys):
    (tmp_path / "f").write_text("mine")
    target = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    with pytest.raises(SystemExit) as e:
        prepare_logdir(parse([*DEBUG, "--logdir", str(target)]))
    assert e.value.code == 2 and (tmp_path / "f").read_text() == "mine"
    one_line(capsys, f"{tmp_path / 'f'} is a file")


def test_an_unwritable_logdir_fails_in_one_line(logdir, monkeypatch, capsys):
    """Root ignores permission bits, so the refusal of the file system is planted."""
    config, path = logdir
    before = digest(path)

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(pathlib.Path, "write_text", refuse)
    with pytest.raises(SystemExit) as e:
        prepare_logdir(config)
    assert e.value.code == 2
    one_line(capsys, "config.yaml.tmp: Permission denied")
    assert digest(path) == before


def test_stale_temporary_files_are_removed_at_start(logdir):
    config, path = logdir
    stale = [path / "checkpoint.pt.tmp", path / "config.yaml.tmp", path / "replay" / ".x.npz.tmp",
             path / "videos" / "eval_policy_000000100.tmp.mp4"]
    for p in stale:
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"half")
    kept = digest(path / "replay")
    kept.pop(".x.npz.tmp")
    prepare_logdir(config)
    assert not any(p.exists() for p in stale) and digest(path / "replay") == kept


def test_a_logdir_in_use_by_another_run_is_left_alone(logdir, capsys):
    """A second run on a live run's folder stops with one line before it deletes the live run's
    half-written files; once the owner is gone (killed: the OS drops its lock) the folder resumes."""
    config, path = logdir
    live = path / "checkpoint.pt.tmp"
    live.write_bytes(b"being written")
    from common import cli
    for handle in cli._HELD.values():  # the fixture's run (this process) has ended
        handle.close()
    cli._HELD.clear()
    owner = subprocess.Popen(
        [sys.executable, "-c", "import pathlib, sys, time; from common.cli import lock_logdir; "
         f"lock_logdir(pathlib.Path({str(path)!r}).parent / {path.name!r}); print('held', flush=True); "
         "time.sleep(60)"], cwd=pathlib.Path(main.__file__).parent, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "held"
        with pytest.raises(SystemExit) as e:
            prepare_logdir(config)
        assert e.value.code == 2
        one_line(capsys, f"in use by another run (pid {owner.pid})")
        assert live.read_bytes() == b"being written"
    finally:
        owner.kill()
        owner.wait()
    prepare_logdir(config)  # the lock died with its process
    assert not live.exists()  # now a stale file of a dead run, removed


FIELDS = main.FIELDS


@pytest.mark.parametrize("payload, needle", [
    ({"agent": {}, "updates": 0, "ratio_done": 0, "rng": {}, "sampler": {}},
     "lacks the field 'step'"),
    ({"agent": {}, "step": "7", "updates": 0, "ratio_done": 0, "rng": {}, "sampler": {}},
     "field 'step' is '7' (str), expected a non-negative int"),
    ({"agent": [1], "step": 7, "updates": 0, "ratio_done": 0, "rng": {}, "sampler": {}},
     "field 'agent'"),
    ({"agent": {"w": torch.tensor([1.0, float("nan")])}, "step": 7, "updates": 0,
      "ratio_done": 0, "rng": {}, "sampler": {}}, "agent.w holds non-finite values"),
    ([1, 2], "holds a list"),
    (b"garbage", "is unreadable"),
])
def test_a_bad_checkpoint_is_refused_in_one_line(tmp_path, payload, needle):
    path = tmp_path / "checkpoint.pt"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError) as e:
        checkpoint.load(path, FIELDS)
    assert needle in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    assert path.read_bytes() == before


@pytest.mark.parametrize("text", ["", "\x00\x01\xff garbage", "env: [rooms\n", "- 1\n", "DIR"])
def test_a_garbage_dataset_yaml_is_refused_in_one_line(tmp_path, text):
    spec = collect.Spec("rooms", 2, False, 0, 0, 4, 4, 0.2, 64)
    collect.check_folder(str(tmp_path), spec, 0)
    _write(tmp_path / "dataset.yaml", text.encode("latin-1") if "\x00" in text else text)
    before = digest(tmp_path)
    with pytest.raises(ConfigError) as e:
        collect.check_folder(str(tmp_path), spec, 0)
    assert "dataset.yaml" in str(e.value) and "\n" not in str(e.value)
    assert digest(tmp_path) == before


def test_a_replay_chunk_of_another_shape_is_named_and_the_others_load(logdir):
    _, path = logdir
    folder = path / "replay"
    other = Replay(str(folder / "other"), 100, chunk_len=4)
    for t in range(4):
        other.add(step_of(t, size=32))
    (name,) = [p for p in (folder / "other").glob("*.npz")]
    shutil.move(name, folder / name.name)
    before = digest(folder)
    with pytest.raises(ChunkMismatch) as e:
        Replay(str(folder), 100, spec=SPEC)
    assert name.name in str(e.value) and "(32, 32, 3)" in str(e.value)
    assert "\n" not in str(e.value) and digest(folder) == before
    (folder / name.name).unlink()
    assert len(Replay(str(folder), 100, spec=SPEC)) == 6  # the run's own chunks: all of them


# ---- 1: a good checkpoint is never replaced by a bad one ----------------------------------------
@pytest.mark.parametrize("backbone", ["s4wm", "tssm"])
@pytest.mark.parametrize("part", ["wm.encoder", "ac.actor", "ac.critic"])
def test_nonfinite_weights_skip_the_update_without_raising(backbone, part):
    """Invalid distribution parameters (nan logits, nan std) count as a non-finite update."""
    agent = agent_for(backbone)
    with torch.no_grad():
        next(p for n, p in agent.named_parameters() if n.startswith(part)).fill_(float("nan"))
    before = {k: v.clone() for k, v in agent.named_parameters() if k.startswith("ac.")}
    metrics, carried, ok = agent.update(make_batch())
    assert not ok and metrics == {} and carried is None
    after = dict(agent.named_parameters())
    for key, value in before.items():  # the actor-critic never stepped
        assert torch.equal(value, after[key]) or value.isnan().any(), key


@pytest.mark.parametrize("discrete", [True, False])
def test_acting_with_a_nonfinite_policy_gives_nan_rows_not_an_exception(discrete):
    from agent.actor_critic import ActorCritic
    torch.manual_seed(0)
    ac = ActorCritic(feat_size=4, act_dim=2, discrete=discrete, units=8, layers=1, bins=15)
    feat = torch.randn(3, 4)
    feat[1] = float("nan")
    for greedy in (False, True):
        action = ac.act(feat, greedy)
        assert action[1].isnan().all() and action[[0, 2]].isfinite().all()


@pytest.mark.parametrize("key, network", [("wm.lr", "world model"), ("ac.actor_lr", "actor"),
                                          ("ac.critic_lr", "critic")])
def test_a_step_that_blows_the_weights_up_is_detected(key, network):
    agent = agent_for("rssm", **{key: "1.0"})
    with torch.no_grad():  # non-zero rewards and values: the actor gets a real gradient
        for net in (agent.ac.critic, agent.wm.reward_head):
            net.net[-1].weight.normal_(0.0, 0.3)
    with pytest.raises(Diverged, match=f"the {network} diverged.*lower {key}"):
        agent.update(make_batch())
    healthy = agent_for("rssm")  # the same batch at the default rates is not flagged
    assert healthy.update(make_batch())[2]


def test_checkpoint_save_refuses_nonfinite_tensors(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"step": 1, "w": torch.ones(2)})
    before = path.read_bytes()
    with pytest.raises(checkpoint.NonFiniteCheckpoint, match="w.1 holds non-finite"):
        checkpoint.save(path, {"step": 2, "w": [torch.ones(2), torch.tensor([float("inf")])]})
    assert path.read_bytes() == before and not (tmp_path / "checkpoint.pt.tmp").exists()


def test_health_saves_only_between_good_updates_and_stops_after_patience(capsys):
    health = Health(3, "runs/x")
    assert health.saveable
    health.begin()
    assert not health.saveable  # mid-update: an exception here must not save
    health.end(False, 10)
    health.fault(11, "non-finite policy", "random actions instead")
    assert not health.saveable and health.bad == 2
    health.begin()
    health.end(True, 12)
    assert health.saveable and health.bad == 0
    for at in (13, 14):
        health.fault(at)
    with pytest.raises(SystemExit) as e:
        health.fault(15)
    assert e.value.code == 2 and "last good checkpoint in runs/x is kept" in capsys.readouterr().err


def test_clean_up_runs_every_step_and_reports_one_error():
    ran = []

    def broken():
        ran.append("broken")
        raise OSError(28, "No space left on device")
    close_all([broken, None, lambda: ran.append("after")], error=OSError(28, "first"))
    assert ran == ["broken", "after"]  # the loop's own error goes up alone
    with pytest.raises(OSError, match="No space"):
        close_all([broken], error=None)


# ---- 6, 7: collection workers, the split by index, logs after a resume --------------------------
def test_a_truncated_episode_is_collected_again_and_the_split_is_by_index(tmp_path):
    config = parse(["--configs", "multi_doors_keys", "--memory.out", str(tmp_path),
                    "--memory.context", "4", "--memory.query", "4", "--memory.episodes", "5",
                    "--offline.test_episodes", "2", "--run.progress", "false"])
    collect.collect(config)
    files = sorted(tmp_path.glob("episode-*.npz"))
    whole = files[1].read_bytes()
    files[1].write_bytes(whole[:len(whole) // 2])  # a copy cut short
    kept = {f: f.stat().st_mtime_ns for f in files if f != files[1]}
    assert collect.collect(config)["written"] == 1 and files[1].read_bytes() == whole
    assert {f: f.stat().st_mtime_ns for f in kept} == kept
    # episode 4 (a test episode) unreadable: the split stays by index, nothing moves to train
    files[4].write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="episode-000004"):
        train, test = load_episodes(str(tmp_path), 5, 2)
    reference = collect.run_episode(collect.Spec.from_config(config).build(),
                                    collect.Spec.from_config(config), collect.env_seed(0, 3))
    assert len(train) == 3 and len(test) == 1
    np.testing.assert_array_equal(test[0]["image"], reference["image"])


def test_metrics_after_a_resume_start_past_the_checkpoint(tmp_path):
    rows = [{"step": s, "x": 1.0} for s in (50, 100, 150, 200)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 250, "x"'  # cut by kill -9
    (tmp_path / "metrics.jsonl").write_text(text)
    logger = Logger(tmp_path, resume_step=100)  # the checkpoint is at step 100
    logger.scalar("x", 2.0)
    logger.write(150)
    logger.close()
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [50, 100, 150]


# ---- end to end: main.py ------------------------------------------------------------------------
def main_py(*args, timeout=240, **kw):
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kw)


def error_lines(proc) -> list[str]:
    return [l for l in proc.stderr.splitlines() if l.strip()]


@pytest.fixture(scope="module")
def diverging_run(tmp_path_factory):
    """A run whose first update diverges (wm.lr 1.0): its checkpoint is the prefill one, and
    rerunning it fails again without touching checkpoint or replay."""
    logdir = tmp_path_factory.mktemp("e2e") / "run"
    args = [*DEBUG, "--logdir", str(logdir), "--wm.lr", "1.0", "--steps", "200"]
    first = main_py(*args)
    assert first.returncode == 2, first.stderr[-2000:]
    return logdir, args, first


def collected(logdir) -> dict:
    """Digests of what a run must never lose or replace: its checkpoint and replay."""
    return {k: v for k, v in digest(logdir).items() if k == "checkpoint.pt" or
            k.startswith("replay/")}


def assert_kept(before: dict, logdir) -> None:
    """Every file that was there is byte-identical (new replay chunks may be added)."""
    after = digest(logdir)
    assert {k: after.get(k) for k in before} == before


def test_a_diverging_run_keeps_its_last_good_checkpoint(diverging_run):
    logdir, args, first = diverging_run
    lines = error_lines(first)
    assert len(lines) == 1 and "error: the world model diverged" in lines[0], lines
    saved = torch.load(logdir / "checkpoint.pt", weights_only=True)
    assert (saved["step"], saved["updates"]) == (100, 0)  # from before the diverging update
    before = collected(logdir)
    again = main_py(*args)  # the rerun resumes from it, and stops the same way
    assert again.returncode == 2 and "resuming" in again.stdout
    lines = error_lines(again)
    assert len(lines) == 1 and "diverged" in lines[0], lines
    assert_kept(before, logdir)


@pytest.mark.parametrize("fault, needle", [
    ("full_disk", "cannot write {logdir}/metrics.jsonl: No space left on device"),
    ("empty_config", "config.yaml is empty"),
    ("foreign_chunk", "does not fit this run"),
])
def test_file_faults_end_to_end(diverging_run, tmp_path, fault, needle):
    source, args, _ = diverging_run
    logdir = tmp_path / "run"
    shutil.copytree(source, logdir)
    args = [a if a != str(source) else str(logdir) for a in args]
    if fault == "full_disk":  # every write to the metrics log fails as on a full disk
        (logdir / "metrics.jsonl").unlink()
        (logdir / "metrics.jsonl").symlink_to("/dev/full")
        args += ["--run.log_every", "1"]  # logs at step 101, before any update is due
    elif fault == "empty_config":
        (logdir / "config.yaml").write_text("")
    else:
        chunk = next((logdir / "replay").glob("*.npz"))
        arrays = dict(np.load(chunk))
        arrays["image"] = arrays["image"][:, :32, :32]
        np.savez(logdir / "replay" / chunk.name.replace("-000000-", "-000009-"), **arrays)
    before = collected(logdir)
    proc = main_py(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and needle.format(logdir=logdir) in lines[0], lines
    assert "Traceback" not in proc.stderr
    assert_kept(before, logdir)


def test_sigterm_saves_and_exits_143(tmp_path):
    logdir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "main.py", *DEBUG, "--logdir", str(logdir),
                             "--steps", "100000"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not (logdir / "metrics.jsonl").exists():
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        start = time.time()
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143 and "interrupted at step" in err, err[-2000:]
    assert time.time() - start < 30
    saved = torch.load(logdir / "checkpoint.pt", weights_only=True)
    assert saved["step"] >= 50


def _workers_of(pid: int) -> list[int]:
    """Collection workers (multiprocessing spawn children) of process `pid`, from /proc."""
    found = []
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _alive(pids) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
def test_dataset_collection_stops_promptly_and_its_workers_die_with_it(tmp_path, stop):
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--configs", "multi_doors_keys", "debug", "--memory.out",
         str(data), "--memory.episodes", "5000", "--memory.workers", "2", "--memory.context",
         "20", "--memory.query", "20", "--logdir", str(tmp_path / "run")], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and len(list(data.glob("episode-*.npz"))) < 2:
            time.sleep(0.2)
        workers = _workers_of(proc.pid)
        assert len(workers) == 2
        proc.send_signal(stop)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == (143 if stop == signal.SIGTERM else -signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and _alive(workers):
        time.sleep(0.2)
    assert not _alive(workers)
    written = len(list(data.glob("episode-*.npz")))
    time.sleep(1.0)
    assert len(list(data.glob("episode-*.npz"))) == written  # nobody writes any more


def test_fused_adamw_equals_the_per_tensor_loop_and_resumes_its_checkpoints():
    """The fused kernel (common/health.adamw) takes the per-tensor loop's steps to rounding, and a
    checkpoint of the per-tensor optimiser resumes in it without switching the kernel back."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 3))
    ref = [p.detach().clone().requires_grad_() for p in net.parameters()]
    new = [p.detach().clone().requires_grad_() for p in net.parameters()]
    kw = dict(lr=3e-3, eps=1e-6, weight_decay=0.1)
    loop, fused = torch.optim.AdamW(ref, foreach=False, **kw), adamw(new, **kw)
    gen = torch.Generator().manual_seed(1)

    def step(pairs):
        grads = [torch.randn(p.shape, generator=gen) for p in ref]
        for opt, params in pairs:
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()

    for _ in range(6):
        step([(loop, ref), (fused, new)])
    for a, b in zip(ref, new):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    moved = max((a - p).abs().max() for a, p in zip(ref, net.parameters()))
    assert moved > 1e-3  # the steps did something
    saved = copy.deepcopy(loop.state_dict())  # as from a checkpoint file: no shared tensors
    plain = adamw([p.detach().clone() for p in ref], **kw)
    plain.load_state_dict(saved)
    assert not plain.param_groups[0]["fused"]  # why load_optimizer exists
    resumed = [p.detach().clone().requires_grad_() for p in ref]
    again = adamw(resumed, **kw)
    load_optimizer(again, saved)
    assert again.param_groups[0]["fused"] is True and again.param_groups[0]["lr"] == kw["lr"]
    # the fused kernel keeps its step counts on the parameters' device (CUDA: a CPU one fails)
    assert all(again.state[p]["step"].device == p.device for p in resumed)
    for _ in range(3):
        step([(loop, ref), (again, resumed)])
    for a, b in zip(ref, resumed):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
