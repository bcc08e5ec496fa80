"""The memory-benchmark comparison: train several backbones (and seeds) offline on one dataset and
write one report folder with a markdown table, plots and side-by-side imagination videos.

    python -m memory.report --configs distracting_memory memory_cpu --backbones s4wm,rssm,tssm \\
        --seeds 0 --out reports/memory/distracting_memory [--key value ...]

Each cell is an ordinary `main.py` offline run in <out>/<backbone>_seed<seed> (extra --key value
arguments go to every run; rerunning resumes unfinished cells and only re-reads finished ones).
--report-only trains nothing and writes the report from the cells' saved evaluations (the committed
result files are enough: without eval/prediction.npz there is no video); --at N takes the table from
every cell's evaluation at N updates (eval/metrics_<N>.json), e.g. while cells have unequal budgets.
The dataset is made once (memory.out, default datasets/<name>; episodes drawn from memory.seed, not from
the run seeds) and shared by every cell.
Writes <out>/report.md (table: mean +- standard error over seeds of every eval/metrics.json summary
value; Distracting Memory: the perception gate, a memory score counts only where the model reads the
cue colour from the first frame at least PERCEPTION_GATE of the time; the cost of every cell),
<out>/report.json, <out>/progress.png and tables (the headline scores, PROGRESS, at every periodic
evaluation: mean +- standard error over seeds vs update, chance dashed: is a memory score still
rising where training stopped?), <out>/loss.png (training loss vs update, one line per cell),
<out>/<metric>.png (metric vs imagination step, one line per backbone; rooms,
multi doors keys and memory maze, which adds the probe scores vs the observed episode step) and
<out>/imagination.mp4 + imagination.png (episode 0 of the test set; columns: truth, then each
backbone's prediction and |error|; seed of the first listed seed).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from common.cli import run_main

ROOT = pathlib.Path(__file__).resolve().parent.parent
PERCEPTION_GATE = 0.95  # cue_acc_start needed before a Distracting Memory memory score counts
CURVES = {  # metric -> (y label, x label, index of the first value: imagination steps count from 1)
    "mse": ("MSE per pixel (lower is better)", "imagination step", 1),
    "psnr": ("PSNR, dB (higher is better)", "imagination step", 1),
    "ssim": ("SSIM (higher is better)", "imagination step", 1),
    "wall_acc": ("probe: wall accuracy (higher is better)", "episode step (observed)", 0),
    "object_mse": ("probe: object position error, cells² (lower is better)", "episode step (observed)", 0),
    "behind_acc": ("probe: walls behind the agent, accuracy", "episode step (observed)", 0),
}
# The headline scores, followed over training (eval/metrics_<updates>.json): metric -> chance level
# (None: no chance level). Whether a memory score is still rising is what says if a budget was enough.
PROGRESS = {"reward_acc_inference": 0.5, "reward_acc_imagination": 0.5,
            "cue_acc_hallway_end": "colours", "gen_mse": None, "recon_mse": None}


def run_cell(configs, backbone: str, seed: str, logdir: pathlib.Path, extra: list[str]) -> float:
    start = time.time()
    run_main(["--configs", *configs, backbone, "--seed", seed, "--logdir", str(logdir),
              "--run.progress", "false", *extra], f"{backbone} seed {seed}", ROOT)
    return time.time() - start


def cell_results(logdir: pathlib.Path, at: int | None = None) -> tuple[dict, dict | None]:
    """(the cell's evaluation: the last one, eval/metrics.json, or the one at `at` updates,
    eval/metrics_<at>.json; the last evaluation's prediction.npz with its 'updates', None where it
    is not kept: it is not committed). A missing evaluation stops with one line naming the cell."""
    path = logdir / "eval" / ("metrics.json" if at is None else f"metrics_{at:08d}.json")
    if not path.exists():
        have = sorted(int(p.stem.split("_")[1]) for p in (logdir / "eval").glob("metrics_*.json"))
        from common.cli import fail
        fail(f"{logdir} has no evaluation" + ("" if at is None else f" at {at} updates") +
             f" ({path.name} is missing; evaluated at: {', '.join(map(str, have)) or 'none'}): "
             f"run the cell (without --report-only) or choose --at among its evaluations")
    result = json.loads(path.read_text())
    if "budget" not in result:  # evaluated before results recorded it: the run's saved config
        from common.config import read_saved
        result["budget"] = read_saved(logdir / "config.yaml").get("offline.updates")
    npz = logdir / "eval" / "prediction.npz"
    if not npz.exists():
        return result, None
    prediction = dict(np.load(npz))
    prediction["updates"] = json.loads((logdir / "eval" / "metrics.json").read_text())["updates"]
    return result, prediction


def table(results: dict[str, list[dict]]) -> list[str]:
    """Rows backbone, columns the summary keys: mean (+- standard error over seeds)."""
    keys = sorted({k for rs in results.values() for r in rs for k in r["summary"]})
    lines = ["| backbone | seeds | updates | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for name, rs in results.items():
        cells = []
        for k in keys:
            vals = np.array([r["summary"].get(k, np.nan) for r in rs], float)
            text = _fmt(np.nanmean(vals), k)
            if len(vals) > 1:
                text += " ± " + _fmt(np.nanstd(vals, ddof=1) / np.sqrt(len(vals)), k)
            cells.append(text)
        updates = sorted({r["updates"] for r in rs})
        shown = str(updates[0]) if len(updates) == 1 else f"{updates[0]}-{updates[-1]}"
        lines.append(f"| {name} | {len(rs)} | {shown} | " + " | ".join(cells) + " |")
    return lines


def perception_gate(results: dict[str, list[dict]]) -> list[str]:
    """Distracting Memory: per backbone and seed, is the cue colour read from the first frame (cue in
    view) at least PERCEPTION_GATE of the time? A reward or cue-memory score of a cell that fails
    this measures perception, not memory, and does not count. [] when there is no cue probe."""
    if not any("cue_acc_start" in r["summary"] for rs in results.values() for r in rs):
        return []
    lines = [f"Perception gate: a memory score counts only where the cue colour probe at the first "
             f"frame is at least {100 * PERCEPTION_GATE:.0f}%: the probe on the posterior "
             f"distribution of frame 0 (cue_acc_start_posterior; cells evaluated before it existed: "
             f"the probe on [h, z], whose z is one sample of it).", "",
             "| backbone | seed | cue acc., frame 0 posterior | cue acc., frame 0 [h, z] "
             "| memory scores count |", "|---|---|---|---|---|"]
    for name, rs in results.items():
        for r in rs:
            s = r["summary"]
            feat, post = s.get("cue_acc_start", float("nan")), s.get("cue_acc_start_posterior")
            acc = feat if post is None else post
            ok = "yes" if acc >= PERCEPTION_GATE else "**no**: perception fails first"
            shown = "not measured" if post is None else f"{100 * post:.1f}%"
            lines.append(f"| {name} | {r.get('seed', '?')} | {shown} | {100 * feat:.1f}% | {ok} |")
    return lines


def loss_change(windows: list[float]) -> str:
    """The last evaluation window's mean training loss against the one before, e.g. '-2.9%' (how
    flat the loss was where training stopped), or '-' with fewer than two windows."""
    if len(windows) < 2 or not windows[-2]:
        return "-"
    return f"{100 * (windows[-1] - windows[-2]) / abs(windows[-2]):+.1f}%"


def cost(results: dict[str, list[dict]]) -> list[str]:
    """Per cell: updates, training time (all calls), how the loss changed over the last window and
    whether the run stopped early at a plateau (offline.plateau)."""
    lines = ["| cell | updates | training time | loss, last window vs the one before | "
             "stopped early at a plateau |", "|---|---|---|---|---|"]
    for name, rs in results.items():
        for r in rs:
            seconds = r.get("train_seconds")
            spent = f"{seconds / 60:.1f} min" if seconds is not None else "not recorded"
            early = bool(r.get("plateau")) and r.get("updates", 0) < (r.get("budget") or float("inf"))
            lines.append(f"| {name} seed {r.get('seed', '?')} | {r['updates']} | {spent} | "
                         f"{loss_change(r.get('loss_windows', []))} | {'yes' if early else 'no'} |")
    return lines


def progress(logdirs: dict[str, list[pathlib.Path]]) -> dict[str, dict[int, list[dict]]]:
    """backbone -> {updates: [summary of every seed evaluated at that many updates]} from each cell's
    periodic evaluations (eval/metrics_<updates>.json); only budgets that every seed reached."""
    out = {}
    for name, dirs in logdirs.items():
        per_seed = []
        for logdir in dirs:
            found = {}
            for path in sorted((logdir / "eval").glob("metrics_*.json")):
                result = json.loads(path.read_text())
                found[int(result["updates"])] = result["summary"]
            per_seed.append(found)
        common = sorted(set.intersection(*(set(f) for f in per_seed))) if per_seed else []
        out[name] = {u: [f[u] for f in per_seed] for u in common}
    return out


def _chance(metric: str) -> float | None:
    level = PROGRESS.get(metric)
    if level == "colours":
        from envs.gridmemory import COLOURS
        return 1 / len(COLOURS)
    return level


def _mean_se(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(np.mean(v)), float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def progress_table(history: dict[str, dict[int, list[dict]]], metric: str, every: int = 2000) -> list[str]:
    """Rows backbone, columns every `every`-th evaluated budget (and the last): mean +- standard
    error over seeds of `metric`; [] when no cell has it."""
    budgets = sorted({u for h in history.values() for u, s in h.items()
                      if any(metric in x for x in s)})
    if not budgets:
        return []
    shown = [u for u in budgets if u % every == 0 or u == budgets[-1]]
    chance = _chance(metric)
    lines = [f"{metric} by updates (mean ± s.e. over seeds"
             + (f"; chance {_fmt(chance, metric)}" if chance is not None else "") + "):", "",
             "| backbone | " + " | ".join(str(u) for u in shown) + " |", "|---|" + "---|" * len(shown)]
    for name, h in history.items():
        cells = []
        for u in shown:
            vals = [x[metric] for x in h.get(u, []) if metric in x]
            if not vals:
                cells.append("-")
                continue
            m, se = _mean_se(vals)
            cells.append(_fmt(m, metric) + ("" if np.isnan(se) else " ± " + _fmt(se, metric)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def plot_progress(history: dict[str, dict[int, list[dict]]], title: str, out: pathlib.Path) -> str | None:
    """The PROGRESS scores vs update: per backbone the mean over seeds (band: +- one standard error),
    each seed as a thin line, chance dashed -> progress.png; None when nothing was evaluated twice."""
    metrics = [m for m in PROGRESS if any(m in x for h in history.values() for s in h.values() for x in s)]
    if not metrics or max((len(h) for h in history.values()), default=0) < 2:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.3), dpi=120, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for i, (name, h) in enumerate(history.items()):
            steps = [u for u in sorted(h) if all(metric in x for x in h[u])]
            if not steps:
                continue
            colour = f"C{i}"
            seeds = np.array([[x[metric] for x in h[u]] for u in steps])  # (budgets, seeds)
            for k in range(seeds.shape[1]):
                ax.plot(steps, seeds[:, k], color=colour, lw=0.6, alpha=0.35)
            mean = seeds.mean(1)
            ax.plot(steps, mean, color=colour, lw=1.8, label=f"{name} ({seeds.shape[1]} seeds)")
            if seeds.shape[1] > 1:
                se = seeds.std(1, ddof=1) / np.sqrt(seeds.shape[1])
                ax.fill_between(steps, mean - se, mean + se, color=colour, alpha=0.15)
        chance = _chance(metric)
        if chance is not None:
            ax.axhline(chance, color="k", ls="--", lw=0.8, label="chance")
        ax.set_xlabel("update"), ax.set_title(metric, fontsize=9), ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "progress.png")
    plt.close(fig)
    return "progress.png"


def plot_loss(logdirs: dict[str, pathlib.Path], title: str, out: pathlib.Path) -> str | None:
    """Training loss (metrics.jsonl 'train/loss') vs update, one line per cell -> loss.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    drawn = False
    for cell, logdir in logdirs.items():
        path = logdir / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = sorted({r["step"]: r["train/loss"] for r in rows if "train/loss" in r}.items())
        if rows:
            steps, loss = np.array(rows).T
            ax.plot(steps, loss, lw=1, label=cell)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_yscale("log")
    ax.set_xlabel("update"), ax.set_ylabel("training loss"), ax.set_title(title)
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "loss.png")
    plt.close(fig)
    return "loss.png"


