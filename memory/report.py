"""The memory-benchmark comparison: train several backbones (and seeds) offline on one dataset and
write one report folder with a markdown table, plots and side-by-side imagination videos.

    python -m memory.report --configs distracting_memory memory_cpu --backbones s4wm,rssm,tssm \\
        --seeds 0 --out reports/memory/distracting_memory [--key value ...]

Each cell is an ordinary `main.py` offline run in <out>/<backbone>_seed<seed> (extra --key value
arguments go to every run; rerunning resumes unfinished cells and only re-reads finished ones,
also those whose checkpoint is gone, e.g. committed results on a fresh clone; a cell with results
but neither its budget reached nor its checkpoint fails alone, with one line);
--jobs N trains N cells at once (two one-thread runs use a 2-core machine). A Distracting Memory
cell then gets its causal tests, memory.cueswap (and memory.readback on tssm), a Multi Doors Keys or
rooms cell memory.shortcontext, while its checkpoint is there (--no-causal: not). The training is
memory/runner.py's; this module writes the report.
--report-only trains nothing and writes the report from the cells' saved evaluations (the committed
result files are enough: without eval/prediction.npz there is no video); --at N takes the table from
every cell's evaluation at N updates (eval/metrics_<N>.json), e.g. while cells have unequal budgets.
The dataset is made once (memory.out, default datasets/<name>; episodes drawn from memory.seed, not from
the run seeds) and shared by every cell.
Writes <out>/report.md (table: mean +- standard error over seeds of every eval/metrics.json summary
value; Distracting Memory: the perception gate, a memory score counts only where the model reads the
cue colour from the first frame at least PERCEPTION_GATE of the time, Multi Doors Keys: only where
its reconstructions show the held keys and doors right that often; the cost of every cell),
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

from common.cli import fail
from memory import shortcontext
from memory.runner import train_cells
from memory.train import evaluated_at, evaluation_file

PERCEPTION_GATE = 0.95  # cue_acc_start needed before a Distracting Memory memory score counts
CURVES = {  # metric -> (y label, x label, index of the first value: imagination steps count from 1)
    "mse": ("MSE per pixel (lower is better)", "imagination step", 1),
    "psnr": ("PSNR, dB (higher is better)", "imagination step", 1),
    "ssim": ("SSIM (higher is better)", "imagination step", 1),
    "wall_acc": ("probe: wall accuracy (higher is better)", "episode step (observed)", 0),
    "object_mse": ("probe: object position error, cells² (lower is better)", "episode step (observed)", 0),
    "behind_acc": ("probe: walls behind the agent, accuracy", "episode step (observed)", 0),
    "held_acc": ("frames showing exactly the held keys", "imagination step", 1),
    "door_acc": ("doors in view shown in their state", "imagination step", 1),
}
# The headline scores, followed over training (eval/metrics_<updates>.json): metric -> (chance
# level, its name), "colours" (one of the cue colours) or None. A reward accuracy's coin flip is not
# the constant predictor's score, which is the test set's share of one outcome (docs/memory.md). Whether a memory score is still rising is what says if a budget was enough.
PROGRESS = {"reward_acc_inference": (0.5, "coin flip"), "reward_acc_imagination": (0.5, "coin flip"),
            "cue_acc_hallway_end": "colours", "held_acc_imagination": None,
            "door_acc_imagination": None, "gen_mse": None, "recon_mse": None}


def _read_json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"cannot read {path}: {e}")


def missing_evaluations(logdirs: dict[str, pathlib.Path], at: int | None) -> list[str]:
    """Per cell without the evaluation the report reads (eval/metrics.json, or at `at` updates):
    why, e.g. 's4wm_seed1 (evaluated at: 1000, 2000)'."""
    missing = []
    for cell, logdir in logdirs.items():
        if not logdir.is_dir():
            missing.append(f"{cell} (no folder {logdir})")
        elif not evaluation_file(logdir, at).exists():
            have = evaluated_at(logdir)
            missing.append(f"{cell} (evaluated at: {', '.join(map(str, have)) or 'never'})")
    return missing


def cell_results(logdir: pathlib.Path, at: int | None = None) -> tuple[dict, dict | None]:
    """(the cell's evaluation: the last one, eval/metrics.json, or the one at `at` updates,
    eval/metrics_<at>.json; the last evaluation's prediction.npz {truth, prediction, updates},
    None where it is not kept: it is not committed)."""
    result = _read_json(evaluation_file(logdir, at))
    if "budget" not in result:  # evaluated before results recorded it: the run's saved config
        from common.config import ConfigError, read_saved
        try:
            result["budget"] = read_saved(logdir / "config.yaml").get("offline.updates")
        except ConfigError as e:
            fail(str(e))
    npz = logdir / "eval" / "prediction.npz"
    if not npz.exists():
        return result, None
    prediction = dict(np.load(npz))
    prediction["updates"] = int(prediction.get("updates", -1))  # -1: saved before it was recorded
    return result, prediction


def table(results: dict[str, list[dict]]) -> list[str]:
    """Rows backbone, columns the summary keys: mean (+- standard error over seeds)."""
    keys = sorted({k for rs in results.values() for r in rs for k in r["summary"]})
    lines = ["| backbone | seeds | updates | " + " | ".join(keys) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for name, rs in results.items():
        cells = []
        for k in keys:
            cells.append(_over_seeds([r["summary"].get(k, np.nan) for r in rs], k, len(rs)))
        updates = sorted({r["updates"] for r in rs})
        shown = str(updates[0]) if len(updates) == 1 else f"{updates[0]}-{updates[-1]}"
        lines.append(f"| {name} | {len(rs)} | {shown} | " + " | ".join(cells) + " |")
    budgets = {r["updates"] for rs in results.values() for r in rs}
    if len(budgets) > 1:
        lines += ["", f"The cells were evaluated at different budgets ({min(budgets)}-{max(budgets)} "
                      "updates), so these means mix them: `--at N` gives the table at one budget "
                      "every cell reached (see the tables by updates below)."]
    return lines


def perception_gate(results: dict[str, list[dict]]) -> list[str]:
    """Distracting Memory: per backbone and seed, is the cue colour read from the first frame (cue in
    view) at least PERCEPTION_GATE of the time? Multi Doors Keys: do the reconstructed context frames
    show the held keys and the doors in view right at least that often? A memory score of a cell
    that fails this measures perception, not memory, and does not count. [] when neither applies."""
    if any("held_acc_recon" in r["summary"] for rs in results.values() for r in rs):
        return doors_keys_gate(results)
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


def doors_keys_gate(results: dict[str, list[dict]]) -> list[str]:
    """Multi Doors Keys' perception gate (perception_gate): the reconstructions of observed frames."""
    lines = [f"Perception gate: the held-key and door scores of imagination count only where the "
             f"reconstructed context frames show the held keys and the doors in view right at least "
             f"{100 * PERCEPTION_GATE:.0f}% of the time (held_acc_recon, door_acc_recon).", "",
             "| backbone | seed | held keys, context | doors, context | memory scores count |",
             "|---|---|---|---|---|"]
    for name, rs in results.items():
        for r in rs:
            scores = [r["summary"].get(k, float("nan")) for k in ("held_acc_recon", "door_acc_recon")]
            measured = [v for v in scores if np.isfinite(v)]  # no door in view in the context: nan
            ok = ("not measured" if not measured else "yes" if min(measured) >= PERCEPTION_GATE
                  else "**no**: perception fails first")
            shown = [f"{100 * v:.1f}%" if np.isfinite(v) else "not measured" for v in scores]
            lines.append(f"| {name} | {r.get('seed', '?')} | {shown[0]} | {shown[1]} | {ok} |")
    return lines


