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

    gap = score(cut) - score(full context)     (for an error; PSNR, SSIM, accuracy: full - cut)

is positive where the frames before the cut helped: what the model's memory of the far context is
worth on that score. A model that keeps nothing older than `keep` frames has gap ~0 there.

Pairing: draw d observes with torch seed seed + d and imagines with imagine seed
PAIR * (seed + d) (+ the batch's first episode index), in every condition, so the imagined latents
draw the same numbers with and without the cut (the observed part draws as many numbers as it
observes frames, which would otherwise shift them); the standard error of the gap over draws is
reported with it.

Reading it: a start in the middle of an episode is one the model never trained on (rows start at
an episode's first frame), so a small cut also costs the restart itself (at 1 frame, more than the
frozen guess of memory/evaluate.py needs); `recon` holds the perception scores over the frames each
condition observed, and Multi Doors Keys' guesses are copied beside them. Compare backbones at the
same cut; the 64-frame cut is RSSM-TBTT's gradient reach and TSSM-XL's window per layer in the CPU
blocks (with 2 layers TSSM-XL attends 128 frames back, more than a 100-frame context).

Scores: gen_mse, gen_psnr, gen_ssim; Multi Doors Keys adds held_acc_imagination,
door_acc_imagination, gen_mse_strip and gen_mse_window (what the frames show of the held keys and
the doors). Teleport variants observe their landing frame as usual (`offline.query_observe`).
Prints a table and writes <logdir>/eval/shortcontext.json: {"updates", "draws", "keep", "context",
"full": {score: mean}, "cut", "gap", "gap_se": {keep: {score: ...}}, "recon": {"full" or keep:
{score: mean}}, "guesses" (Multi Doors Keys), "per_draw"}.
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
RECON = {"rooms": ("recon_mse",), "multi_doors_keys": ("recon_mse", "held_acc_recon", "door_acc_recon")}
GUESSES = {"rooms": (), "multi_doors_keys": ("held_acc_frozen", "door_acc_frozen", "held_acc_blank",
                                             "door_acc_blank")}
HIGHER_IS_BETTER = ("gen_psnr", "gen_ssim", "held_acc_imagination", "door_acc_imagination")
PAIR = 1_000_003  # imagine seeds of successive draws lie this far apart (more than any test set)
DEFAULT_KEEP = (1, 16, 64)  # 64: RSSM-TBTT's gradient reach and TSSM-XL's window per layer (CPU blocks)


def applies(env: str) -> bool:
    """Whether the test is defined for cells of this benchmark (memory.env)."""
    return env in ENVS


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


def scores(wm, episodes: list[dict], env: str, *, seed: int, query_observe: int, batch: int,
           chunk: int) -> dict:
    """evaluate_frames' summary on `episodes` (one draw: observing with torch seed `seed`,
    imagining with imagine seed PAIR * seed), restricted to SCORES, RECON and GUESSES."""
    torch.manual_seed(seed)
    summary, _, _ = evaluate_frames(wm, episodes, query_observe=query_observe, batch=batch, chunk=chunk,
                                    device=wm.device, revisit=False, doors_keys=env == "multi_doors_keys",
                                    imagine_seed=PAIR * seed)
    return {k: summary[k] for k in (*SCORES[env], *RECON[env], *GUESSES[env])}


def gap(full: dict, cut: dict) -> dict:
    """score(cut) - score(full) for errors, full - cut for PSNR, SSIM and accuracies: positive
    where the far context helped."""
    return {k: (full[k] - cut[k]) if k in HIGHER_IS_BETTER else (cut[k] - full[k]) for k in full}


def _mean(rows: list[dict]) -> dict:
    return {s: float(np.mean([r[s] for r in rows])) for s in rows[0]}


def _se(rows: list[dict]) -> dict:
    """Standard error of the mean over rows (0 for a single row)."""
    return {s: float(np.std([r[s] for r in rows], ddof=1) / np.sqrt(len(rows))) if len(rows) > 1 else 0.0
            for s in rows[0]}


@torch.no_grad()
def shortcontext(wm, episodes: list[dict], env: str, keep: list[int], *, draws: int, seed: int = 0,
                 query_observe: int = 0, batch: int = 8, chunk: int = 512) -> dict:
    """The result of the module docstring (means over `draws` draws, with 'per_draw')."""
    if not applies(env):
        raise ValueError(f"the test is for {' and '.join(ENVS)} episodes, got {env}")
    names = SCORES[env]
    cuts = {str(k): [cut_context(e, k) for e in episodes] for k in keep}
    per_draw = {"full": [], **{k: [] for k in cuts}}
    for d in range(draws):
        per_draw["full"].append(scores(wm, episodes, env, seed=seed + d, query_observe=query_observe,
                                       batch=batch, chunk=chunk))
        for k, eps in cuts.items():
            per_draw[k].append(scores(wm, eps, env, seed=seed + d, query_observe=query_observe, batch=batch,
                                      chunk=chunk))

    def only(rows, keys):
        return [{s: r[s] for s in keys} for r in rows]
    full = _mean(only(per_draw["full"], names))
    gaps = {k: [gap(f, c) for f, c in zip(only(per_draw["full"], names), only(per_draw[k], names))]
            for k in cuts}
    return {"draws": draws, "keep": list(keep), "context": _context_length(episodes[0]), "full": full,
            "cut": {k: _mean(only(per_draw[k], names)) for k in cuts},
            "gap": {k: _mean(v) for k, v in gaps.items()}, "gap_se": {k: _se(v) for k, v in gaps.items()},
            "recon": {k: _mean(only(v, RECON[env])) for k, v in per_draw.items()},
            "guesses": _mean(only(per_draw["full"], GUESSES[env])) if GUESSES[env] else {},
            "per_draw": per_draw}


def parse_keep(text: str | None, context: int) -> list[int]:
    """'1,16,64' -> [1, 16, 64]; one line and exit 2 unless each is in [1, context). None: those of
    DEFAULT_KEEP below the context (the context is 1 frame: nothing to cut, one line and exit 2)."""
    if text is None:
        keep = [k for k in DEFAULT_KEEP if k < context]
    else:
        try:
            keep = sorted({int(k) for k in text.split(",")})
        except ValueError:
            fail(f"--keep must be comma-separated integers, e.g. 1,16,64, got {text!r}")
    bad = [k for k in keep if not 1 <= k < context]
    if bad or not keep:
        fail(f"--keep values must be in [1, {context - 1}] (fewer frames than the context, {context}), "
             f"got {bad or keep}")
    return keep


def main(argv=None) -> None:
    args = cell_arguments("memory.shortcontext", __doc__, "a trained rooms or Multi Doors Keys cell", argv,
                          more=lambda p: p.add_argument("--keep", default=None,
                                                        help="context frames kept, comma-separated "
                                                             "(default: those of 1,16,64 below the context)"))
    config, wm, test, updates = load_cell(args.logdir, envs=ENVS)
    env = config.memory.env
    keep = parse_keep(args.keep, _context_length(test[0]))
    out = args.logdir / "eval" / "shortcontext.json"
    try:
        result = {"updates": updates, **shortcontext(
            wm, test, env, keep, draws=args.draws, seed=args.seed, query_observe=config.offline.query_observe,
            batch=config.offline.eval_batch, chunk=config.train.seq_len)}
        write_result(out, result)
    except (ValueError, OSError) as e:
        fail(f"{args.logdir}: {e}")
    print(f"{args.logdir} ({config.backbone}) at {updates} updates, {len(test)} test episodes, "
          f"{args.draws} draws, context {result['context']} frames")
    for line in table(result):
        print(line)
    print(f"wrote {out}")


def rows(result: dict, recon: bool = True) -> list[list[str]]:
    """A result's table rows, each [condition, *entries]: the whole context's scores, then each cut's
    gap +- its standard error over draws; recon: then each condition's perception scores."""
    names, extra = list(result["full"]), list(result["recon"]["full"]) if recon else []
    out = [[f"all {result['context']}", *(f"{result['full'][s]:.4g}" for s in names),
            *(f"{result['recon']['full'][s]:.4g}" for s in extra)]]
    for k in map(str, result["keep"]):
        g, se = result["gap"][k], result["gap_se"][k]
        out.append([f"last {k}: gap", *(f"{g[s]:+.3g} ± {se[s]:.2g}" for s in names),
                    *(f"{result['recon'][k][s]:.4g}" for s in extra)])
    return out


def table(result: dict) -> list[str]:
    """The markdown table of a result (rows, with the perception scores), and how to read it."""
    names = list(result["full"]) + list(result["recon"]["full"])
    guesses = ", ".join(f"{k} {v:.1%}" for k, v in result.get("guesses", {}).items())
    return ["| context kept | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
            *("| " + " | ".join(row) + " |" for row in rows(result)),
            "(gap: the score with the cut minus the score with the whole context, the other way round for "
            "PSNR, SSIM and accuracies: positive where the frames before the cut helped; ± its standard "
            "error over draws; recon: over the frames that condition observed)"
            + (f"; guesses: {guesses}" if guesses else "")]


if __name__ == "__main__":
    command(main)
