"""Replay: every step saved to disk in chunks, the newest steps in memory, two samplers.

    replay = Replay(logdir / "replay", capacity_steps=1_000_000, chunk_len=1024, seed=seed)
    replay.add(step, stream=worker_id)          # step: dict following the alignment contract
    batch = replay.sample(B, T)                 # {key: (B, T, ...)} numpy, uniform windows
    sampler = StreamSampler(replay, B, T, seed)
    batch, reset = sampler.sample()             # consecutive windows; reset (B,) bool
    replay.flush()                              # at checkpoints and exit
    data = to_torch(batch, device)              # tensors: images uint8, flags bool, rest float32

Time alignment and persistence: replay/buffer.py. Sampler contract: replay/samplers.py.
File names and atomic writes: replay/storage.py.
"""
from replay.batch import to_torch
from replay.buffer import Replay, Segment
from replay.samplers import StreamSampler, draw_starts

__all__ = ["Replay", "Segment", "StreamSampler", "draw_starts", "to_torch"]
