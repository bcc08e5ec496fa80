"""How much of a frame benchmark's imagination comes from the far context? A memory test for any
backbone on the rooms benchmarks and Multi Doors Keys [ours].

    python -m memory.shortcontext --logdir docs/results/memory/mdk3/s4wm_seed0 [--keep 1,16,64 --draws 5]

A score of imagined frames mixes what the model remembers with what it can tell from the last few
frames and from the layout statistics it learned. The test separates them. The cell's evaluation
(memory/evaluate.py evaluate_frames) is run again on its held-out test episodes with the context
cut to its last `keep` frames: the model starts afresh (its initial state, `is_first`) `keep`
frames before the query and imagines the same query frames from the same actions. The frames
scored are the same in every condition; only how far back the model has seen differs. For every
cut and score,

    gap = score(cut) - score(full context)     (for an error; accuracy: full - cut)

is positive where the frames before the cut helped: what the model's memory of the far context is
worth on that score. A model that keeps nothing older than `keep` frames has gap ~0 there (up to
the sampling noise of the latents: --draws). A start in the middle of an episode is also one the
model never trained on (rows start at an episode's first frame), so a small cut costs a little on
its own: compare backbones at the same cut, and read the gap together with the scores.

Scores: gen_mse, gen_psnr, gen_ssim; Multi Doors Keys adds held_acc_imagination,
door_acc_imagination, gen_mse_strip and gen_mse_window (what the frames show of the held keys and
the doors). Teleport variants are refused (their revisit score is defined against the whole
context). Draw d seeds torch with seed + d before every condition. Prints a table and writes
<logdir>/eval/shortcontext.json: {"updates", "draws", "keep", "context", "full": {score: mean},
"cut": {keep: {score: mean}}, "gap": {keep: {score: mean}}, "per_draw": ...}.
"""
from __future__ import annotations

import numpy as np
import torch

from common.cli import fail
from memory.cell import cell_arguments, command, load_cell, write_result
from memory.evaluate import _context_length, evaluate_frames

ENVS = ("rooms", "multi_doors_keys")
SCORES = {"rooms": ("gen_mse", "gen_psnr", "gen_ssim"),
          "multi_doors_keys": ("gen_mse", "gen_psnr", "gen_ssim", "held_acc_imagination",
                               "door_acc_imagination", "gen_mse_strip", "gen_mse_window")}
HIGHER_IS_BETTER = ("gen_psnr", "gen_ssim", "held_acc_imagination", "door_acc_imagination")


def cut_context(episode: dict, keep: int) -> dict:
    """The episode from `keep` frames before its query on: every per-step array sliced, the first
    frame marked as an episode start (is_first) with no action leading to it (the dataset's
    convention for frame 0). Raises ValueError unless 1 <= keep <= the context length."""
    context = _context_length(episode)
    if not 1 <= keep <= context:
        raise ValueError(f"keep must be in [1, {context}] (the context length), got {keep}")
    start = context - keep
    out = {k: v[start:].copy() for k, v in episode.items()}
    out["is_first"][0] = True
    out["action"][0] = 0
    return out


def scores(wm, episodes: list[dict], env: str, *, query_observe: int, batch: int, chunk: int) -> dict:
    """The SCORES of evaluate_frames on `episodes` (one draw, the global torch generator)."""
    summary, _, _ = evaluate_frames(wm, episodes, query_observe=query_observe, batch=batch, chunk=chunk,
                                    device=wm.device, revisit=False, doors_keys=env == "multi_doors_keys")
    return {k: summary[k] for k in SCORES[env]}


def gap(full: dict, cut: dict) -> dict:
    """score(cut) - score(full) for errors, full - cut for PSNR, SSIM and accuracies: positive
    where the far context helped."""
    return {k: (full[k] - cut[k]) if k in HIGHER_IS_BETTER else (cut[k] - full[k]) for k in full}


