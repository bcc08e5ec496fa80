"""Where training windows start: uniform draws, and cursors that continue across batches.

Uniform (`Replay.sample`): every valid start, i.e. every step followed by seq_len-1 more steps of
the same in-memory stream, is equally likely. Each batch starts from a fresh model state.

Consecutive (`StreamSampler`), for backbones that carry state from one training batch to the next
(RSSM with truncated BPTT, TSSM-XL memory, S4/S5 long context). Row b holds a cursor; call k
returns steps p .. p+T-1 and call k+1 returns p+T .. p+2T-1 of the same stream:

    row b   call k: [p ......... p+T-1] call k+1: [p+T ....... p+2T-1]   state carries over
    row c   call k: [q ... end of data ]  call k+1: [r (random) .. r+T-1]  reset[c] = True,
                                                                        is_first[c, 0] = True

Contract per call, `batch, reset = sampler.sample()`:
    batch   {key: (B, T, ...)}, stored values, except is_first[b, 0] = True where reset[b]
    reset   (B,) bool: True where the row jumped, so state carried from the previous call is not
            valid for it and must be replaced by the initial state (e.g. common.tree.where_reset).
            Rows with reset False continue exactly where the previous call's row ended.
A cursor jumps (to a start drawn uniformly, as in `Replay.sample`) on the first call, when fewer
than T steps of its stream follow it (it reached the newest data or a gap), or when its next step
was evicted. Episode boundaries inside a window are marked by is_first as stored. At a forced
reset only is_first changes: action_0 and reward_0 keep their stored (possibly non-zero) values,
so models must read is_first as "reset the state here", not as "the action is zero".
"""
from __future__ import annotations

import numpy as np


def draw_starts(segments, n: int, seq_len: int, rng: np.random.Generator):
    """n (segment, absolute start) pairs, uniform over all starts with seq_len steps after them.
    Returns (list of n segments, (n,) int64 starts)."""
    segments = [s for s in segments if len(s) >= seq_len]
    if not segments:
        raise ValueError(f"replay: no stream holds seq_len={seq_len} consecutive steps yet")
    counts = np.array([len(s) - seq_len + 1 for s in segments], np.int64)  # (S,) starts per stream
    ends = np.cumsum(counts)  # (S,)
    u = rng.integers(ends[-1], size=n)  # (n,) one draw over all valid starts
    which = np.searchsorted(ends, u, side="right")  # (n,) segment of each draw
    starts = np.array([segments[i].start for i in which], np.int64) + u - (ends - counts)[which]
    return [segments[i] for i in which], starts


class StreamSampler:
    """B cursors that walk the replay's streams seq_len steps per call; see the module docstring."""

    def __init__(self, replay, batch_size: int, seq_len: int, seed: int):
        self.replay, self.batch_size, self.seq_len = replay, batch_size, seq_len
        self.rng = np.random.default_rng(seed)
        self._segments = [None] * batch_size
        self._cursors = np.zeros(batch_size, np.int64)  # (B,) next absolute step of each row

    def sample(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        B, T = self.batch_size, self.seq_len
        reset = np.array([s is None or not (s.start <= p and p + T <= s.end)
                          for s, p in zip(self._segments, self._cursors)], bool)  # (B,)
        if reset.any():
            rows = np.flatnonzero(reset)
            segments, starts = draw_starts(self.replay.segments, len(rows), T, self.rng)
            for b, s, p in zip(rows, segments, starts):
                self._segments[b], self._cursors[b] = s, p
        batch = self.replay.gather(self._segments, self._cursors, T)  # each (B, T, ...), a copy
        batch["is_first"][reset, 0] = True
        self._cursors += T
        return batch, reset

    __call__ = sample