def _causal_rows(logdirs: dict[str, pathlib.Path], name: str, rows) -> list[str]:
    """Table rows of the cells that have eval/<name>: rows(result dict) -> the cell's rows, each a
    list of the entries after the cell's name, updates and draws; a file without the keys a row
    needs stops with one line."""
    lines = []
    for cell, logdir in logdirs.items():
        path = logdir / "eval" / name
        if path.exists():
            result = _read_json(path)
            try:
                lines += [f"| {cell} | {result['updates']} | {result['draws']} | " + " | ".join(row) + " |"
                          for row in rows(result)]
            except (KeyError, TypeError) as e:
                fail(f"{path} lacks {e} (written by an older version? rerun the test on the cell)")
    return lines


def causal_tests(logdirs: dict[str, pathlib.Path]) -> list[str]:
    """The causal tests run on the cells, where their files exist: memory.cueswap
    (eval/cueswap.json, any backbone) and memory.readback (eval/readback.json, TSSM-XL) on
    Distracting Memory, memory.shortcontext (eval/shortcontext.json) on the frame benchmarks. []
    when no cell has any."""
    def swap(r):
        return [[" / ".join(f"{100 * r[m][key]:.1f}%" for m in ("inference", "imagination"))
                 for key in ("flipped", "right_on_both", "resampled_flipped", "accuracy_swapped")]]

    def read(r):
        return [[f"{100 * r['reward_acc_inference'][c]:.1f}%" for c in ("open", "end", "end_placebo", "all")]]

    names = []

    def cut(r):  # the whole context's scores, then each cut's gap +- its standard error
        names[:] = names or list(r["full"])
        return shortcontext.rows(r, recon=False)

    lines = []
    swaps = _causal_rows(logdirs, "cueswap.json", swap)
    if swaps:
        lines += ["Does the prediction follow the cue? `memory.cueswap`: the test episodes replayed with the cue "
                  "painted in the other end square's colour; flipped = the thresholded prediction changes, "
                  "right on both = right on the episode and on its swapped copy (impossible without "
                  "using the cue), resampled = flips between two independent draws of the latents (the "
                  "noise floor); inference / imagination, mean over draws.", "",
                  "| cell | updates | draws | flipped | right on both | resampled | accuracy (swapped) |",
                  "|---|---|---|---|---|---|---|", *swaps, ""]
    reads = _causal_rows(logdirs, "readback.json", read)
    if reads:
        lines += ["Where TSSM-XL keeps the cue, `memory.readback`: reward accuracy in inference with the cue "
                  "frames blocked from the hallway end's queries, with as many other keys blocked "
                  "(placebo), and from every later query (the no-cue control).", "",
                  "| cell | updates | draws | open | end | placebo | control |", "|---|---|---|---|---|---|---|",
                  *reads, ""]
    cuts = _causal_rows(logdirs, "shortcontext.json", cut)
    if cuts:
        lines += ["What the far context is worth, `memory.shortcontext`: the test episodes imagined again "
                  "with the context cut to its last frames (the model starts afresh there, the imagined "
                  "latents draw the same numbers); gap = the score with the cut minus the score with the "
                  "whole context (for PSNR, SSIM and accuracies the other way round): positive where the "
                  "frames before the cut helped; mean ± standard error over draws.", "",
                  "| cell | updates | draws | context kept | " + " | ".join(names) + " |",
                  "|---|---|---|---|" + "---|" * len(names), *cuts, ""]
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


