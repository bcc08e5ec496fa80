"""Run plumbing shared by the online loop (main.py) and offline memory training (memory/train.py):
resume from <logdir>/checkpoint.pt, and the guard around a training loop that turns Ctrl-C /
SIGTERM into a stop (common/interrupt.py installs the handlers) and saves on the way out only when
the checkpoint rule allows it (common/health.py: never a bad checkpoint over a good one).
"""
from __future__ import annotations

import contextlib
import pathlib
import sys

from common import checkpoint
from common.cli import fail
from common.health import close_all, may_save


def load_checkpoint(logdir: pathlib.Path, fields: dict) -> dict | None:
    """The run's checkpoint (None: a new run); a corrupt one, or one whose `fields` ({name: type})
    are missing or mistyped, exits with one line."""
    try:
        return checkpoint.load(logdir / "checkpoint.pt", fields)
    except RuntimeError as e:
        fail(str(e))


def restore(logdir: pathlib.Path, apply) -> None:
    """apply() loads the checkpoint into the run's objects; one that does not fit this model or
    config (other shapes, other keys) exits with one line naming the way out."""
    try:
        apply()
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as e:
        fail(f"checkpoint {logdir / 'checkpoint.pt'} does not fit this model/config "
             f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}); move the "
             f"logdir away (or give another --logdir) to start afresh")


@contextlib.contextmanager
def guarded(where, health, save, before=(), after=()):
    """Runs a training loop's body. A Ctrl-C / SIGTERM is a stop, not a failure: it says so
    (where() names the position, e.g. 'step 1200') and saves. On the way out, whatever happened:
    the clean-up steps `before`, then save() if the weights may be saved (health, and no failed
    write), then `after`; one failure does not hide another (close_all)."""
    error = None
    try:
        yield
    except KeyboardInterrupt:
        print(f"interrupted at {where()}: saving a checkpoint", file=sys.stderr)
        raise
    except BaseException as e:
        error = e
        raise
    finally:
        close_all([*before, save if may_save(health, error) else None, *after], error)
