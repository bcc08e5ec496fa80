"""Command line -> frozen config and run folder. Mistakes exit with status 2 and one line."""
from __future__ import annotations

import argparse
import pathlib
import sys

from common.config import ConfigError, check_resume, load_blocks, merge, parse_overrides


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


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
    parser = argparse.ArgumentParser(
        prog=prog, description=description,
        epilog="config blocks (merged left to right over 'defaults'): " + ", ".join(names)
        + ". Any key of configs.yaml can be overridden: --key value or --section.key value "
        "(e.g. --steps 10000 --wm.d_model 256).")
    parser.add_argument("--configs", nargs="+", default=[], metavar="BLOCK",
                        help="config blocks to merge, e.g. --configs miniworld s4wm")
    args, rest = parser.parse_known_args(argv)
    try:
        return merge(blocks, args.configs, parse_overrides(rest))
    except ConfigError as e:
        fail(str(e))


def prepare_logdir(config, name: str | None = None, write: bool = True) -> pathlib.Path:
    """The run folder (derived from `name` or the task, backbone and seed unless given) with
    config.yaml in it. An existing folder is a run to resume: its saved config must match this one.
    write=False (data-parallel ranks other than 0) only checks."""
    name = name or config.task
    logdir = pathlib.Path(config.logdir or f"runs/{name}_{config.backbone}_seed{config.seed}")
    saved = logdir / "config.yaml"
    if saved.exists():
        try:
            check_resume(saved.read_text(), config, logdir)
        except ConfigError as e:
            fail(str(e))
    logdir.mkdir(parents=True, exist_ok=True)
    if not write:
        return logdir
    tmp = saved.with_name("config.yaml.tmp")
    tmp.write_text(config.dump())
    tmp.replace(saved)
    return logdir
