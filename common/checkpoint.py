"""Atomic checkpoints and RNG state, so a killed run resumes where it stopped.

The file is written to a temporary name and renamed over the old one: a crash mid-write leaves the
previous checkpoint intact. Loading uses weights_only=True (tensors, numbers, strings, containers).
"""
from __future__ import annotations

import os
import pathlib
import random

import numpy as np
import torch


def save(path, payload: dict) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())  # the rename must never expose a file that is not on disk yet
    os.replace(tmp, path)


def load(path) -> dict | None:
    """The checkpoint at path, or None when there is none. A corrupt file raises a one-line error."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}); move it away "
                           f"to start this run afresh, or restore a backup") from None


def rng_state() -> dict:
    """Python, numpy (legacy global) and torch RNG states, as weights_only-loadable values."""
    py = random.getstate()
    np_state = np.random.get_state()
    return {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], torch.as_tensor(np_state[1]), *np_state[2:]],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], npst[1].numpy(), *npst[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
