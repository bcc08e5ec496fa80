"""Replay buffer: every step on disk, the newest `capacity_steps` in memory, windows sampled from it.

Time alignment. A *stream* is the sequence of steps from one environment worker; it runs on across
episode boundaries (a new episode starts with is_first=True in the same stream). Step t holds:

    t            0      1      2      3      4      5      6
    image        o0     o1     o2     o3     o4     o5     o6       uint8 (H, W, C)
    action       0      a1     a2     a3     0      a5     a6       float32 (A,): a_t LED TO o_t
    reward       0      r1     r2     r3     0      r5     r6       float32: received arriving at o_t
    is_first     T      .      .      .      T      .      .
    is_last      .      .      .      T      .      .      .
    is_terminal  .      .      .      T*     .      .      .        *only if o3 ends the task (no
                                                                       bootstrap), not a time limit
                 |------ episode 1 ------|   |---- episode 2 ...
                 the policy sees o_t and picks a_{t+1}; the env returns o_{t+1}, r_{t+1}

Extra keys (env info) are stored as given. Memory and disk hold the same steps in this layout.

    stream 0  [chunk 0: 1024 steps][chunk 1: ends at is_last][chunk 2 (open) ...     files on disk
    stream 1  [chunk 0 .........][chunk 1 (open) ...
    memory    a ring of capacity_steps slots, filled in arrival order; each stream keeps the list
              of its slots, so a window is one fancy index: data[key][slots]   (B, T, ...)
    sample    T consecutive steps of ONE stream; may cross chunk and episode boundaries (is_first
              marks the latter); never crosses streams, gaps from unreadable files, or restarts

Persistence (see replay/storage.py for names and atomic writes):
  * `add` appends to the stream's open chunk; a chunk is saved when it reaches chunk_len steps or
    the episode ends; `flush()` saves open chunks (call it at checkpoints and exit). Steps added
    after the last save of an unflushed chunk are lost on a crash.
  * Eviction is FIFO in steps (arrival order) and only frees memory: files are user data and stay.
  * On construction the directory is read newest chunk first until capacity_steps are loaded, then
    inserted oldest first; an unreadable file is skipped with one warning and never deleted.
    Given a `spec` (the env's keys and shapes), a readable chunk that does not fit it raises
    ChunkMismatch naming the file (another run's data in this folder: the user decides); without
    one, the first chunk read fixes the spec and later misfits are skipped with a warning.
    Leftover temporary files of killed writes are deleted (unless readonly).
    Chunks are reinserted chunk by chunk, so after a reload eviction follows chunk order instead of
    the original step-by-step interleaving of streams.
  * A restarted run writes new streams (new uuids); reloaded streams are read-only history.
  * `readonly=True` only reads (an offline dataset: our chunks, or foreign episode .npz files with
    the same keys, each foreign file a stream of its own); add() fails.

Not thread safe: one process adds and samples. The uniform sampler draws from its own generator
(seed), so the same adds and the same seed give the same samples bit for bit.
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from common import interrupt
from replay import storage
from replay.samplers import draw_starts

# Dtypes of the keys in the alignment contract; other keys keep the dtype they arrive with.
CONTRACT_DTYPES = {"image": np.uint8, "action": np.float32, "reward": np.float32,
                   "is_first": bool, "is_last": bool, "is_terminal": bool}
REQUIRED = ("is_first", "is_last")


class ChunkMismatch(ValueError):
    """A chunk on disk does not fit the spec the Replay was given; the message is one line."""


class Segment:
    """The ring slots of one stream's steps in memory, oldest first.

    Steps are numbered by absolute index within the segment: `start` is the oldest in memory,
    `end` is one past the newest. Eviction raises `start`; the numbering never shifts, so a cursor
    (segment, index) held by a StreamSampler stays meaningful.
    """

    def __init__(self, sid: int, live: bool):
        self.sid, self.live = sid, live
        self.start = 0
        self._slots = np.empty(256, np.int64)  # ring slot of each step, valid in [_lo, _hi)
        self._lo = self._hi = 0

    def __len__(self) -> int:
        return self._hi - self._lo

    @property
    def end(self) -> int:
        return self.start + len(self)

    def append(self, slots: np.ndarray) -> None:
        n = len(slots)
        if self._hi + n > len(self._slots):  # compact and regrow: amortised O(1) per step
            keep = self._slots[self._lo:self._hi]
            grown = np.empty(max(256, 2 * (len(keep) + n)), np.int64)
            grown[:len(keep)] = keep
            self._slots, self._lo, self._hi = grown, 0, len(keep)
        self._slots[self._hi:self._hi + n] = slots
        self._hi += n

    def drop_front(self, n: int) -> None:
        self._lo += n
        self.start += n

    def slots(self, index: np.ndarray) -> np.ndarray:
        """Ring slots of absolute step indices (any shape, all in [start, end))."""
        return self._slots[index - self.start + self._lo]


class Replay:
    """Steps of many streams; see the module docstring for layout, persistence and eviction.

    directory       where chunks are saved and loaded (None: memory only, nothing saved)
    capacity_steps  steps kept in memory (FIFO); also how many are reloaded
    chunk_len       steps per saved chunk at most
    readonly        load only; add() raises
    seed            seed of the generator that `sample` draws from
    spec            {key: (per-step shape, dtype)} every step must have (None: the first step or
                    chunk decides)
    """

    def __init__(self, directory: str | None, capacity_steps: int, chunk_len: int = 1024,
                 readonly: bool = False, seed: int = 0, spec: dict | None = None):
        if capacity_steps < 1 or chunk_len < 1:
            raise ValueError(f"replay: capacity_steps={capacity_steps} and chunk_len={chunk_len} "
                             "must be >= 1")
        if readonly and (directory is None or not os.path.isdir(directory)):
            raise FileNotFoundError(f"replay: readonly needs an existing directory, got {directory}")
        self.directory, self.capacity, self.chunk_len = directory, int(capacity_steps), chunk_len
        self.readonly = readonly
        self.rng = np.random.default_rng(seed)
        self.spec: dict[str, tuple[tuple, np.dtype]] | None = None  # key -> (shape, dtype) per step
        self._data: dict[str, np.ndarray] = {}  # key -> (capacity, ...) ring
        self._owner = np.full(self.capacity, -1, np.int64)  # segment id of each ring slot
        self._head = self._size = 0
        self._segments: dict[int, Segment] = {}
        self._sids = -1
        self._live: dict[int, tuple[Segment, storage.ChunkWriter | None]] = {}
        self._given = spec is not None
        if spec is not None:
            self._set_spec({k: np.zeros((0, *shape), dtype) for k, (shape, dtype) in spec.items()})
        if directory is not None:
            if not readonly:
                os.makedirs(directory, exist_ok=True)
                storage.remove_tmp(directory)
            self._load()

    def __len__(self) -> int:
        return self._size

    @property
    def segments(self) -> list[Segment]:
        """In-memory streams, in order of creation (used by the samplers)."""
        return list(self._segments.values())

    def add(self, step: dict, stream: int = 0) -> None:
        """Append one step (a dict following the alignment contract) to stream `stream`."""
        if self.readonly:
            raise RuntimeError("replay: opened with readonly=True; add() is not allowed")
        step = self._check(step)
        if stream not in self._live:
            writer = storage.ChunkWriter(self.directory, self.chunk_len) if self.directory else None
            self._live[stream] = (self._new_segment(live=True), writer)
        segment, writer = self._live[stream]
        self._write(segment, {k: v[None] for k, v in step.items()})  # each (1, ...)
        if writer is not None:
            writer.append(step)

    def flush(self) -> None:
        """Save every open chunk (a later save of a grown chunk replaces this file)."""
        for _, writer in self._live.values():
            if writer is not None:
                writer.save()

    def sample(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        """Windows of seq_len consecutive steps of one stream, uniform over valid starts:
        {key: (B, T, ...)}, stored values unchanged (a window may start mid-episode)."""
        segments, starts = draw_starts(self.segments, batch_size, seq_len, self.rng)
        return self.gather(segments, starts, seq_len)

    def gather(self, segments: list[Segment], starts: np.ndarray, seq_len: int) -> dict:
        """Steps starts[b] .. starts[b]+seq_len-1 of segments[b] for each row b: {key: (B, T, ...)}."""
        offsets = np.arange(seq_len)
        slots = np.stack([s.slots(p + offsets) for s, p in zip(segments, starts)])  # (B, T)
        return {k: v[slots] for k, v in self._data.items()}  # each (B, T, ...)

    def streams(self):
        """Yield each in-memory stream whole, oldest first: {key: (L, ...)} (offline evaluation)."""
        for s in self.segments:
            if len(s):
                window = self.gather([s], np.array([s.start]), len(s))  # each (1, L, ...)
                yield {k: v[0] for k, v in window.items()}  # each (L, ...)

    # ---- internals -------------------------------------------------------------------------

    def _new_segment(self, live: bool) -> Segment:
        self._sids += 1  # ids are never reused, so a stale owner can not alias a new segment
        self._segments[self._sids] = segment = Segment(self._sids, live)
        return segment

    def _load(self) -> None:
        """Read chunks newest first until capacity_steps are in hand, then insert oldest first."""
        loaded, total = [], 0  # (ChunkFile, complete, arrays), newest first
        for versions in reversed(storage.list_chunks(self.directory)):
            if total >= self.capacity:
                break
            interrupt.check()  # a large replay takes a while to read
            for f in versions:  # longest first; a shorter version only if the longer is unreadable
                arrays = self._read(f.path)
                if arrays is not None:
                    loaded.append((f, f is versions[0], arrays))
                    total += len(arrays["is_first"])
                    break
        chains: dict[str, tuple[Segment, int, bool]] = {}  # uuid -> (segment, index, complete)
        for i, (f, complete, arrays) in enumerate(reversed(loaded)):
            if i == 0 and total > self.capacity:  # keep the newest capacity_steps
                arrays = {k: v[total - self.capacity:] for k, v in arrays.items()}  # (n, ...)
            prev = chains.get(f.uuid)
            # Continue a stream only from its previous chunk read whole: a missing or shortened
            # chunk leaves a gap, and a window must not cross it.
            if prev and f.named and prev[1] == f.index - 1 and prev[2]:
                segment = prev[0]
            else:
                segment = self._new_segment(live=False)
            chains[f.uuid] = (segment, f.index, complete)
            self._write(segment, arrays)

    def _read(self, path: str) -> dict[str, np.ndarray] | None:
        arrays = storage.read_chunk(path, REQUIRED)
        if arrays is None:
            return None
        if self.spec is None:
            self._set_spec(arrays)
        shapes = {k: v.shape[1:] for k, v in arrays.items()}
        expected = {k: shape for k, (shape, _) in self.spec.items()}
        if shapes != expected and self._given:
            diff = sorted(set(shapes.items()) ^ set(expected.items()))
            key = diff[0][0]
            raise ChunkMismatch(
                f"replay chunk {path} does not fit this run: its '{key}' per step is "
                f"{shapes.get(key, 'missing')}, this run's is {expected.get(key, 'absent')} "
                f"(another run's data?): move it out of {self.directory}")
        if shapes != expected:
            warnings.warn(f"replay: skipping chunk {path}: per-step keys/shapes {shapes} differ "
                          f"from {dict((k, s) for k, (s, _) in self.spec.items())}", stacklevel=3)
            return None
        return {k: v.astype(self.spec[k][1], copy=False) for k, v in arrays.items()}

    def _check(self, step: dict) -> dict[str, np.ndarray]:
        """Copy a step into arrays of the spec's dtypes (envs may reuse their buffers); the first
        step (or first loaded chunk) fixes keys, shapes and dtypes."""
        if self.spec is None:
            self._set_spec({k: np.asarray(v)[None] for k, v in step.items()})
        if step.keys() != self.spec.keys():
            raise KeyError(f"replay: step keys {sorted(step)} differ from {sorted(self.spec)}")
        out = {}
        for k, (shape, dtype) in self.spec.items():
            out[k] = np.array(step[k], dtype=dtype)
            if out[k].shape != shape:
                raise ValueError(f"replay: step['{k}'] has shape {out[k].shape}, expected {shape}")
        return out

    def _set_spec(self, arrays: dict[str, np.ndarray]) -> None:
        """Fix the per-step spec from arrays with a leading step dimension; allocate the ring."""
        missing = [k for k in REQUIRED if k not in arrays]
        if missing:
            raise KeyError(f"replay: a step needs keys {list(REQUIRED)}; missing {missing}")
        if "image" in arrays and arrays["image"].dtype != np.uint8:
            raise TypeError(f"replay: image must be uint8 (H, W, C), got {arrays['image'].dtype}")
        self.spec = {k: (v.shape[1:], np.dtype(CONTRACT_DTYPES.get(k, v.dtype)))
                     for k, v in arrays.items()}
        # np.zeros maps lazily: untouched slots of a large capacity cost no resident memory.
        self._data = {k: np.zeros((self.capacity,) + shape, dtype)  # (capacity, ...)
                      for k, (shape, dtype) in self.spec.items()}

    def _write(self, segment: Segment, arrays: dict[str, np.ndarray]) -> None:
        """Append n steps {key: (n, ...)} to `segment`, overwriting (evicting) the oldest slots."""
        n = len(arrays["is_first"])
        slots = (self._head + np.arange(n)) % self.capacity  # (n,)
        evicted = self._owner[slots]
        evicted = evicted[evicted >= 0]
        # The ring is in arrival order, so the slots overwritten now hold the oldest steps of
        # whichever segments own them: dropping from each segment's front keeps it consecutive.
        for sid, count in zip(*np.unique(evicted, return_counts=True)):
            old = self._segments[int(sid)]
            old.drop_front(int(count))
            if not len(old) and not old.live:
                del self._segments[old.sid]
        for k, v in arrays.items():
            self._data[k][slots] = v
        self._owner[slots] = segment.sid
        segment.append(slots)
        self._head = (self._head + n) % self.capacity
        self._size = min(self._size + n, self.capacity)
