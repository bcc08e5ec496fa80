"""Tables and plots of a learning study (bench/learning.py): mean +- standard error over seeds.

    summary = summarise(tasks, backbones, seeds, out)    # {task: {backbone: runs and statistics}}
    write_study(name, study, summary, randoms, anchors, results, steps, seeds)

Per task and backbone: each seed's curves (eval/return, eval/success against agent steps) and the
mean +- s.e. of each seed's last evaluation. Control studies plot the return against steps per
task; memory studies the last success rate against the steps to remember (chance marked).
"""
from __future__ import annotations

import json
import pathlib
import time

import numpy as np

CHANCE = 0.5  # success of a guess between the two choices of both memory tasks


def read_curve(logdir: pathlib.Path, key: str = "eval/return"):
    """(steps (n,), values (n,)) of `key` in a run's metrics.jsonl (empty when missing)."""
    path = logdir / "metrics.jsonl"
    if not path.exists():
        return np.zeros(0), np.zeros(0)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if key in r]
    return np.array([r["step"] for r in rows]), np.array([r[key] for r in rows])


WALL = "bench_wall.json"  # in a run's logdir: seconds spent in it by bench.learning, over all calls


def wall_minutes(logdir: pathlib.Path) -> float:
    path = logdir / WALL
    return json.loads(path.read_text())["seconds"] / 60 if path.exists() else float("nan")


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n)) of per-seed values; s.e. nan for n < 2."""
    v = np.asarray(values, float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def fmt(mean: float, se: float) -> str:
    """'m +- se' (4 and 2 significant digits), 'm' without an s.e., 'n/a' without runs."""
    if np.isnan(mean):
        return "n/a"
    return f"{mean:.4g}" if np.isnan(se) else f"{mean:.4g} +- {se:.2g}"


def summarise(tasks, backbones, seeds, out: pathlib.Path) -> dict:
    """{task: {backbone: {...}}}: each seed's curve (eval/return, eval/success) and the mean +-
    s.e. over seeds of its last evaluation."""
    summary = {}
    for task in tasks:
        summary[task] = {}
        for b in backbones:
            runs = {}
            for s in seeds:
                logdir = out / task / f"{b}_seed{s}"
                steps, ret = read_curve(logdir, "eval/return")
                _, success = read_curve(logdir, "eval/success")
                runs[s] = {"steps": steps.tolist(), "return": ret.tolist(),
                           "success": success.tolist(), "wall_min": wall_minutes(logdir)}
            done = [r for r in runs.values() if r["steps"]]
            summary[task][b] = {
                "runs": runs, "n": len(done),
                "last_step": min((r["steps"][-1] for r in done), default=0),
                "return": mean_se([r["return"][-1] for r in done]),
                "success": mean_se([r["success"][-1] for r in done if r["success"]])}
    return summary


def anchor_value(anchors: dict, task: str, step: int, memory: bool) -> tuple[str, str]:
    """(value at `step`, source) of the published anchor for `task`, or ('', '')."""
    a = anchors.get(task)
    if not a:
        return "", ""
    if memory:
        return f"{a['success']:.3g}", a.get("source", "")
    if not step:
        return "", a.get("source", "")
    return f"{np.interp(step, a['steps'], a['return']):.4g}", a.get("source", "")


def write_study(name: str, study, summary: dict, randoms: dict, anchors: dict,
                results: pathlib.Path, steps: int, seeds) -> list[str]:
    """results.md, results.json and the plots of `study` (a bench.learning.Study) in `results`;
    randoms: {task: {'return', 'success'}} of the random policy. Returns the table's lines."""
    results.mkdir(parents=True, exist_ok=True)
    memory = study.memory is not None
    lines = [f"# Study {name}: {steps} agent steps per run, configs {' '.join(study.configs)} "
             f"<backbone>, seeds {','.join(seeds)}", "", f"{machine_line()}.", "",
             "Mean +- standard error over seeds of each run's last evaluation "
             "(`eval/return`, `eval/success`: the fraction of greedy episodes with a return > 0)."]
    if memory:
        lines += ["", f"Chance: success {CHANCE} (a guess between the two choices).", "",
                  "| task | steps to remember | backbone | seeds | last eval at step | success | "
                  "return | random policy success | anchor success | wall time per run |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines += ["", "| task | backbone | seeds | last eval at step | eval return | random policy "
                  "return | anchor at that step | wall time per run |",
                  "|---|---|---|---|---|---|---|---|"]
    for task, per in summary.items():
        rnd = randoms[task]
        for b, s in per.items():
            walls = [r["wall_min"] for r in s["runs"].values() if not np.isnan(r["wall_min"])]
            wall = f"{np.mean(walls):.1f} min" if walls else "n/a"
            value, source = anchor_value(anchors, task, s["last_step"], memory)
            anchor = f"{value} ({source})" if value else ""
            if memory:
                lines.append(f"| {task} | {study.memory(task)} | {b} | {s['n']} | {s['last_step']} "
                             f"| {fmt(*s['success'])} | {fmt(*s['return'])} | "
                             f"{rnd['success']:.3g} | {anchor} | {wall} |")
            else:
                lines.append(f"| {task} | {b} | {s['n']} | {s['last_step']} | {fmt(*s['return'])} "
                             f"| {rnd['return']:.4g} | {anchor} | {wall} |")
    (results / "results.md").write_text("\n".join(lines) + "\n")
    (results / "results.json").write_text(json.dumps(
        {"study": name, "configs": study.configs, "steps": steps, "seeds": list(seeds),
         "random": randoms, "anchors": anchors, "summary": summary}, indent=1))
    if memory:
        plot_memory(study, summary, randoms, anchors, results)
    else:
        for task in summary:
            plot_control(task, summary[task], randoms[task], anchors.get(task), results)
    return lines


