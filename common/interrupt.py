"""Graceful stop on Ctrl-C / SIGTERM (e.g. a cluster's pre-emption).

The first signal only records the request; the loops call `check()` at their safe points (between
env steps, updates, evaluation steps, dataset episodes and replay files) and stop there, then save
a checkpoint and exit with 128 + the signal number (130 for SIGINT, 143 for SIGTERM), so a
scheduler can tell a pre-emption from a finished run (0). Raising KeyboardInterrupt from the
handler itself would interrupt whatever library call happened to run (a TensorBoard writer holding
its queue lock, an env step, an mp4 being written) and the clean-up could then hang. A second
signal raises at once, for a user who does not want to wait.
"""
from __future__ import annotations

import signal

_requested: int | None = None  # the signal number of the first request


def _handler(signum, frame):
    global _requested
    if _requested is not None:
        raise KeyboardInterrupt
    _requested = signum


def install() -> None:
    """Installed explicitly: a process started in the background inherits SIGINT as ignored."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def requested() -> bool:
    return _requested is not None


def check() -> None:
    """Raise KeyboardInterrupt here (a safe point) if a stop was requested."""
    if _requested is not None:
        raise KeyboardInterrupt


def exit_code() -> int:
    """128 + the signal that stopped the run (SIGINT when none was recorded: a plain Ctrl-C)."""
    return 128 + (_requested or signal.SIGINT)