@torch.no_grad()
def shortcontext(wm, episodes: list[dict], env: str, keep: list[int], *, draws: int, seed: int = 0,
                 query_observe: int = 0, batch: int = 8, chunk: int = 512) -> dict:
    """The scores of the module docstring, means over `draws` draws, with 'per_draw'."""
    if env not in ENVS:
        raise ValueError(f"the test is for {' and '.join(ENVS)} episodes, got {env}")
    cuts = {k: [cut_context(e, k) for e in episodes] for k in keep}
    per_draw = {"full": [], **{str(k): [] for k in keep}}
    for d in range(draws):
        torch.manual_seed(seed + d)
        per_draw["full"].append(scores(wm, episodes, env, query_observe=query_observe, batch=batch, chunk=chunk))
        for k in keep:
            torch.manual_seed(seed + d)
            per_draw[str(k)].append(scores(wm, cuts[k], env, query_observe=query_observe, batch=batch,
                                           chunk=chunk))

    def mean(rows):
        return {s: float(np.mean([r[s] for r in rows])) for s in rows[0]}
    full = mean(per_draw["full"])
    cut = {str(k): mean(per_draw[str(k)]) for k in keep}
    return {"draws": draws, "keep": list(keep), "context": _context_length(episodes[0]), "full": full,
            "cut": cut, "gap": {k: gap(full, v) for k, v in cut.items()}, "per_draw": per_draw}


DEFAULT_KEEP = (1, 16, 64)  # 64: the reach of RSSM-TBTT's gradient and TSSM-XL's window in the CPU blocks


def parse_keep(text: str | None, context: int) -> list[int]:
    """'1,16,64' -> [1, 16, 64]; one line and exit 2 unless each is in [1, context). None: those of
    DEFAULT_KEEP below the context."""
    if text is None:
        return [k for k in DEFAULT_KEEP if k < context] or [1]
    try:
        keep = sorted({int(k) for k in text.split(",")})
    except ValueError:
        fail(f"--keep must be comma-separated integers, e.g. 1,16,64, got {text!r}")
    bad = [k for k in keep if not 1 <= k < context]
    if bad:
        fail(f"--keep values must be in [1, {context - 1}] (fewer frames than the context, {context}), got {bad}")
    return keep


def main(argv=None) -> None:
    args = cell_arguments("memory.shortcontext", __doc__, "a trained rooms or Multi Doors Keys cell", argv,
                          more=lambda p: p.add_argument("--keep", default=None,
                                                        help="context frames kept, comma-separated "
                                                             "(default: those of 1,16,64 below the context)"))
    config, wm, test, updates = load_cell(args.logdir, envs=ENVS)
    m = config.memory
    if m.env == "rooms" and m.teleport:
        fail(f"{args.logdir}: teleport variants are not supported (their revisit score is defined "
             "against the whole context)")
    keep = parse_keep(args.keep, m.context)
    out = args.logdir / "eval" / "shortcontext.json"
    result = {"updates": updates, **shortcontext(
        wm, test, m.env, keep, draws=args.draws, seed=args.seed, query_observe=config.offline.query_observe,
        batch=config.offline.eval_batch, chunk=config.train.seq_len)}
    write_result(out, result)
    print(f"{args.logdir} ({config.backbone}) at {updates} updates, {len(test)} test episodes, "
          f"{args.draws} draws, context {result['context']} frames")
    names = SCORES[m.env]
    print("| context kept | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    print(f"| all {result['context']} | " + " | ".join(f"{result['full'][s]:.4g}" for s in names) + " |")
    for k in keep:
        cut, g = result["cut"][str(k)], result["gap"][str(k)]
        print(f"| last {k} | " + " | ".join(f"{cut[s]:.4g} ({g[s]:+.3g})" for s in names) + " |")
    print("(in brackets: the gap, positive where the frames before the cut helped)")
    print(f"wrote {out}")


if __name__ == "__main__":
    command(main)
