"""Command line -> frozen config and run folder. Mistakes exit with status 2 and one line."""
from __future__ import annotations

import argparse
import errno
import os
import pathlib
import sys

from common.config import (SIZE_BLOCKS, ConfigError, check_resume, load_blocks, merge,
                           parse_overrides, read_saved)

# OSErrors that say the disk or the folder cannot take what we write: the user's to fix (one line),
# not a bug (a traceback).
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                  errno.EIO, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def naming(e: OSError, path) -> OSError:
    """`e` with the file it is about (a write that fails at flush or close names none)."""
    if e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))
    return e


def storage_failure(e: OSError) -> str | None:
    """One line for an OSError of STORAGE_ERRORS (naming the file), else None (a bug)."""
    if e.errno not in STORAGE_ERRORS:
        return None
    where = f" {e.filename}" if e.filename else ""
    return (f"cannot write{where}: {e.strerror or os.strerror(e.errno)}; files already there "
            f"(checkpoint, replay, logs) are kept")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage + message would be several lines
        fail(f"{message} (see --help)")


def run_main(args: list[str], what: str, cwd) -> None:
    """Run `python main.py *args` in `cwd` (a benchmark's cell: output goes to this terminal); if it
    fails, one error line naming `what` and exit status 2 (its own message is above)."""
    import subprocess
    cmd = [sys.executable, "main.py", *args]
    print("running:", " ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=cwd).returncode
    if code:
        fail(f"the {what} run failed (exit {code}); its message is above")


def parse(argv: list[str], prog: str = "main.py",
          description: str = "Dreamer-style agent with a swappable world-model backbone."):
    """argv -> Config. `--configs a b c` picks blocks; every other `--key value` overrides a key."""
    try:
        blocks = load_blocks()
    except ConfigError as e:
        fail(str(e))
    names = [b for b in blocks if b != "defaults"]
    sizes = [b for b in SIZE_BLOCKS if b in blocks]
    parser = _Parser(
        prog=prog, description=description, allow_abbrev=False,
        epilog="config blocks (merged left to right over 'defaults'): " + ", ".join(names)
        + ". Sizes follow the device: with no size block (" + ", ".join(sizes) + ") in --configs, "
        "a CPU gets 'cpu' ('memory_cpu' for offline memory runs) and CUDA the defaults "
        "(DreamerV3-S); a size block named anywhere in --configs, or --size <block>|default, "
        "chooses instead. Size blocks merge after the others. Any key of configs.yaml can be "
        "overridden and wins over every block: --key value or --section.key value "
        "(e.g. --steps 10000 --wm.d_model 256).")
    parser.add_argument("--configs", nargs="+", default=[], metavar="BLOCK", action="extend",
                        help="config blocks to merge, e.g. --configs miniworld s4wm (given twice: "
                        "all blocks, in order)")
    args, rest = parser.parse_known_args(argv)
    import torch  # sizes follow the device: is there CUDA for device 'auto'?
    try:
        return merge(blocks, args.configs, parse_overrides(rest), torch.cuda.is_available())
    except ConfigError as e:
        fail(str(e))


def logdir_of(config, name: str | None = None) -> pathlib.Path:
    """The run folder: config.logdir, or one derived from `name` (default: the task), the backbone
    and the seed."""
    return pathlib.Path(config.logdir or f"runs/{name or config.task}_{config.backbone}_seed{config.seed}")


def logged_step(logdir: pathlib.Path) -> int | None:
    """The last step in <logdir>/metrics.jsonl (None: no row)."""
    import json
    steps = []
    try:
        lines = (logdir / "metrics.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, TypeError, KeyError):
            pass  # a line cut by a kill
    return max(steps) if steps else None


def unresumable(config, logdir: pathlib.Path) -> str | None:
    """Why no run may start in `logdir`, or None: it holds an earlier run's results (evaluations, or
    logs past the step of its first checkpoint) but not the checkpoint.pt to resume it from, so a
    new run would overwrite them (committed results on a fresh clone, a deleted checkpoint). Logs
    that end before the first checkpoint are of a run killed before it could save: it starts again."""
    if (logdir / "checkpoint.pt").exists():
        return None
    evals = logdir / "eval"
    evaluated = evals.is_dir() and any(p.is_file() for p in evals.iterdir())
    step = logged_step(logdir)
    every = config.offline.checkpoint_every if config.mode == "offline" else config.run.checkpoint_every
    if not evaluated and (step is None or step < every):
        return None
    what = f"logged up to step {step}" if step is not None else "its evaluations"
    return (f"logdir {logdir} holds the results of an earlier run ({what}) but no checkpoint.pt to "
            f"resume it from: a new run would overwrite them; give another --logdir, or move the "
            f"folder away to start afresh")


def check_logdir(config, name: str | None = None) -> pathlib.Path:
    """The run folder (derived from `name` or the task, backbone and seed unless given), checked
    without writing anything: not a file, and an existing run's saved config matches this one."""
    logdir = logdir_of(config, name)
    for path in (logdir, *logdir.parents):  # the logdir, or a folder above it, is a file
        if path.exists() and not path.is_dir():
            fail(f"logdir {logdir}: {path} is a file, not a folder: give another --logdir")
    saved = logdir / "config.yaml"
    try:
        if saved.exists() or saved.is_symlink():
            check_resume(read_saved(saved), config, logdir)
    except ConfigError as e:
        fail(str(e))
    return logdir


def prepare_logdir(config, name: str | None = None, write: bool = True) -> pathlib.Path:
    """The run folder (check_logdir) with config.yaml in it. An existing folder is a run to resume:
    its saved config must match this one, and it must hold the checkpoint if it holds results
    (unresumable). Stale temporary files of killed writes are removed. write=False (data-parallel
    ranks other than 0) only checks. Every problem with the folder exits with one line."""
    logdir = check_logdir(config, name)
    saved = logdir / "config.yaml"
    try:
        logdir.mkdir(parents=True, exist_ok=True)
        if write:
            lock_logdir(logdir)  # before anything is removed or written: another run may own them
        if why := unresumable(config, logdir):  # every rank: the same files, the same answer
            fail(why)
        if not write:
            return logdir
        remove_stale_tmp(logdir)
        tmp = saved.with_name("config.yaml.tmp")
        try:
            tmp.write_text(config.dump())  # also shows the folder takes writes, before any work
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise naming(e, tmp) from None
        tmp.replace(saved)
    except OSError as e:
        fail(storage_failure(e) or f"logdir {logdir}: {e}")
    return logdir


_HELD: dict[pathlib.Path, object] = {}  # the lock files this process holds, open until it exits


def lock_logdir(logdir: pathlib.Path) -> None:
    """Hold an exclusive lock on <logdir>/.lock for the rest of this process, so that a second run
    given the same folder stops with one line instead of deleting the first one's temporary files
    and interleaving its checkpoints and logs. The OS releases the lock when the process ends, however
    it ends, so a killed run leaves nothing to clean up."""
    import fcntl
    key = logdir.resolve()
    if key in _HELD:  # this process already owns it (a resume in the same process)
        return
    handle = open(logdir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        fail(f"logdir {logdir} is in use by another run (pid {owner}): wait for it to end, stop it, "
             "or give another --logdir")
    except OSError as e:  # a file system without locks (some network mounts): run unguarded
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL):
            raise
        print(f"warning: {logdir} cannot be locked ({e.strerror}): make sure no other run uses it",
              file=sys.stderr)
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _HELD[key] = handle


def remove_stale_tmp(folder) -> list[pathlib.Path]:
    """Delete the temporary files of writes a killed process left in `folder` and below (every
    write goes to '*.tmp' / '*.tmp.*' and is renamed when complete, so none is data)."""
    stale = [p for pattern in ("*.tmp", "*.tmp.*") for p in pathlib.Path(folder).rglob(pattern)
             if p.is_file() or p.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