def _band(runs: dict, key: str):
    """Steps all seeds evaluated at, and the mean and s.e. over seeds there."""
    curves = [dict(zip(r["steps"], r[key])) for r in runs.values() if r[key]]
    if not curves:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    common = sorted(set.intersection(*(set(c) for c in curves)))
    stats = [mean_se([c[t] for c in curves]) for t in common]
    mean = np.array([m for m, _ in stats])
    se = np.nan_to_num(np.array([e for _, e in stats]))
    return np.array(common), mean, se


def plot_control(task: str, per: dict, rnd: dict, anchor: dict | None, results: pathlib.Path):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for b, s in per.items():
        steps, mean, se = _band(s["runs"], "return")
        if len(steps):
            ax.plot(steps, mean, marker="o", ms=3, label=f"{b} (n={s['n']})")
            ax.fill_between(steps, mean - se, mean + se, alpha=0.2)
    ax.axhline(rnd["return"], color="gray", ls="--", label="random policy")
    if anchor:
        ax.plot(anchor["steps"], anchor["return"], color="black", ls=":",
                label=anchor.get("source", "anchor"))
    ax.set_xlabel("agent steps (after action repeat)"), ax.set_ylabel("eval return")
    ax.set_title(f"{task}: mean +- s.e. over seeds")
    ax.legend(fontsize=7), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(results / f"{task}.png")
    plt.close(fig)


def plot_memory(study, summary: dict, randoms: dict, anchors: dict, results: pathlib.Path):
    plt = pyplot()
    tasks = list(summary)
    x = [study.memory(t) for t in tasks]
    backbones = list(next(iter(summary.values()))) if summary else []
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for b in backbones:
        stats = [summary[t][b]["success"] for t in tasks]
        ax.errorbar(x, [m for m, _ in stats], yerr=np.nan_to_num([e for _, e in stats]),
                    marker="o", ms=4, capsize=3, label=b)
    ax.axhline(CHANCE, color="gray", ls="--", label="chance")
    ax.plot(x, [randoms[t]["success"] for t in tasks], color="gray", ls=":", label="random policy")
    marked = [(study.memory(t), anchors[t]) for t in tasks if t in anchors]
    if marked:
        ax.plot([m for m, _ in marked], [a["success"] for _, a in marked], "k*", ms=8,
                label=marked[0][1].get("source", "anchor"))
    ax.set_xlabel("steps to remember"), ax.set_ylabel("eval success rate (last evaluation)")
    ax.set_ylim(-0.05, 1.05), ax.legend(fontsize=7), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(results / "success.png")
    plt.close(fig)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3 * len(tasks), 3), dpi=120, squeeze=False)
    for ax, t in zip(axes[0], tasks):
        for b in backbones:
            steps, mean, se = _band(summary[t][b]["runs"], "success")
            if len(steps):
                ax.plot(steps, mean, label=b)
                ax.fill_between(steps, mean - se, mean + se, alpha=0.2)
        ax.axhline(CHANCE, color="gray", ls="--")
        ax.set_title(t, fontsize=8), ax.set_ylim(-0.05, 1.05), ax.grid(alpha=0.3)
        ax.set_xlabel("agent steps", fontsize=7)
    axes[0][0].set_ylabel("eval success"), axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(results / "curves.png")
    plt.close(fig)


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def machine_line() -> str:
    import torch
    from common.machine import machine
    info = machine(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    where = info.get("gpu") or f"{info['cpu']}, {info['cores']} cores"
    return f"Machine: {where}; commit {info['commit']}; {time.strftime('%Y-%m-%d')}"
