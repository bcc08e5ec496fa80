"""Does the agent learn? Train backbones x seeds x tasks; plot eval return or success against steps.

One task (the default; issue 4):

    python -m bench.learning --configs miniworld learn --task miniworld_OneRoomS6Fast --steps 16000 \\
        --backbones rssm,s4wm,s5wm,tssm --seeds 0 --out reports/learning

A study (issue 20): one command runs every cell of STUDIES[name] (task x backbone x seed):

    python -m bench.learning --study proprio            # dm-control from proprioception
    python -m bench.learning --study minigrid_memory    # MiniGrid Memory from pixels
    python -m bench.learning --study bsuite_memory      # bsuite memory_len (one vector)
    ... [--backbones rssm,s4wm] [--seeds 0,1,2] [--tasks a,b] [--steps N] [--jobs 2] [--no-run]
    python -m bench.learning --study proprio --add-configs debug --steps 150 --out /tmp/p \
        --results /tmp/p/results                     # a tiny run of every cell (a smoke test)

Each run is an ordinary `main.py` run (resumable) in <out>/<backbone>_seed<seed> (one task) or
<out>/<task>/<backbone>_seed<seed> (a study); rerunning the command resumes unfinished runs and
skips finished ones (last logged step >= steps). --jobs N runs N cells at once, each logging to
<logdir>/run.log (give each --threads 1 on a small machine: the study blocks do). Arguments this
command does not know go to every main.py run (e.g. --run.eval_every 2000).

A uniformly random policy is measured on every task. Outputs, one task: <out>/learning.png, .md,
.json. A study writes its small result files to --results (default
docs/results/learning/<study>, to be committed; the runs stay in --out, default
reports/learning/<study>; tables and plots: bench/study_report.py):
    control   <task>.png       eval return vs agent steps, mean +- s.e. over seeds per backbone,
                               random policy dashed, the anchor's curve (--anchor) dotted
    memory    success.png      final eval success rate vs the steps to remember, mean +- s.e.
                               over seeds per backbone, chance (0.5) and random policy marked;
              curves.png       eval success vs agent steps, one panel per task
    both      results.md       one row per task x backbone (mean +- s.e., n seeds, wall time)
              results.json     every run's curve, the random baselines, the study's settings
--anchor FILE: published numbers to print beside ours, JSON {task: {"source": str, "steps": [...],
"return": [...]}} (control: interpolated at our last eval step; steps in agent steps) or
{task: {"source": str, "success": float}} (memory).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import pathlib
import subprocess
import sys
import time
from typing import Callable, NamedTuple

import numpy as np

from bench.study_report import (WALL, machine_line, pyplot, read_curve, summarise, wall_minutes,
                                write_study)
from common.cli import fail, logged_step, run_main

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _bsuite_length(task: str) -> int:
    from envs.bsuite import memory_length
    return memory_length(task.removeprefix("bsuite_"))


def _minigrid_hallway(task: str) -> int:
    from envs.minigrid import hallway
    return hallway(task.removeprefix("minigrid_"))


def _window(task: str) -> list[str]:
    """bsuite memory_len_L: windows of T >= 2 (L + 1) steps (a multiple of 16, at least 32) hold a
    whole episode, cue to decision, half of the time; the TSSM window and the RSSM TBTT chunk
    span T too, and the train ratio grows with T so that an update still comes every 8 steps."""
    L = _bsuite_length(task)
    T = max(32, 16 * math.ceil(2 * (L + 1) / 16))
    return ["--train.seq_len", str(T), "--tssm.mem_len", str(T), "--rssm.tbtt_length", str(T),
            "--train.train_ratio", str(2.0 * T)]


class Study(NamedTuple):
    configs: tuple[str, ...]                 # config blocks (the backbone block is added last)
    tasks: tuple[str, ...]
    steps: int                               # agent steps per run
    memory: Callable[[str], int] | None      # memory studies: task -> steps to remember (x axis)
    extra: Callable[[str], list[str]] = lambda task: []   # per-task main.py overrides
    random_episodes: int = 20


# Sizes and steps chosen so that one run takes about an hour on one core of the 2-core build
# machine (docs/learning.md); two runs at once with --jobs 2.
STUDIES = {
    "proprio": Study(("dmc_proprio", "vector_cpu"),
                     ("dmc_proprio_cartpole_balance", "dmc_proprio_cartpole_swingup",
                      "dmc_proprio_walker_walk"), steps=50_000, memory=None, random_episodes=10),
    "minigrid_memory": Study(("minigrid", "learn", "memory_control"),
                             ("minigrid_MemoryS7", "minigrid_MemoryS9", "minigrid_MemoryS11",
                              "minigrid_MemoryS13"), steps=30_000, memory=_minigrid_hallway),
    "bsuite_memory": Study(("bsuite", "vector_cpu", "memory_control"),
                           ("bsuite_memory_len_5", "bsuite_memory_len_10", "bsuite_memory_len_20",
                            "bsuite_memory_len_40"), steps=20_000, memory=_bsuite_length,
                           extra=_window, random_episodes=200),
}


# ---- reading runs -------------------------------------------------------------------------------

def random_returns(task: str, episodes: int, seed: int, env_kw: dict) -> np.ndarray:
    """Returns of uniformly random actions over `episodes` episodes, (episodes,)."""
    from envs import make_env
    from envs.spaces import OneHot
    env = make_env(task, seed=seed, **env_kw)
    rng, returns = np.random.default_rng(seed), []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            space = env.action_space
            if isinstance(space, OneHot):
                action = space.from_index(rng.integers(space.n))
            else:
                action = rng.uniform(-1, 1, space.shape).astype(np.float32)
            _, reward, term, trunc, _ = env.step(action)
            total += reward
            done = term or trunc
        returns.append(total)
    env.close()
    return np.array(returns)


def random_return(task: str, episodes: int, seed: int, env_kw: dict) -> float:
    """Mean return of uniformly random actions over `episodes` episodes."""
    return float(random_returns(task, episodes, seed, env_kw).mean())


def env_kwargs_for(configs, task: str) -> dict:
    from agent.experience import env_kwargs
    from common.config import load_blocks, merge
    return env_kwargs(merge(load_blocks(), list(configs), {"task": task}))


# ---- running cells ------------------------------------------------------------------------------

def _add_wall(logdir: pathlib.Path, seconds: float) -> None:
    path = logdir / WALL
    total = (json.loads(path.read_text())["seconds"] if path.exists() else 0.0) + seconds
    path.write_text(json.dumps({"seconds": total}))


def run_cells(cells: list[tuple[list[str], str, pathlib.Path]], jobs: int) -> None:
    """Run main.py for each (args, name, logdir), `jobs` at a time, adding each run's wall time
    to <logdir>/bench_wall.json. jobs == 1: output to this terminal and the first failure stops
    (one error line); else each run writes <logdir>/run.log and the failures are named at the
    end."""
    if jobs == 1:
        for args, name, logdir in cells:
            start = time.time()
            run_main(args, name, ROOT)
            _add_wall(logdir, time.time() - start)
        return

    def one(cell):
        args, name, logdir = cell
        logdir.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(logdir / "run.log", "a") as log:
            code = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT).returncode
        _add_wall(logdir, time.time() - start)
        return name, time.time() - start, code, logdir

    failed = []
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for name, wall, code, logdir in pool.map(one, cells):
            print(f"{name}: {'done' if code == 0 else f'FAILED (exit {code})'} "
                  f"in {wall / 60:.1f} min", flush=True)
            if code:
                failed.append(f"{name} ({logdir / 'run.log'})")
    if failed:
        fail(f"{len(failed)} run(s) failed: {', '.join(failed)}")


# ---- one task (issue 4) -------------------------------------------------------------------------

def plot(curves: dict, baseline: float, task: str, path: pathlib.Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, (steps, values) in curves.items():
        if len(steps):
            ax.plot(steps, values, marker="o", ms=3, label=name)
    ax.axhline(baseline, color="gray", ls="--", label="random policy")
    ax.set_xlabel("agent steps (after action repeat)"), ax.set_ylabel("eval return"), ax.set_title(task)
    ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def single_task(args, extra) -> None:
    out = pathlib.Path(args.out or "reports/learning")
    out.mkdir(parents=True, exist_ok=True)
    configs, task = args.configs or ["miniworld", "learn"], args.task or "miniworld_OneRoomS6Fast"
    steps = args.steps or 16000
    cells = [(["--configs", *configs, b, "--task", task, "--steps", str(steps), "--seed", s,
               "--logdir", str(out / f"{b}_seed{s}"), "--run.progress", "false", *extra],
              f"{b} seed {s}", out / f"{b}_seed{s}")
             for b in args.backbones.split(",") for s in args.seeds.split(",")]
    if not args.no_run:
        run_cells(cells, args.jobs)
    curves, table = {}, []
    for _, _, logdir in cells:
        backbone, seed = logdir.name.rsplit("_seed", 1)
        steps_, values = read_curve(logdir)
        curves[f"{backbone} (seed {seed})"] = (steps_, values)
        table.append((backbone, seed, int(steps_[-1]) if len(steps_) else 0,
                      values[-1] if len(values) else float("nan"),
                      values.max() if len(values) else float("nan"), wall_minutes(logdir)))
    baseline = random_return(task, args.random_episodes or 10, 0, env_kwargs_for(configs, task))
    plot(curves, baseline, task, out / "learning.png")
    lines = [f"# Learning: {task}, {steps} env steps, configs {' '.join(configs)}", "",
             f"{machine_line()}. Random policy return: {baseline:.4g} "
             f"({args.random_episodes or 10} episodes)", "",
             "| backbone | seed | last eval at step | final eval return | best eval return "
             "| wall time |", "|---|---|---|---|---|---|"]
    lines += [f"| {b} | {s} | {n} | {f:.4g} | {m:.4g} | {w:.1f} min |"
              for b, s, n, f, m, w in table]
    (out / "learning.md").write_text("\n".join(lines) + "\n")
    (out / "learning.json").write_text(json.dumps(
        {"task": task, "random_return": baseline,
         "curves": {k: [s.tolist(), v.tolist()] for k, (s, v) in curves.items()}}, indent=1))
    print("\n".join(lines))


# ---- a study (issue 20) -------------------------------------------------------------------------

def study_cells(name: str, study: Study, tasks, backbones, seeds, steps, out, extra,
                add_configs=()):
    """[(main.py args, cell name, logdir)] of every task x backbone x seed of a study; add_configs:
    blocks merged after the study's (e.g. debug)."""
    cells = []
    for task in tasks:
        for b in backbones:
            for s in seeds:
                logdir = out / task / f"{b}_seed{s}"
                args = ["--configs", *study.configs, *add_configs, b, "--task", task,
                        "--steps", str(steps),
                        "--seed", s, "--logdir", str(logdir), "--run.progress", "false",
                        *study.extra(task), *extra]
                cells.append((args, f"{name} {task} {b} seed {s}", logdir))
    return cells


