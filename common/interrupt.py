"""Graceful stop on Ctrl-C / SIGTERM (e.g. a cluster's pre-emption).

The first signal only records the request; the training loops call `check()` at their safe points
(between env steps and between updates) and stop there, then save a checkpoint. Raising
KeyboardInterrupt from the handler itself would interrupt whatever library call happened to run
(a TensorBoard writer holding its queue lock, an env step, an mp4 being written) and the clean-up
could then hang. A second signal raises at once, for a user who does not want to wait.
"""
from __future__ import annotations

import signal

_requested = False


def _handler(signum, frame):
    global _requested
    if _requested:
        raise KeyboardInterrupt
    _requested = True


def install() -> None:
    """Installed explicitly: a process started in the background inherits SIGINT as ignored."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def check() -> None:
    """Raise KeyboardInterrupt here (a safe point) if a stop was requested."""
    if _requested:
        raise KeyboardInterrupt
