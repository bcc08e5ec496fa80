"""Memory capacity of each backbone: how long a gap can its world model carry one fact across?

    python -m bench.memory_capacity                                   # every backbone, the defaults
    python -m bench.memory_capacity --backbones s4wm,rssm --gaps 16,64 --seeds 0,1 --updates 400

A synthetic recall stream, one row of T = gap + 2 steps (8x8 RGB frames, K solid colours):

    t = 0          cue frame: the whole frame in one of K colours (is_first)       action: none
    t = 1 .. gap   gap frames, independent of the cue (nothing in them predicts   action: 'wait'
                   it): `--distractors blank` one grey frame throughout (pure
                   retention), `random` each frame one of the K colours drawn
                   anew (retention under interference, as in Distracting Memory)
    t = gap + 1    query frame: the cue's colour with a grey centre marker         action: 'query'

Each backbone's real world model (world_models/, the `capacity` block of configs.yaml: a tiny size)
is trained with its real loss on fresh rows, one parallel pass per row, exactly as offline memory
training does (memory/train.py): RSSM-TBTT detaches its state every `rssm.tbtt_length` steps,
TSSM-XL attends to `tssm.mem_len` steps per layer, S4WM and S5WM see the whole row. The only signal
that asks for memory is the query frame's reconstruction and KL terms, one step in T.

Scored on `--eval-rows` held-out rows (chance = 1/K), at the query step:
    inference      frames 0 .. gap observed, the query predicted by the prior
    imagination    the cue frame observed, the gap and the query imagined from the actions
The prediction is the decoder's image of [h, mode of the prior], assigned to the nearest of the K
possible query frames. Training stops at `--updates` or once both scores reach `--solved`.

Each cell (distractors, backbone, gap, seed) checkpoints into <scratch>/<cell>/ and writes
<out>/cells/<cell>.json when finished; rerunning resumes unfinished cells and re-reads finished ones.
Then <out>/capacity_<distractors>.md (mean +- standard error over seeds) and .png (accuracy vs gap,
one line per backbone, chance dashed) are written from every cell JSON of that kind found, so a
later run with more seeds or gaps aggregates.
Extra `--key value` arguments go to the config (e.g. --wm.lr 0.001, --rssm.tbtt_length 256).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch

from common import checkpoint
from common.cli import fail, parse
from common.health import adamw, load_optimizer
from world_models import BACKBONES, build_world_model

ROOT = pathlib.Path(__file__).resolve().parent.parent
GREY = np.array([128, 128, 128], np.uint8)  # blank gap frames
PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 240, 240]], np.uint8)
MARKER = 128  # grey centre square of the query frame
WAIT, QUERY = 0, 1  # action indices


def recall_rows(rng: np.random.Generator, rows: int, gap: int, colours: int, size: int,
                distractors: str = "blank") -> dict:
    """`rows` recall streams {key: (B, T, ...)} with T = gap + 2, plus 'cue' (B,) colour indices."""
    B, T = rows, gap + 2
    cue = rng.integers(colours, size=B)  # (B,)
    index = rng.integers(colours, size=(B, T))  # (B, T) distractor colours (drawn either way)
    index[:, 0] = index[:, -1] = cue
    rgb = PALETTE[index]  # (B, T, 3)
    if distractors == "blank":
        rgb[:, 1:-1] = GREY
    image = np.broadcast_to(rgb[:, :, None, None], (B, T, size, size, 3)).copy()
    image[:, -1] = query_frames(colours, size)[cue]
    action = np.zeros((B, T, 2), np.float32)
    action[:, 1:-1, WAIT] = 1.0
    action[:, -1, QUERY] = 1.0
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    false = np.zeros((B, T), bool)
    return {"image": image, "action": action, "reward": np.zeros((B, T), np.float32),
            "is_first": is_first, "is_last": false, "is_terminal": false, "cue": cue}


def query_frames(colours: int, size: int) -> np.ndarray:
    """The K possible query frames (K, size, size, 3) uint8: colour k with a grey centre square."""
    frames = np.broadcast_to(PALETTE[:colours, None, None], (colours, size, size, 3)).copy()
    lo, hi = size // 4, size - size // 4
    frames[:, lo:hi, lo:hi] = MARKER
    return frames


def to_torch(rows: dict, device) -> dict:
    return {k: torch.as_tensor(v, device=device) for k, v in rows.items() if k != "cue"}


@torch.no_grad()
def predict_query(wm, state: dict) -> torch.Tensor:
    """Decoder image (B, H, W, C) in [-0.5, 0.5] units of [h, mode of the prior] of `state`."""
    h = state["h"]
    z = wm.latent.mode(wm.prior_net(h))
    return wm.decoder(torch.cat([h, z], -1))


def nearest(pred: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """pred (B, H, W, C) and candidates (K, H, W, C), both in [-0.5, 0.5] -> index (B,) of the
    candidate with the least squared error."""
    err = (pred[:, None] - candidates[None]).pow(2).flatten(2).sum(-1)  # (B, K)
    return err.argmin(-1)


@torch.no_grad()
def score(wm, rows: dict, colours: int, batch: int, device) -> dict:
    """Query accuracy in inference and imagination over `rows` (module docstring)."""
    was_training = wm.training
    wm.eval()
    size = rows["image"].shape[2]
    candidates = torch.as_tensor(query_frames(colours, size), device=device).float() / 255 - 0.5
    hits = {"inference": [], "imagination": []}
    for s in range(0, len(rows["cue"]), batch):
        part = {k: v[s:s + batch] for k, v in rows.items()}
        cue = torch.as_tensor(part["cue"], device=device)
        data = to_torch(part, device)
        B, T = data["is_first"].shape
        query_action = data["action"][:, -1:]  # (B, 1, A)
        # inference: observe frames 0 .. T-2, then one prior step with the query action
        _, state, _ = wm.observe(wm.encoder(data["image"][:, :-1]), data["action"][:, :-1],
                                 data["is_first"][:, :-1], wm.initial_state(B))
        state = wm.imagine(state, query_action, 1)["state"]
        hits["inference"].append(nearest(predict_query(wm, state), candidates) == cue)
        # imagination: observe the cue frame, imagine the gap and the query
        _, state, _ = wm.observe(wm.encoder(data["image"][:, :1]), data["action"][:, :1],
                                 data["is_first"][:, :1], wm.initial_state(B))
        state = wm.imagine(state, data["action"][:, 1:], T - 1)["state"]
        hits["imagination"].append(nearest(predict_query(wm, state), candidates) == cue)
    wm.train(was_training)
    return {f"acc_{k}": torch.cat(v).float().mean().item() for k, v in hits.items()}


def train_cell(config, gap: int, args, scratch: pathlib.Path, device) -> dict:
    """Train one backbone on recall rows with this gap (resumable); returns the cell's result."""
    torch.manual_seed(config.seed)
    wm = build_world_model(config, act_dim=2).to(device)
    c = config.wm
    opt = adamw(wm.parameters(), lr=c.lr, eps=c.eps, weight_decay=c.weight_decay)
    size, B = config.env.image_size, config.train.batch_size
    test = recall_rows(np.random.default_rng([config.seed, 1 << 30]), args.eval_rows, gap,
                       args.colours, size, args.distractors)
    path = scratch / "checkpoint.pt"
    ckpt = checkpoint.load(path)
    updates, history, seconds = 0, [], 0.0
    if ckpt is not None:
        wm.load_state_dict(ckpt["model"])
        load_optimizer(opt, ckpt["opt"])
        checkpoint.set_rng_state(ckpt["rng"])
        updates, history, seconds = ckpt["updates"], json.loads(ckpt["history"]), ckpt["seconds"]
        print(f"  resuming at update {updates}", flush=True)
    losses, bad, start = [], 0, time.time() - seconds
    while updates < args.updates:
        rows = recall_rows(np.random.default_rng([config.seed, updates]), B, gap, args.colours, size,
                           args.distractors)
        loss, metrics, _, _, _ = wm.loss(to_torch(rows, device), wm.initial_state(B))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(wm.parameters(), c.grad_clip)
        updates += 1
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            bad += 1
            if bad >= config.run.nan_patience:
                fail(f"{bad} non-finite losses in a row at update {updates} (gap {gap})")
            continue
        bad = 0
        opt.step()
        losses.append({"loss": loss.item(), "image": float(metrics["loss/image"])})
        if updates % args.eval_every == 0 or updates == args.updates:
            accuracy = score(wm, test, args.colours, args.eval_batch, device)
            mean = {k: float(np.mean([m[k] for m in losses])) for k in losses[0]}
            history.append({"updates": updates, "seconds": time.time() - start, **mean, **accuracy})
            losses = []
            print(f"  update {updates}: loss {mean['loss']:.3f}, inference "
                  f"{accuracy['acc_inference']:.3f}, imagination {accuracy['acc_imagination']:.3f}"
                  f" ({history[-1]['seconds']:.0f} s)", flush=True)
            checkpoint.save(path, {"model": wm.state_dict(), "opt": opt.state_dict(),
                                   "updates": updates, "history": json.dumps(history),
                                   "seconds": history[-1]["seconds"],
                                   "rng": checkpoint.rng_state()})
            if min(accuracy.values()) >= args.solved:
                break
    final = history[-1]
    solved = min(final["acc_inference"], final["acc_imagination"]) >= args.solved
    return {"backbone": config.backbone, "gap": gap, "seed": config.seed, "colours": args.colours,
            "distractors": args.distractors, "budget": args.updates, "solved_threshold": args.solved,
            "solved": solved, "updates": final["updates"], "seconds": final["seconds"],
            "acc_inference": final["acc_inference"], "acc_imagination": final["acc_imagination"],
            "gradient_horizon": gradient_horizon(config), "history": history,
            "config": {k: v for k, v in config.flat().items()
                       if k.split(".")[0] in ("wm", *BACKBONES, "train", "env")}}


