"""Atomic checkpoints and RNG state, so a killed run resumes where it stopped.

The file is written to a temporary name and renamed over the old one: a crash mid-write leaves the
previous checkpoint intact, a failed write (a full disk) removes its temporary file. A payload
with a non-finite tensor is never written (common/health.py). Loading uses weights_only=True
(tensors, numbers, strings, containers) and checks the fields a loop needs and their types.
"""
from __future__ import annotations

import os
import pathlib
import random

import numpy as np
import torch

from common.cli import naming
from common.health import first_nonfinite


class NonFiniteCheckpoint(ValueError):
    """A payload with a nan or inf tensor was not written; the message is one line."""


def save(path, payload: dict) -> None:
    path = pathlib.Path(path)
    bad = first_nonfinite(payload)
    if bad is not None:
        raise NonFiniteCheckpoint(f"{bad} holds non-finite values: checkpoint not written, "
                                  f"{path} is kept as it was")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())  # the rename must never expose a file that is not on disk yet
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise naming(e, path) from None
        raise


def load(path, fields: dict | None = None) -> dict | None:
    """The checkpoint at path, or None when there is none. A corrupt file, or one whose `fields`
    ({name: type}) are missing or of another type, raises a one-line RuntimeError."""
    path = pathlib.Path(path)
    if not path.exists():
        return None
    way_out = "restore a backup, or move the logdir away (or give another --logdir) to start afresh"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same one-line message
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}); "
                           f"{way_out}") from None
    if not isinstance(ckpt, dict):
        raise RuntimeError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a dict of "
                           f"fields; {way_out}")
    for name, kind in (fields or {}).items():
        if name not in ckpt:
            raise RuntimeError(f"checkpoint {path} lacks the field '{name}'; {way_out}")
        value = ckpt[name]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise RuntimeError(f"checkpoint {path}: field '{name}' is {value!r:.60} "
                               f"({type(value).__name__}), expected a "
                               f"{'non-negative ' if kind is int else ''}{kind.__name__}; "
                               f"{way_out}")
    bad = first_nonfinite(ckpt)
    if bad is not None:  # written by an older version from a diverged run: never resume it
        raise RuntimeError(f"checkpoint {path}: {bad} holds non-finite values; {way_out}")
    return ckpt


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