def run_study(args, extra) -> None:
    if args.study not in STUDIES:
        fail(f"unknown study '{args.study}' (choices: {', '.join(STUDIES)})")
    if args.configs or args.task:
        fail("--configs and --task belong to the one-task mode; a study has its own "
             "(--tasks picks some of its tasks)")
    study = STUDIES[args.study]
    tasks = args.tasks.split(",") if args.tasks else list(study.tasks)
    backbones, seeds = args.backbones.split(","), args.seeds.split(",")
    steps = args.steps or study.steps
    out = pathlib.Path(args.out or f"reports/learning/{args.study}")
    results = pathlib.Path(args.results or f"docs/results/learning/{args.study}")
    from envs import parse_task
    for task in tasks:
        try:
            parse_task(task)
        except ValueError as e:
            fail(str(e))
    cells = study_cells(args.study, study, tasks, backbones, seeds, steps, out, extra,
                        args.add_configs)
    todo = [c for c in cells if (logged_step(c[2]) or 0) < steps]  # a finished run logs its last step
    print(f"study {args.study}: {len(cells)} runs, {len(cells) - len(todo)} finished, "
          f"{len(todo)} to run ({args.jobs} at a time)", flush=True)
    if not args.no_run:
        run_cells(todo, args.jobs)
    episodes = args.random_episodes or study.random_episodes
    randoms = {}
    for task in tasks:
        r = random_returns(task, episodes, 0,
                           env_kwargs_for([*study.configs, *args.add_configs], task))
        randoms[task] = {"return": float(r.mean()), "success": float((r > 0).mean()),
                         "episodes": episodes}
    anchors = json.loads(pathlib.Path(args.anchor).read_text()) if args.anchor else {}
    summary = summarise(tasks, backbones, seeds, out)
    lines = write_study(args.study, study, summary, randoms, anchors, results, steps, seeds)
    print("\n".join(lines))
    print(f"wrote {results}/results.md, results.json and plots")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--study", default="", help=f"run a study: {', '.join(STUDIES)}")
    p.add_argument("--configs", nargs="+", default=None, help="one task: blocks (miniworld learn)")
    p.add_argument("--task", default="", help="one task: the task (miniworld_OneRoomS6Fast)")
    p.add_argument("--tasks", default="", help="a study: some of its tasks, comma-separated")
    p.add_argument("--add-configs", nargs="+", default=[], metavar="BLOCK",
                   help="a study: blocks merged after its own (debug: a tiny run of every cell)")
    p.add_argument("--steps", type=int, default=0, help="agent steps per run (0: the default)")
    p.add_argument("--backbones", default="rssm,s4wm,s5wm,tssm")
    p.add_argument("--seeds", default="", help="comma-separated (one task: 0; a study: 0,1,2)")
    p.add_argument("--out", default="", help="where the runs go")
    p.add_argument("--results", default="", help="a study: where its small result files go")
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--anchor", default="", help="a study: JSON of published numbers (docstring)")
    p.add_argument("--random_episodes", type=int, default=0)
    p.add_argument("--no-run", action="store_true",
                   help="only read the runs already in --out and write the plots and tables")
    args, extra = p.parse_known_args(argv)
    if args.jobs < 1:
        fail(f"--jobs must be >= 1, got {args.jobs}")
    args.seeds = args.seeds or ("0,1,2" if args.study else "0")
    if args.study:
        run_study(args, extra)
    else:
        single_task(args, extra)


if __name__ == "__main__":
    main()