def gradient_horizon(config) -> str:
    """How far back the training loss at one step can send gradient (docs/memory.md, Protocol)."""
    if config.backbone == "rssm":
        return f"{config.rssm.tbtt_length} (TBTT chunk)"
    if config.backbone == "tssm":
        return f"{config.tssm.n_layers * config.tssm.mem_len + 1} (layers x mem_len + 1)"
    return "whole row"


def aggregate(cells: list[dict], colours: int) -> tuple[list[str], dict]:
    """Markdown table (mean +- standard error over seeds) and {backbone: {gap: (mean, se) x2}}."""
    groups: dict = {}
    for c in cells:
        groups.setdefault(c["backbone"], {}).setdefault(c["gap"], []).append(c)
    gaps = sorted({c["gap"] for c in cells})
    budgets = sorted({(c["budget"], c["solved_threshold"]) for c in cells})
    lines = [f"Query accuracy (chance {100 / colours:.1f}%), mean ± standard error over seeds "
             "(n = seeds): inference / imagination; then how many seeds solved the gap (both scores "
             "at least the threshold) and the updates they took; training time per cell (one "
             "thread). Budget, threshold: "
             + "; ".join(f"{b} updates, {100 * t:.0f}%" for b, t in budgets) + ".", "",
             "| backbone | gradient horizon | " + " | ".join(f"gap {g}" for g in gaps) + " |",
             "|---|---|" + "---|" * len(gaps)]
    summary = {}
    for name in sorted(groups):
        row = []
        for g in gaps:
            cs = groups[name].get(g, [])
            if not cs:
                row.append("-")
                continue
            stats = {k: _mean_se([c[k] for c in cs]) for k in ("acc_inference", "acc_imagination")}
            summary.setdefault(name, {})[g] = stats
            (mi, si), (mg, sg) = stats["acc_inference"], stats["acc_imagination"]
            solved = sorted(c["updates"] for c in cs if c["solved"])
            if len(cs) > 1:
                acc = f"{100 * mi:.0f} ± {100 * si:.0f} / {100 * mg:.0f} ± {100 * sg:.0f}"
            else:  # one seed has no standard error: show the value alone
                acc = f"{100 * mi:.0f} / {100 * mg:.0f} (n = 1)"
            row.append(f"{acc}; solved {len(solved)}/{len(cs)}{solved_when(solved)}; "
                       f"{np.mean([c['seconds'] for c in cs]) / 60:.1f} min")
        horizon = groups[name][gaps[0]][0]["gradient_horizon"] if gaps[0] in groups[name] else "-"
        lines.append(f"| {name} | {horizon} | " + " | ".join(row) + " |")
    return lines, summary


