"""Does the agent learn? Train every backbone on one task and plot eval return against env steps.

    python -m bench.learning --configs miniworld learn --task miniworld_OneRoomS6Fast --steps 16000 \\
        --backbones rssm,s4wm,s5wm,tssm --seeds 0 --out reports/learning

(the defaults; dm-control: --configs dmc learn --task dmc_cartpole_balance, which does not learn at
this size and budget, see docs/learning.md). Extra arguments go to main.py (e.g. --threads 1,
--run.eval_every 2000).

Each run is an ordinary `main.py` run in <out>/<backbone>_seed<seed> (rerunning this command resumes
unfinished runs and skips finished ones). A random policy's return on the same task is measured and
drawn on the same plot. Writes <out>/learning.png, <out>/learning.md and <out>/learning.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from common.cli import run_main

ROOT = pathlib.Path(__file__).resolve().parent.parent


def read_curve(logdir: pathlib.Path, key: str = "eval/return"):
    path = logdir / "metrics.jsonl"
    if not path.exists():
        return np.zeros(0), np.zeros(0)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if key in r]
    return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows])


def random_return(task: str, episodes: int, seed: int, env_kw: dict) -> float:
    """Mean return of uniformly random actions over `episodes` episodes."""
    from envs import make_env
    env = make_env(task, seed=seed, **env_kw)
    rng, returns = np.random.default_rng(seed), []
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            space = env.action_space
            if space.__class__.__name__ == "OneHot":
                action = np.eye(space.shape[0], dtype=np.float32)[rng.integers(space.shape[0])]
            else:
                action = rng.uniform(-1, 1, space.shape).astype(np.float32)
            obs, reward, term, trunc, _ = env.step(action)
            total += reward
            done = term or trunc
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def plot(curves: dict, baseline: float, task: str, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["miniworld", "learn"])
    p.add_argument("--task", default="miniworld_OneRoomS6Fast")
    p.add_argument("--steps", type=int, default=16000)
    p.add_argument("--backbones", default="rssm,s4wm,s5wm,tssm")
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", default="reports/learning")
    p.add_argument("--random_episodes", type=int, default=10)
    p.add_argument("--no-run", action="store_true",
                   help="only read the runs already in --out and write the plot and table")
    args, extra = p.parse_known_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves, table, walls = {}, [], {}
    for backbone in args.backbones.split(","):
        for seed in args.seeds.split(","):
            logdir = out / f"{backbone}_seed{seed}"
            start = time.time()
            if not args.no_run:
                run_main(["--configs", *args.configs, backbone, "--task", args.task,
                          "--steps", str(args.steps), "--seed", seed, "--logdir", str(logdir),
                          "--run.progress", "false", *extra], f"{backbone} seed {seed}", ROOT)
            walls[f"{backbone}_seed{seed}"] = time.time() - start if not args.no_run else float("nan")
            steps, values = read_curve(logdir)
            curves[f"{backbone} (seed {seed})"] = (steps, values)
            table.append((backbone, seed, int(steps[-1]) if len(steps) else 0,
                          values[-1] if len(values) else float("nan"),
                          values.max() if len(values) else float("nan"), walls[f"{backbone}_seed{seed}"]))
    from common.config import load_blocks, merge
    config = merge(load_blocks(), list(args.configs), {"task": args.task})
    env_kw = {"image_size": config.env.image_size, "action_repeat": config.env.action_repeat or None,
              "time_limit": config.env.time_limit or None, "fast_render": config.env.fast_render}
    baseline = random_return(args.task, args.random_episodes, 0, env_kw)
    plot(curves, baseline, args.task, out / "learning.png")
    import torch
    from bench.backbones import machine
    info = machine(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    where = info.get("gpu") or f"{info['cpu']}, {info['cores']} cores"
    lines = [f"# Learning: {args.task}, {args.steps} env steps, configs {' '.join(args.configs)}",
             "", f"Machine: {where}; commit {info['commit']}; {time.strftime('%Y-%m-%d')}. "
             f"Random policy return: {baseline:.4g} ({args.random_episodes} episodes)", "",
             "| backbone | seed | last eval at step | final eval return | best eval return | wall time (this call) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {b} | {s} | {n} | {f:.4g} | {m:.4g} | {w / 60:.1f} min |" for b, s, n, f, m, w in table]
    (out / "learning.md").write_text("\n".join(lines) + "\n")
    (out / "learning.json").write_text(json.dumps(
        {"task": args.task, "random_return": baseline,
         "curves": {k: [s.tolist(), v.tolist()] for k, (s, v) in curves.items()}}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