def progress(logdirs: dict[str, dict[str, pathlib.Path]]) -> dict[str, dict[str, dict[int, dict]]]:
    """backbone -> seed -> {updates: summary} of every periodic evaluation of the cell
    (eval/metrics_<updates>.json)."""
    return {name: {seed: {u: _read_json(evaluation_file(logdir, u))["summary"]
                          for u in evaluated_at(logdir)}
                   for seed, logdir in seeds.items()}
            for name, seeds in logdirs.items()}


def common_budgets(seeds: dict[str, dict[int, dict]]) -> list[int]:
    """The budgets at which every seed was evaluated."""
    return sorted(set.intersection(*(set(h) for h in seeds.values()))) if seeds else []


def _chance(metric: str) -> tuple[float, str] | None:
    level = PROGRESS.get(metric)
    if level == "colours":
        from envs.gridmemory import COLOURS
        return 1 / len(COLOURS), "chance"
    return level


def _mean_se(values) -> tuple[float, float, int]:
    """(mean, standard error over seeds, count) of the finite values; nan where they do not allow it."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    mean = float(v.mean()) if len(v) else float("nan")
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return mean, se, len(v)


def _over_seeds(values, key: str, seeds: int) -> str:
    """A table cell: mean +- standard error over the finite values of `seeds` seeds (no +- for one),
    how many when some are missing, '-' for none; e.g. '80.0% ± 10.0%', '50.0% (1 of 2 seeds)'."""
    mean, se, k = _mean_se(values)
    if k == 0:
        return "-"
    text = _fmt(mean, key) + ("" if k < 2 else " ± " + _fmt(se, key))
    return text + (f" ({k} of {seeds} seeds)" if k < seeds else "")


def _columns(budgets: list[int], keep: set[int], count: int) -> list[int]:
    """About `count` evenly spaced of the sorted `budgets`, and every budget in `keep`."""
    picked = np.linspace(0, len(budgets) - 1, min(count, len(budgets))).round().astype(int)
    return sorted({budgets[i] for i in picked} | keep)


def progress_table(history: dict[str, dict[str, dict[int, dict]]], metric: str,
                   count: int = 8) -> list[str]:
    """Rows backbone, columns up to about `count` budgets every seed of a backbone reached (each
    backbone's last one included): mean +- standard error over seeds of `metric`; then a line per
    seed that was evaluated beyond them, and per backbone whose seeds share no budget.
    [] when no cell has the metric."""
    common = {name: [u for u in common_budgets(seeds) if any(metric in h[u] for h in seeds.values())]
              for name, seeds in history.items()}
    budgets = sorted({u for us in common.values() for u in us})
    if not budgets:
        return []
    shown = _columns(budgets, {us[-1] for us in common.values() if us}, count)
    chance = _chance(metric)
    lines = [f"{metric} by updates (mean ± s.e. over seeds; at budgets every seed of a backbone "
             "reached" + (f"; {chance[1]} {_fmt(chance[0], metric)}" if chance else "") + "):", "",
             "| backbone | " + " | ".join(map(str, shown)) + " |", "|---|" + "---|" * len(shown)]
    notes = []
    for name, seeds in history.items():
        cells = []
        for u in shown:
            values = [h[u].get(metric, np.nan) for h in seeds.values()] if u in common[name] else []
            cells.append(_over_seeds(values, metric, len(seeds)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        last = common[name][-1] if common[name] else None
        if last is None:
            spans = [f"seed {seed}: " + ("none" if not h else str(min(h)) if len(h) == 1
                                         else f"{min(h)}-{max(h)}") for seed, h in seeds.items()]
            notes.append(f"{name}: its seeds share no evaluated budget ({'; '.join(spans)}).")
            continue
        for seed, h in seeds.items():
            later = [u for u in h if u > last and metric in h[u]]
            if later:
                notes.append(f"{name} seed {seed} goes on to {max(later)} updates: "
                             f"{_fmt(h[max(later)][metric], metric)}.")
    return lines + ([""] + notes if notes else [])


def plot_progress(history: dict[str, dict[str, dict[int, dict]]], title: str,
                  out: pathlib.Path) -> str | None:
    """The PROGRESS scores vs update -> progress.png: every seed's whole history as a thin line,
    per backbone the mean over seeds at the budgets all of them reached (band: +- one standard
    error), chance dashed. None when no cell was evaluated twice."""
    metrics = [m for m in PROGRESS
               if any(m in s for seeds in history.values() for h in seeds.values() for s in h.values())]
    if not metrics or max((len(h) for seeds in history.values() for h in seeds.values()), default=0) < 2:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.6), dpi=120, squeeze=False)
    handles = {}
    for ax, metric in zip(axes[0], metrics):
        for i, (name, seeds) in enumerate(history.items()):
            colour = f"C{i}"
            for h in seeds.values():
                steps = [u for u in sorted(h) if metric in h[u]]
                ax.plot(steps, [h[u][metric] for u in steps], color=colour, lw=0.7, alpha=0.4,
                        marker="o" if len(steps) == 1 else None, ms=2)
            steps = [u for u in common_budgets(seeds) if all(metric in h[u] for h in seeds.values())]
            if not steps:
                continue
            stats = np.array([_mean_se([h[u][metric] for h in seeds.values()])[:2] for u in steps])
            line, = ax.plot(steps, stats[:, 0], color=colour, lw=1.8, marker="o" if len(steps) == 1 else None)
            handles[f"{name} ({len(seeds)} seeds; thin: each seed)"] = line
            if len(seeds) > 1:
                ax.fill_between(steps, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1],
                                color=colour, alpha=0.15)
        chance = _chance(metric)
        if chance is not None:
            handles[chance[1]] = ax.axhline(chance[0], color="k", ls="--", lw=0.8)
        ax.set_xlabel("update"), ax.set_title(metric, fontsize=9), ax.grid(alpha=0.3)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=len(handles), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
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
    if key.startswith(("reward_acc", "cue_acc", "probe_wall_acc", "probe_local_acc", "probe_behind_acc",
                       "held_acc", "door_acc")):
        return f"{100 * value:.1f}%"
    if "mse_sum" in key or "psnr" in key or key.startswith("probe_object"):
        return f"{value:.2f}"
    return f"{value:.4f}"


# metric -> its guesses drawn beside the backbones: (curve, legend, line style); evaluate_frames
GUESSES = {"mse": (("mse_mean", "guess: mean frame", "--"), ("mse_episode", "guess: episode's mean frame", "-."),
                   ("mse_frozen", "guess: last frame kept", ":"))}


def curve_lines(results: dict[str, list[dict]], metric: str) -> list[tuple[str, list, str]]:
    """The lines of one metric's plot, (legend, values, style): each backbone's mean over its seeds
    ('-'), then the metric's guesses (GUESSES) from the first result that has them: they depend on
    the test episodes only, so any cell's copy will do."""
    lines = [(n, np.mean([r["curves"][metric] for r in rs], 0).tolist(), "-") for n, rs in results.items()
             if rs and metric in rs[0]["curves"]]
    for key, name, style in GUESSES.get(metric, ()) if lines else ():
        guess = next((r["curves"][key] for rs in results.values() for r in rs if key in r["curves"]), None)
        if guess is not None:
            lines.append((name, guess, style))
    return lines


def plot_curves(results: dict[str, list[dict]], title: str, out: pathlib.Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for metric, (label, xlabel, first) in CURVES.items():
        lines = curve_lines(results, metric)
        if not lines:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
        for name, values, style in lines:
            ax.plot(np.arange(first, len(values) + first), values, style, label=name, lw=1.2,
                    **({} if style == "-" else {"color": "grey"}))
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


def video_lines(out: pathlib.Path, truth, predictions: dict[str, dict | None], fps: int) -> list[str]:
    """imagination.mp4 + imagination.png of test episode 0 from each backbone's first seed (its
    last evaluation's prediction.npz; None: not kept) and the report lines about them."""
    kept = {n: p for n, p in predictions.items() if p is not None}
    lost = [n for n, p in predictions.items() if p is None]
    why = "(eval/prediction.npz is not committed; rerun the cells to draw it)"
    if not kept:
        if (out / "imagination.png").exists():  # drawn when the cells were trained: kept as it is
            video = " and imagination.mp4" if (out / "imagination.mp4").exists() else ""
            return ["Imagination of test episode 0 (columns: truth, then each backbone's first seed at its last "
                    f"evaluation when the cells were trained; bottom row |error|): imagination.png{video}, as "
                    "drawn then (not redrawn here: eval/prediction.npz is not committed)", "",
                    "![imagination](imagination.png)"]
        return [f"No imagination video: no backbone's first seed keeps its prediction {why}."]
    from common.logger import write_mp4
    from PIL import Image
    frames = enlarge(side_by_side(truth, {n: p["prediction"] for n, p in kept.items()}), truth.shape[1])
    write_mp4(out / "imagination.mp4", frames, fps)
    Image.fromarray(still(frames)).save(out / "imagination.png")
    at = ", ".join(f"{n} {p['updates']}" for n, p in kept.items())
    return [f"Imagination of test episode 0 (columns: truth, then {', '.join(kept)}; bottom "
            f"row |error|; each backbone's first seed at its last evaluation, updates: {at}): "
            "imagination.mp4" + (f"; not shown: {', '.join(lost)} {why}" if lost else ""), "",
            "![imagination](imagination.png)"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="+", default=[], help="configs.yaml blocks (a memory block first)")
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
    p.add_argument("--jobs", type=int, default=1,
                   help="cells trained at once, each its own process with its output in "
                        "<cell>/train.log (on a CPU give each run threads 1, as the CPU blocks do)")
    p.add_argument("--causal", action=argparse.BooleanOptionalAction, default=True,
                   help="after each cell's training run its causal tests (Distracting Memory: "
                        "memory.cueswap, and memory.readback on tssm; Multi Doors Keys and rooms: "
                        "memory.shortcontext) where the result is missing or older than the cell")
    args, extra = p.parse_known_args(argv)
    if args.jobs < 1:
        fail(f"--jobs must be >= 1, got {args.jobs}")
    out = pathlib.Path(args.out)
    training = [*extra, *(["--jobs"] if args.jobs != 1 else []), *([] if args.causal else ["--no-causal"])]
    if args.report_only and training:
        fail(f"--report-only trains nothing, so {' '.join(training)} would have no effect (its "
             "options: --backbones --seeds --out --at --fps)")
    if not args.report_only and not args.configs:
        fail("--configs is needed to train the cells (or --report-only to read finished ones)")
    cells = {b: {seed: out / f"{b}_seed{seed}" for seed in args.seeds.split(",")}
             for b in args.backbones.split(",")}
    logdirs = {f"{b}_seed{seed}": d for b, seeds in cells.items() for seed, d in seeds.items()}
    walls = {}
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
        walls = train_cells(args.configs, cells, extra, args.jobs, args.causal)
    missing = missing_evaluations(logdirs, args.at)
    if missing:
        fail(f"no evaluation {'at the end' if args.at is None else f'at {args.at} updates'} in "
             f"{'; '.join(missing)}: train the cells (without --report-only), or choose --at, "
             f"--backbones, --seeds or --out to match what is in {out}")
    results, predictions, truth = {}, {}, None
    for b, seeds in cells.items():
        results[b] = []
        for i, (seed, logdir) in enumerate(seeds.items()):
            result, pred = cell_results(logdir, args.at)
            results[b].append({**result, "seed": seed})
            if i == 0:
                predictions[b] = pred
                truth = pred["truth"] if pred is not None else truth
    name = results[next(iter(results))][0]["dataset"]
    plots = plot_curves(results, name, out)
    loss_plot = plot_loss(logdirs, name, out)
    history = progress(cells)
    progress_plot = plot_progress(history, name, out)
    plots = [p for p in (progress_plot, loss_plot) if p] + plots
    video = video_lines(out, truth, predictions, args.fps)
    progress_lines = []
    for metric in PROGRESS:
        rows = progress_table(history, metric)
        if rows:
            progress_lines += rows + [""]
    import torch
    from common.machine import machine
    info = machine(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    where = info.get("gpu") or f"{info['cpu']}, {info['cores']} cores"
    when = "the last evaluation of each cell" if args.at is None else f"{args.at} updates"
    written = f"machine: {where}; commit {info['commit']}; date {time.strftime('%Y-%m-%d')}"
    if args.report_only:
        header = (f"Written from the cells' saved evaluations (--report-only); seeds {args.seeds}; "
                  f"report {written}; each cell's settings: <cell>/config.yaml")
    else:
        header = f"configs: `{' '.join(args.configs)}` {' '.join(extra)}; seeds {args.seeds}; {written}"
    lines = [f"# Memory benchmark: {name}", "", header, "",
             f"Scores at {when}:", "", *table(results), "",
             "MSE per pixel on [0, 1]; mse_sum summed over a frame (H x W x 3 values: 12288 at "
             "64x64, 768 at 16x16); PSNR in dB; reward accuracies at the recorded decision step "
             "(memory/metrics.py); cue_acc_* and probe_* are probes on the frozen model's features "
             "(memory/probe.py); held_acc_* and door_acc_* are the held keys and the doors in view "
             "read back from the frames' pixels, in the reconstructed context, the imagined query and "
             "the 'frozen' guess (the last observed frame kept through the query) and the 'blank' one "
             "(no key drawn, every door drawn open; memory/evaluate.py); gen_mse_frozen, gen_mse_mean "
             "and gen_mse_episode are the gen_mse of three guesses made without a model (the last "
             "observed frame kept, the test set's mean context frame, the episode's own mean context "
             "frame; memory/evaluate.py).", "",
             *perception_gate(results), "", *causal_tests(logdirs), *progress_lines, *cost(results), ""]
    if walls:
        lines += ["| cell | wall time (this call) |", "|---|---|"]
        lines += [f"| {k} | {v / 60:.1f} min |" for k, v in walls.items()] + [""]
    lines += [*[f"![{p}]({p})" for p in plots], "", *video]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    trained_with = {"configs": args.configs, "extra": extra}
    if args.report_only and (out / "report.json").exists():  # how the same cells were trained, as recorded
        before = _read_json(out / "report.json")
        cells_before = {b: [str(r.get("seed")) for r in rs] for b, rs in before.get("results", {}).items()}
        if cells_before == {b: list(seeds) for b, seeds in cells.items()}:
            trained_with = {k: before.get(k, v) for k, v in trained_with.items()}
    (out / "report.json").write_text(json.dumps(
        {"dataset": name, **trained_with, "walls": walls,
         "results": results,
         "progress": {n: {seed: {str(u): v for u, v in h.items()} for seed, h in seeds.items()}
                      for n, seeds in history.items()}},
        indent=1))
    print("\n".join(lines[:len(results) + 8]))


if __name__ == "__main__":
    main()
