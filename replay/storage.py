"""Chunks on disk: file names, atomic writes, tolerant reads.

A *chunk* is up to `chunk_len` consecutive steps of one stream, saved as one compressed .npz whose
arrays all have the step dimension first: image (L, H, W, C) uint8, action (L, A), reward (L,), ...

File name (sorts chronologically; enough to rebuild each stream in order):

    <time>-<stream uuid>-<chunk index>-<length>.npz
    20250101T120000123456-3f2a...e9-000007-1024.npz

    time    UTC creation time of the chunk (its first step), microseconds; fixed while it grows
    uuid    32 hex digits, new for every (run, worker): a restarted run never extends an old stream
    index   chunk number within the stream, 0, 1, 2, ...; chunk k+1 starts where chunk k ended
    length  steps in this file

A chunk is saved when it reaches chunk_len steps or its episode ends (is_last); `flush` also saves
open chunks. An open chunk saved by `flush` and saved again after it grew gets a new name (a larger
length): the new file is written first, then the shorter one is removed. A crash in between leaves
both; readers keep the longest version of each (uuid, index), so a reload never duplicates steps.

Every write goes to a temporary `.<random>.npz.tmp` in the same directory, is fsynced, then
`os.replace`d onto its final name, so a reader never sees half a chunk under a chunk name. Leftover
`.tmp` files from a killed process are ignored by readers and deleted by `remove_tmp` (a writer
about to start in that directory).
"""
from __future__ import annotations

import os
import re
import tempfile
import time
import uuid as uuidlib
import warnings
from dataclasses import dataclass

import numpy as np

from common.cli import naming

_NAME = re.compile(r"^(\d{8}T\d{12})-([0-9a-f]{32})-(\d+)-(\d+)\.npz$")
_last_time = [0]  # microseconds of the last timestamp handed out in this process


def timestamp() -> str:
    """UTC time with microseconds, strictly increasing within this process (ties break order)."""
    micros = max(time.time_ns() // 1000, _last_time[0] + 1)
    _last_time[0] = micros
    seconds, micro = divmod(micros, 1_000_000)
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds)) + f"{micro:06d}"


def chunk_name(time_: str, uuid: str, index: int, length: int) -> str:
    return f"{time_}-{uuid}-{index:06d}-{length:06d}.npz"


@dataclass(frozen=True)
class ChunkFile:
    path: str
    time: str   # '' for a file whose name does not follow the pattern (a foreign episode file)
    uuid: str   # for a foreign file: its file name, so it becomes a stream of its own
    index: int
    length: int  # from the name; -1 when unknown

    @property
    def named(self) -> bool:
        return self.length >= 0


def list_chunks(directory: str) -> list[list[ChunkFile]]:
    """All chunks in `directory`, oldest first; each entry lists the versions of one chunk, longest
    first (normally one). Files not named by our pattern are foreign episodes, each its own stream,
    ordered by name before every named chunk."""
    groups: dict[tuple, list[ChunkFile]] = {}
    for name in os.listdir(directory):
        if not name.endswith(".npz"):
            continue  # temporary files and anything else
        path = os.path.join(directory, name)
        m = _NAME.match(name)
        if m:
            f = ChunkFile(path, m[1], m[2], int(m[3]), int(m[4]))
        else:
            f = ChunkFile(path, "", name, 0, -1)
        groups.setdefault((f.time, f.uuid, f.index), []).append(f)
    return [sorted(groups[key], key=lambda f: -f.length) for key in sorted(groups)]


def read_chunk(path: str, required=("is_first", "is_last")) -> dict[str, np.ndarray] | None:
    """Every array of one chunk, loaded into memory; None (and one warning naming the file) when
    the file is truncated, corrupt, or its arrays disagree on the number of steps."""
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        lengths = {len(v) for v in arrays.values() if v.ndim > 0}
        if len(lengths) != 1 or any(v.ndim == 0 for v in arrays.values()):
            raise ValueError(f"arrays disagree on the step dimension: {sorted(lengths)}")
        missing = [k for k in required if k not in arrays]
        if missing:
            raise ValueError(f"missing keys {missing}")
    except Exception as e:  # zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError, ...
        warnings.warn(f"replay: skipping unreadable chunk {path} ({type(e).__name__}: {e})",
                      stacklevel=3)
        return None
    return arrays


def remove_tmp(directory: str) -> None:
    """Delete the temporary files killed writes left in `directory` (none of them is data)."""
    for name in os.listdir(directory):
        if name.endswith(".npz.tmp"):
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def write_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Save `arrays` as compressed .npz at `path`: temp file in the same directory, fsync, replace."""
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".npz.tmp", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise naming(e, path) from None
        raise


class ChunkWriter:
    """The open chunk of one live stream: collects its steps and (re)saves them under its name."""

    def __init__(self, directory: str, chunk_len: int):
        self.directory, self.chunk_len = directory, chunk_len
        self.uuid = uuidlib.uuid4().hex
        self.index = 0
        self.time = ""
        self.steps: list[dict[str, np.ndarray]] = []
        self.saved: tuple[str, int] | None = None  # (path, length) of this chunk's file on disk

    def append(self, step: dict[str, np.ndarray]) -> None:
        if not self.steps:
            self.time = timestamp()
        self.steps.append(step)
        if len(self.steps) >= self.chunk_len or bool(step["is_last"]):
            self.close()

    def save(self) -> None:
        """Write the steps so far, then remove this chunk's shorter file (the new one holds all of
        its steps, so no data is lost and a reload sees each step once)."""
        n = len(self.steps)
        if n == 0 or (self.saved and self.saved[1] == n):
            return
        arrays = {k: np.stack([s[k] for s in self.steps]) for k in self.steps[0]}  # (L, ...)
        path = os.path.join(self.directory, chunk_name(self.time, self.uuid, self.index, n))
        write_atomic(path, arrays)
        if self.saved:
            os.remove(self.saved[0])
        self.saved = (path, n)

    def close(self) -> None:
        """Save and start the next chunk of the same stream."""
        self.save()
        self.index += 1
        self.steps, self.saved = [], None