def solved_when(updates: list[int]) -> str:
    """' at 500-700 upd' (the range of the solved seeds' update counts), ' at 700 upd', or ''."""
    if not updates:
        return ""
    low, high = min(updates), max(updates)
    return f" at {low} upd" if low == high else f" at {low}-{high} upd"


def _mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def plot(summary: dict, colours: int, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120, sharey=True)
    for ax, key, title in zip(axes, ("acc_inference", "acc_imagination"),
                              ("inference (gap observed)", "imagination (gap imagined)")):
        for name, by_gap in sorted(summary.items()):
            gaps = sorted(by_gap)
            mean = np.array([by_gap[g][key][0] for g in gaps])
            se = np.array([by_gap[g][key][1] for g in gaps])
            ax.errorbar(gaps, mean, yerr=se, marker="o", capsize=3, lw=1.3, label=name)
        ax.axhline(1 / colours, color="k", ls="--", lw=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("gap W (steps between cue and query)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("query accuracy")
    axes[0].set_ylim(0, 1.05)
    axes[1].legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--gaps", default="16,64,256,1024")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--colours", type=int, default=8, help=f"cue colours K (2..{len(PALETTE)})")
    p.add_argument("--distractors", default="blank", help="gap frames: blank | random")
    p.add_argument("--updates", type=int, default=3000, help="most updates per cell")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-rows", type=int, default=256, help="held-out rows scored")
    p.add_argument("--eval-batch", type=int, default=64)
    p.add_argument("--solved", type=float, default=0.9, help="stop once both scores reach this")
    p.add_argument("--out", default="docs/results/memory_capacity")
    p.add_argument("--scratch", default="runs/memory_capacity", help="checkpoints (not committed)")
    args, extra = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    backbones = [b for b in args.backbones.split(",") if b]
    for b in backbones:
        if b not in BACKBONES:
            fail(f"unknown backbone '{b}' in --backbones (choices: {', '.join(BACKBONES)})")
    try:
        gaps = [int(g) for g in args.gaps.split(",") if g]
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        fail(f"--gaps and --seeds take comma-separated integers, got '{args.gaps}', '{args.seeds}'")
    if args.distractors not in ("blank", "random"):
        fail(f"--distractors must be blank or random, got '{args.distractors}'")
    if not 2 <= args.colours <= len(PALETTE):
        fail(f"--colours must be in [2, {len(PALETTE)}], got {args.colours}")
    if min(gaps, default=0) < 1 or args.updates < 1 or args.eval_every < 1:
        fail("--gaps, --updates and --eval-every must be >= 1")
    out, scratch = ROOT / args.out, ROOT / args.scratch
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for backbone in backbones:
        for gap in gaps:
            for seed in seeds:
                cell = f"{args.distractors}_{backbone}_gap{gap}_seed{seed}"
                path = out / "cells" / f"{cell}.json"
                if path.exists():
                    done = json.loads(path.read_text())
                    if done["solved"] or done["budget"] >= args.updates:
                        continue  # else a larger budget: on from its checkpoint, if still there
                config = parse(["--configs", "capacity", backbone, "--seed", str(seed), *extra],
                               prog="bench.memory_capacity")
                if config.threads:
                    torch.set_num_threads(config.threads)
                print(f"{cell}: training", flush=True)
                result = train_cell(config, gap, args, scratch / cell, torch.device("cpu"))
                tmp = path.with_suffix(".json.tmp")
                tmp.write_text(json.dumps(result, indent=1))
                tmp.replace(path)
    cells = [json.loads(f.read_text()) for f in sorted((out / "cells").glob("*.json"))]
    cells = [c for c in cells if c["colours"] == args.colours
             and c.get("distractors", "random") == args.distractors]
    lines, summary = aggregate(cells, args.colours)
    name = f"capacity_{args.distractors}"
    (out / f"{name}.md").write_text(f"Gap frames: {args.distractors}. " + "\n".join(lines) + "\n")
    plot(summary, args.colours, out / f"{name}.png")
    print("\n".join(lines))
    print(f"wrote {out / name}.md and {out / name}.png")


if __name__ == "__main__":
    main()
