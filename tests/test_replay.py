"""Replay: persistence round trip, window consistency, FIFO eviction, corrupt files, samplers.

Every step carries its identity in extra keys (`sid` = stream, `step` = index within the stream,
`order` = global arrival number) and in its image, so a sampled window can be checked for being
consecutive steps of one stream.
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest

from replay import Replay, StreamSampler
from replay import storage

H, W, A = 4, 4, 2


def make_step(sid: int, t: int, order: int, episode_len: int) -> dict:
    k = t % episode_len
    first, last = k == 0, k == episode_len - 1
    return dict(image=np.full((H, W, 3), (t + 50 * sid) % 256, np.uint8),
                action=np.zeros(A) if first else np.full(A, 0.5),
                reward=0.0 if first else 1.0, is_first=first, is_last=last,
                is_terminal=last and sid == 0, sid=sid, step=t, order=order)


def fill(replay: Replay, steps_per_stream: int, start=(0, 0), episode_lens=(7, 11), order=0):
    """Interleave two streams step by step; returns the next global order number."""
    for i in range(steps_per_stream):
        for sid in (0, 1):
            replay.add(make_step(sid, start[sid] + i, order, episode_lens[sid]), stream=sid)
            order += 1
    return order


def content(replay: Replay) -> dict:
    """{(sid, step): order} of every step in memory, checking each stream is consecutive."""
    out = {}
    for s in replay.streams():
        assert (np.diff(s["step"]) == 1).all() and (s["sid"] == s["sid"][0]).all()
        for sid, step, order in zip(s["sid"], s["step"], s["order"]):
            assert (sid, step) not in out, "duplicated step"
            out[(int(sid), int(step))] = int(order)
    return out


def assert_consecutive(batch: dict) -> None:
    B, T = batch["step"].shape
    assert (np.diff(batch["step"], axis=1) == 1).all()  # consecutive steps ...
    assert (batch["sid"] == batch["sid"][:, :1]).all()  # ... of one stream
    expect = (batch["step"] + 50 * batch["sid"]) % 256  # (B, T)
    assert (batch["image"] == expect[..., None, None, None]).all()
    assert batch["image"].shape == (B, T, H, W, 3) and batch["image"].dtype == np.uint8


def test_reload_restores_every_step_once(tmp_path):
    replay = Replay(tmp_path, capacity_steps=1000, chunk_len=8)
    order = fill(replay, 30)
    replay.flush()  # open chunks saved partially ...
    order = fill(replay, 13, start=(30, 30), order=order)
    replay.flush()  # ... then grown and saved again: the shorter files must be gone
    before = content(replay)
    assert len(before) == len(replay) == 86
    again = Replay(tmp_path, capacity_steps=1000, chunk_len=8)
    assert content(again) == before and len(again) == 86
    keys = [re.match(r"^(.*)-(\d+)\.npz$", f)[1] for f in os.listdir(tmp_path)]
    assert len(keys) == len(set(keys)), "a chunk is on disk twice"
    for a, b in zip(replay.streams(), again.streams()):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            assert a[k].dtype == b[k].dtype


def test_crash_between_save_and_remove_keeps_the_longest_version(tmp_path):
    replay = Replay(tmp_path, capacity_steps=1000, chunk_len=8)
    fill(replay, 3)
    replay.flush()
    shorter = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}  # open chunks, 3 steps
    fill(replay, 2, start=(3, 3), order=6)
    replay.flush()
    longer = sorted(set(os.listdir(tmp_path)) - set(shorter))
    for n, data in shorter.items():  # as if the process died before removing the shorter files
        (tmp_path / n).write_bytes(data)
    assert len(Replay(tmp_path, capacity_steps=1000)) == 10  # each step once
    # If the longer version is unreadable, the shorter one is used instead of losing the chunk.
    (tmp_path / longer[0]).write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match=longer[0]):
        assert len(Replay(tmp_path, capacity_steps=1000)) == 8


def test_windows_are_consecutive_steps_of_one_stream(tmp_path):
    replay = Replay(tmp_path, capacity_steps=1000, chunk_len=8)
    fill(replay, 60)
    batch = replay.sample(64, 12)  # longer than a chunk: windows cross chunk boundaries
    assert_consecutive(batch)
    assert batch["is_first"][:, 1:].any(), "windows should also cross episode boundaries"
    assert set(np.unique(batch["sid"])) == {0, 1}
    assert batch["action"].dtype == np.float32 and batch["reward"].dtype == np.float32


def test_fifo_eviction_keeps_newest_steps(tmp_path):
    replay = Replay(tmp_path, capacity_steps=50, chunk_len=8)
    fill(replay, 40)  # 80 steps, arrival order 0..79
    assert len(replay) == 50
    assert sorted(content(replay).values()) == list(range(30, 80))
    assert_consecutive(replay.sample(32, 10))
    # Eviction frees memory only: all 80 steps are still on disk, a reload takes the newest 20.
    replay.flush()
    again = Replay(tmp_path, capacity_steps=20, chunk_len=8)
    assert len(again) == 20
    assert sorted(step for _, step in content(again)) == sorted(list(range(30, 40)) * 2)
    assert len(Replay(tmp_path, capacity_steps=1000)) == 80


def test_truncated_file_is_skipped_with_one_warning(tmp_path):
    replay = Replay(tmp_path, capacity_steps=1000, chunk_len=8)
    fill(replay, 40)
    replay.flush()
    name = sorted(f for f in os.listdir(tmp_path) if "-000001-" in f)[0]  # a stream's 2nd chunk
    path = tmp_path / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    lost = int(name.split("-")[-1].split(".")[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = Replay(tmp_path, capacity_steps=1000, chunk_len=8)
    assert len(caught) == 1 and name in str(caught[0].message)
    assert len(again) == 80 - lost and path.exists()
    assert len(again.segments) == 3  # the gap splits that stream in two
    assert_consecutive(again.sample(64, 6))  # no window crosses the gap


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path, monkeypatch):
    replay = Replay(tmp_path, capacity_steps=1000, chunk_len=8)
    fill(replay, 20)
    replay.flush()
    names = os.listdir(tmp_path)
    assert names and all(storage._NAME.match(n) for n in names)

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez_compressed", broken)
    replay.add(make_step(0, 21, 40, 7), stream=0)  # not is_last: stays open
    with pytest.raises(OSError):
        replay.flush()
    assert sorted(os.listdir(tmp_path)) == sorted(names)


def test_stream_sampler_continues_and_resets(tmp_path):
    replay = Replay(tmp_path, capacity_steps=200, chunk_len=8)
    fill(replay, 40)
    sampler = StreamSampler(replay, batch_size=6, seq_len=5, seed=3)
    batch, reset = sampler.sample()
    assert reset.all() and batch["is_first"][:, 0].all()
    seen_jump = False
    for _ in range(20):
        prev = batch
        batch, reset = sampler.sample()
        assert_consecutive(batch)
        go = ~reset
        assert (batch["step"][go, 0] == prev["step"][go, -1] + 1).all()
        assert (batch["sid"][go, 0] == prev["sid"][go, -1]).all()
        assert batch["is_first"][reset, 0].all()
        seen_jump |= bool(reset.any())
    assert seen_jump, "cursors never reached the end of the data"
    # Evicting everything a cursor points at forces a jump on every row.
    fill(replay, 100, start=(40, 40), order=80)
    batch, reset = sampler.sample()
    assert reset.all() and (batch["step"][:, 0] >= 40).all()


def test_same_seed_same_samples(tmp_path):
    replay = Replay(tmp_path, capacity_steps=1000, chunk_len=8)
    fill(replay, 50)
    replay.flush()
    a = Replay(tmp_path, capacity_steps=1000, seed=7)
    b = Replay(tmp_path, capacity_steps=1000, seed=7)
    c = Replay(tmp_path, capacity_steps=1000, seed=8)
    sa, sb, sc = a.sample(8, 6), b.sample(8, 6), c.sample(8, 6)
    assert all(np.array_equal(sa[k], sb[k]) for k in sa)
    assert not np.array_equal(sa["order"], sc["order"])
    ta, tb = StreamSampler(a, 4, 6, seed=1), StreamSampler(b, 4, 6, seed=1)
    for _ in range(5):
        (xa, ra), (xb, rb) = ta.sample(), tb.sample()
        assert np.array_equal(ra, rb) and all(np.array_equal(xa[k], xb[k]) for k in xa)


def test_readonly_loads_foreign_episodes_and_refuses_add(tmp_path):
    for e, length in enumerate((9, 12, 5)):
        steps = [make_step(e, t, t, length) for t in range(length)]
        arrays = {k: np.stack([np.asarray(s[k]) for s in steps]) for k in steps[0]}  # (L, ...)
        np.savez_compressed(tmp_path / f"episode_{e:03d}.npz", **arrays)
    replay = Replay(tmp_path, capacity_steps=100, readonly=True)
    assert len(replay) == 26 and len(replay.segments) == 3  # one stream per episode file
    batch = replay.sample(32, 5)
    assert (batch["sid"] == batch["sid"][:, :1]).all() and (np.diff(batch["step"], 1) == 1).all()
    with pytest.raises(RuntimeError, match="readonly"):
        replay.add(make_step(0, 0, 0, 5))
    replay.flush()
    assert len(os.listdir(tmp_path)) == 3


def test_bad_steps_fail_in_one_line(tmp_path):
    replay = Replay(None, capacity_steps=10)
    replay.add(make_step(0, 0, 0, 5))
    bad = make_step(0, 1, 1, 5)
    bad["image"] = np.zeros((H + 1, W, 3), np.uint8)
    with pytest.raises(ValueError, match="image"):
        replay.add(bad)
    with pytest.raises(KeyError, match="differ"):
        replay.add({k: v for k, v in make_step(0, 1, 1, 5).items() if k != "order"})
    with pytest.raises(ValueError, match="seq_len=5"):
        replay.sample(2, 5)
