"""Train a comparison's cells: one `main.py` offline run per backbone and seed, N at once, and the
causal tests of each cell (causal_commands) while its checkpoint is on disk (memory.report's
training half; the checkpoints are not committed, so the tests cannot run later from the results).
"""
from __future__ import annotations

import json
import pathlib
import sys
import time

from common.cli import check_logdir, fail, parse, unresumable
from memory import shortcontext
from memory.train import evaluation_file, finished

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_python(args: list[str], log: pathlib.Path | None = None) -> tuple[int, float]:
    """`python *args` in the repository root, its output to this terminal or appended to `log`:
    (exit status, seconds)."""
    import subprocess
    cmd = [sys.executable, *args]
    start = time.time()
    if log is None:
        print("running:", " ".join(cmd), flush=True)
        code = subprocess.run(cmd, cwd=ROOT).returncode
    else:
        with open(log, "a") as out:
            out.write(f"running: {' '.join(cmd)}\n")
            out.flush()
            code = subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT).returncode
    return code, time.time() - start


def for_main(logdir: pathlib.Path) -> str:
    """The --logdir to give main.py, which runs in the repository root: relative to it where the
    folder lies inside it (the cell's config.yaml then names it as the committed files do)."""
    path = logdir.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def causal_commands(logdir: pathlib.Path) -> list[list[str]]:
    """The causal tests a trained cell lacks, or has from fewer updates than its last evaluation:
    Distracting Memory memory.cueswap (any backbone) and memory.readback (tssm); Multi Doors Keys
    and the rooms benchmarks memory.shortcontext. They need the
    checkpoint, which is not committed, so they run right after the cell's training. A file that
    cannot be read counts as missing (the test writes it anew)."""
    def read(path):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return result if isinstance(result, dict) else {}

    saved = read_saved_or_none(logdir / "config.yaml")
    updates = read(evaluation_file(logdir)).get("updates")
    if saved is None or not isinstance(updates, int):
        return []
    env = saved.get("memory.env")
    if env == "distracting_memory":
        tests = ["cueswap"] + (["readback"] if saved.get("backbone") == "tssm" else [])
    elif shortcontext.applies(env):
        tests = ["shortcontext"]
    else:
        return []
    stale = [t for t in tests if not isinstance(done := read(logdir / "eval" / f"{t}.json").get("updates"), int)
             or done < updates]
    return [["-m", f"memory.{t}", "--logdir", str(logdir)] for t in stale]


def read_saved_or_none(path: pathlib.Path) -> dict | None:
    from common.config import ConfigError, read_saved
    try:
        return read_saved(path)
    except ConfigError:  # main.py, which just ran on it, would have said so
        return None


def run_cell(configs, backbone: str, seed: str, logdir: pathlib.Path, extra: list[str],
             causal: bool, log: pathlib.Path | None = None, train: bool = True) -> tuple[float, int, str | None]:
    """Train (or resume) one cell (train=False: a finished one, only read), then its missing causal
    tests (`causal`): (training seconds, the training's exit status, None or why the cell failed)."""
    what = f"{backbone} seed {seed}"

    def say(line: str) -> None:
        if log is None:
            print(line, flush=True)
        else:
            with open(log, "a") as out:
                out.write(line + "\n")
    code, seconds = 0, 0.0
    if train:
        code, seconds = run_python(["main.py", "--configs", *configs, backbone, "--seed", seed, "--logdir",
                                    for_main(logdir), "--run.progress", "false", *extra], log)
    if code:
        return seconds, code, f"the {what} run failed (exit {code})"
    tests = causal_commands(logdir) if causal else []
    if tests and not (logdir / "checkpoint.pt").exists():  # a finished cell from another machine
        say(f"{what}: no checkpoint.pt in {logdir}, so {', '.join(a[1] for a in tests)} cannot run; "
            f"what the folder holds stays as it is")
        tests = []
    for args in tests:
        code, _ = run_python(args, log)
        if code:
            return seconds, 0, f"{args[1]} on {what} failed (exit {code}; --no-causal skips the tests)"
    return seconds, 0, None