def _fmt(value: float, key: str) -> str:
    if key.startswith(("reward_acc", "cue_acc", "probe_wall_acc", "probe_local_acc", "probe_behind_acc")):
        return f"{100 * value:.1f}%"
    if "mse_sum" in key or "psnr" in key or key.startswith("probe_object"):
        return f"{value:.2f}"
    return f"{value:.4f}"


def plot_curves(results: dict[str, list[dict]], title: str, out: pathlib.Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for metric, (label, xlabel, first) in CURVES.items():
        series = {n: np.mean([r["curves"][metric] for r in rs], 0) for n, rs in results.items()
                  if rs and metric in rs[0]["curves"]}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        for name, values in series.items():
            ax.plot(np.arange(first, len(values) + first), values, label=name, lw=1.2)
        ax.set_xlabel(xlabel), ax.set_ylabel(label), ax.set_title(title)
        ax.grid(alpha=0.3), ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{metric}.png")
        plt.close(fig)
        written.append(f"{metric}.png")
    return written


def side_by_side(truth: np.ndarray, predictions: dict[str, np.ndarray]) -> np.ndarray:
    """truth (T, H, W, C), predictions name -> (T, H, W, C) -> frames (T, 2H, (1+n)W, C): top row
    truth then each prediction, bottom row blank then each |error|."""
    T = min([len(truth)] + [len(p) for p in predictions.values()])
    truth = truth[:T]
    preds = [p[:T] for p in predictions.values()]
    errors = [np.abs(p.astype(np.int16) - truth.astype(np.int16)).astype(np.uint8) for p in preds]
    top = np.concatenate([truth] + preds, 2)
    bottom = np.concatenate([np.zeros_like(truth)] + errors, 2)
    return np.concatenate([top, bottom], 1)


def enlarge(frames: np.ndarray, frame_size: int, at_least: int = 64) -> np.ndarray:
    """frames (T, H, W, C) of a grid of frame_size-pixel frames, each pixel repeated so that a frame
    is at least `at_least` pixels wide (16x16 grid frames become 64x64; colours stay exact)."""
    k = max(1, -(-at_least // frame_size))
    return frames.repeat(k, 1).repeat(k, 2)


def still(frames: np.ndarray, count: int = 8) -> np.ndarray:
    """A few frames of a video, evenly spaced, stacked vertically (for a PNG)."""
    idx = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return np.concatenate([frames[i] for i in idx], 0)


def video_lines(out: pathlib.Path, truth, predictions: dict[str, dict], fps: int) -> list[str]:
    """imagination.mp4 + imagination.png of test episode 0 from each backbone's first seed (its
    last evaluation's prediction.npz) and the report lines about them."""
    if truth is None:
        return ["No imagination video: no cell here keeps eval/prediction.npz (it is not committed; "
                "rerun the cells to draw it)."]
    from common.logger import write_mp4
    from PIL import Image
    frames = enlarge(side_by_side(truth, {n: p["prediction"] for n, p in predictions.items()}),
                     truth.shape[1])
    write_mp4(out / "imagination.mp4", frames, fps)
    Image.fromarray(still(frames)).save(out / "imagination.png")
    at = ", ".join(f"{n} {p['updates']}" for n, p in predictions.items())
    return [f"Imagination of test episode 0 (columns: truth, then {', '.join(predictions)}; bottom "
            f"row |error|; each backbone's first seed at its last evaluation, updates: {at}): "
            "imagination.mp4", "", "![imagination](imagination.png)"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", required=True, help="configs.yaml blocks (a memory block first)")
    p.add_argument("--backbones", default="s4wm,rssm,tssm")
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", required=True)
    p.add_argument("--fps", type=int, default=16)
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the cells' saved evaluations (e.g. the "
                        "committed result files of a finished comparison)")
    p.add_argument("--at", type=int, default=None,
                   help="the table from every cell's evaluation at this many updates "
                        "(eval/metrics_<at>.json), e.g. a budget all cells reached")
    args, extra = p.parse_known_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, predictions, walls, truth, logdirs, by_backbone = {}, {}, {}, None, {}, {}
    for backbone in args.backbones.split(","):
        results[backbone] = []
        for i, seed in enumerate(args.seeds.split(",")):
            logdir = out / f"{backbone}_seed{seed}"
            logdirs[f"{backbone}_seed{seed}"] = logdir
            by_backbone.setdefault(backbone, []).append(logdir)
            if not args.report_only:
                walls[f"{backbone}_seed{seed}"] = run_cell(args.configs, backbone, seed, logdir, extra)
            result, pred = cell_results(logdir, args.at)
            results[backbone].append({**result, "seed": seed})
            if i == 0 and pred is not None:
                predictions[backbone], truth = pred, pred["truth"]
    name = results[next(iter(results))][0]["dataset"]
    plots = plot_curves(results, name, out)
    loss_plot = plot_loss(logdirs, name, out)
    history = progress(by_backbone)
    progress_plot = plot_progress(history, name, out)
    plots = [p for p in (progress_plot, loss_plot) if p] + plots
    video = video_lines(out, truth, predictions, args.fps)
    progress_lines = []
    for metric in PROGRESS:
        rows = progress_table(history, metric)
        progress_lines += rows + [""] if rows else []
    import torch
    from common.machine import machine
    info = machine(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    where = info.get("gpu") or f"{info['cpu']}, {info['cores']} cores"
    when = "the last evaluation of each cell" if args.at is None else f"{args.at} updates"
    lines = [f"# Memory benchmark: {name}", "",
             f"configs: `{' '.join(args.configs)}` {' '.join(extra)}; seeds {args.seeds}; "
             f"machine: {where}; commit {info['commit']}; date {time.strftime('%Y-%m-%d')}", "",
             f"Scores at {when}:", "", *table(results), "",
             "MSE per pixel on [0, 1]; mse_sum per 64x64x3 frame; PSNR in dB; reward accuracies at "
             "the recorded decision step (memory/metrics.py); cue_acc_* and probe_* are probes on "
             "the frozen model's features (memory/probe.py).", "",
             *perception_gate(results), "", *progress_lines, *cost(results), ""]
    if walls:
        lines += ["| cell | wall time (this call) |", "|---|---|"]
        lines += [f"| {k} | {v / 60:.1f} min |" for k, v in walls.items()] + [""]
    lines += [*[f"![{p}]({p})" for p in plots], "", *video]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(
        {"dataset": name, "configs": args.configs, "extra": extra, "walls": walls,
         "results": results, "progress": {n: {str(u): s for u, s in h.items()} for n, h in history.items()}},
        indent=1))
    print("\n".join(lines[:len(results) + 8]))


if __name__ == "__main__":
    main()