def cell_state(configs, backbone: str, seed: str, logdir: pathlib.Path, extra: list[str]) -> tuple[str, str]:
    """("train", "") for a cell to train or resume; ("finished", how) for one that ended and lost its
    checkpoint (committed results: read as they are); ("refused", why) for one with results but no
    checkpoint to go on from. Its settings must match those the folder was trained with."""
    config = parse(["--configs", *configs, backbone, "--seed", seed, "--logdir", str(logdir), *extra])
    check_logdir(config)  # other settings than the folder's: one line
    if done := finished(logdir, config.offline):
        return "finished", done
    if why := unresumable(config, logdir):
        return "refused", why
    return "train", ""


def last_error(log: pathlib.Path) -> str:
    """The last 'error: ...' line of a cell's train.log ('' if none): why its run stopped."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("error: ")]
    except OSError:
        return ""
    return lines[-1][len("error: "):] if lines else ""


def train_cells(configs, cells: dict[str, dict[str, pathlib.Path]], extra: list[str], jobs: int,
                causal: bool) -> dict[str, float]:
    """Train every cell, `jobs` at a time (jobs > 1: the dataset is made first, and each cell's
    output goes to <cell>/train.log); {cell: training seconds} of the cells trained. A finished
    cell whose checkpoint is gone is read, not run (cell_state). A cell that fails for a reason of
    its own does not stop the others; bad input (exit status 2: the same for every cell) stops the
    cells not yet started. Then one line names every failure."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    todo = [(b, seed, logdir) for b, seeds in cells.items() for seed, logdir in seeds.items()]
    for _, _, logdir in todo:
        if logdir.exists() and not logdir.is_dir():
            fail(f"cell folder {logdir} is a file: give another --out")
    state = {logdir: cell_state(configs, b, seed, logdir, extra) for b, seed, logdir in todo}
    for (b, seed, logdir) in todo:
        if state[logdir][0] == "finished":
            print(f"{b} seed {seed}: {state[logdir][1]}; no checkpoint here: read as it is", flush=True)
    if jobs > 1 and any(kind == "train" for kind, _ in state.values()):  # one process makes the dataset
        code, _ = run_python(["-m", "memory.collect", "--configs", *configs, todo[0][0], *extra])
        if code:
            fail(f"making the dataset failed (exit {code}); its message is above")
    bad_input, interrupted = threading.Event(), threading.Event()

    def say(line: str) -> None:
        if jobs > 1 and not interrupted.is_set():
            print(line + "\n", end="", flush=True)  # one write: the threads' lines stay whole

    def one(cell):
        b, seed, logdir = cell
        name = f"{b}_seed{seed}"
        kind, why = state[logdir]
        if kind == "refused":
            return name, 0.0, f"{b} seed {seed}: {why}"
        if bad_input.is_set() or interrupted.is_set():
            return name, 0.0, "not started"
        log = None
        if kind == "finished":
            _, _, error = run_cell(configs, b, seed, logdir, extra, causal, train=False)
            return name, None, error
        try:
            if jobs > 1:
                logdir.mkdir(parents=True, exist_ok=True)
                log = logdir / "train.log"
                say(f"{b} seed {seed}: started, output in {log}")
            seconds, code, error = run_cell(configs, b, seed, logdir, extra, causal, log)
        except OSError as e:  # the folder or its log cannot be written
            return name, 0.0, f"{b} seed {seed}: {e}"
        say(f"{b} seed {seed}: {'done' if error is None else 'FAILED'} after {seconds / 60:.1f} min")
        if code == 2:  # main.py refused its input: it will refuse the other cells too
            bad_input.set()
        if error and log:
            error += f": {last_error(log) or 'see'} ({log})"
        elif error:
            error += "; its message is above"
        return name, seconds, error

    pool = ThreadPoolExecutor(jobs)
    try:
        done = list(pool.map(one, todo))
    except KeyboardInterrupt:  # the runs got the same Ctrl-C and save their checkpoints
        interrupted.set()
        print("interrupted: waiting for the running cells to save their checkpoints; rerun the same "
              "command to resume them", file=sys.stderr, flush=True)
        pool.shutdown(wait=True, cancel_futures=True)
        raise SystemExit(130) from None
    pool.shutdown()
    errors = [error for _, _, error in done if error and error != "not started"]
    skipped = [name for name, _, error in done if error == "not started"]
    if errors:
        fail("; ".join(errors) + (f"; not started: {', '.join(skipped)}" if skipped else ""))
    return {name: seconds for name, seconds, _ in done if seconds is not None}
