"""Where does a trained TSSM-XL keep the Distracting Memory cue? A causal test [ours].

    python -m memory.readback --logdir docs/results/memory/dm100_tssm128/tssm_seed1 [--draws 5]

Within its reach (n_layers x mem_len steps) a Transformer-XL world model can answer at the decision
step in two ways: read the cue frames back through attention, or carry the cue forward in the states
of the hallway. The test takes the keys that carry the cue frames (the frames before the agent is
more than probe.VIEW cells from the cue's column, i.e. with the cue in view; see cue_keys) away from
some queries, in every layer, and scores the reward accuracy in inference as memory/evaluate.py does
(the whole episode observed, the reward predicted at the decision step):

    open         nothing blocked: the model as trained
    end          the queries from the hallway's end (probe.hallway_end: the last frame before the end
                 squares come into view) to the decision step may not attend the cue frames; what
                 the hallway's states before them carry is left. Chance here: what the decision
                 knows of the cue it reads back from the cue frames at the end.
    end_placebo  the same queries lose as many keys from the middle of the hallway instead: near
                 'open' if what 'end' takes away is the cue, not just some keys
    all          no later query may attend the cue frames, so the prediction at the decision depends
                 on the frames after the cue alone (exactly: tests/test_memory_eval.py): the
                 control, chance for any model

Each accuracy is the mean over --draws samples of the latents (the posterior is sampled: one draw
moves a cell's accuracy by several points), the same draws for every condition. With them, per layer,
the attention weight the decision step's query puts on the cue frames and on position 0 (open, first
draw; mean over heads and episodes), and what uniform attention over its window would put on the cue
frames. The query at step t gives the feature of frame t but has read frames up to t-1 (frame t
enters at t+1), so 'end' blocks from one step before the probe's frame has been read: stricter.
The cell's saved config.yaml names the model and the dataset (which must be on disk; the held-out
test episodes are scored). Prints a table and writes <logdir>/eval/readback.json.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from common.cli import fail
from memory import metrics
from memory.cell import cell_arguments, command, load_cell, write_result
from memory.episodes import MODEL_KEYS, observe
from memory.probe import cue_frames, hallway_end
from replay import to_torch

CONDITIONS = ("open", "end", "end_placebo", "all")


def cue_keys(episode: dict) -> range:
    """The core's key positions that carry the cue frames: the core's input at step p is built from
    the latent of frame p-1 (g_p = in_net(z_{p-1}, a_p)), so frames 0 .. c-1 enter at positions
    1 .. c. Position 0 holds no frame (a constant input), in every layer."""
    return range(1, cue_frames(episode) + 1)


def placebo_keys(cue: range, end: int) -> range:
    """As many keys as `cue` holds, from the middle of the hallway between the cue frames' keys and
    the hallway's end: blocking them tests whether taking away any keys of that count hurts."""
    if end - cue.stop < len(cue):
        raise ValueError(f"the hallway is too short for the test: {end - cue.stop} keys between the "
                         f"cue frames and the hallway's end, fewer than the {len(cue)} cue frames")
    start = cue.stop + (end - cue.stop - len(cue)) // 2
    return range(start, start + len(cue))


def _key_slots(args) -> tuple[int, int]:
    """XLBlock.forward's (x, q, k, v, pos, mask) -> (M, T): memory slots come first in the keys."""
    x, k = args[0], args[2]
    return k.shape[1] - x.shape[1], x.shape[1]


@contextlib.contextmanager
def _before_every_layer(core, hook):
    """Within the block, hook(layer, args) runs before each layer's forward (a forward pre-hook; what
    it returns, if not None, replaces the args)."""
    handles = [layer.register_forward_pre_hook(hook) for layer in core.layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def blocked(core, queries_from: int, keys: range):
    """A context in which the core's queries at positions >= queries_from may not attend the keys at
    the positions `keys` (a range), in every layer. Positions count from the start of the forward
    pass (one pass from an initial state: the episode's step index)."""
    def hook(layer, args):
        x, q, k, v, pos, mask = args
        M, _ = _key_slots(args)
        mask = mask.clone()
        mask[:, queries_from:, M + keys.start:M + keys.stop] = False
        return x, q, k, v, pos, mask

    return _before_every_layer(core, hook)


def weight_on(core, query: int, keys: range, into: list):
    """A context in which every forward pass appends to `into` one (B, n_layers) tensor: the attention
    weight the query at position `query` puts on the keys at the positions `keys` (mean over heads)."""
    layers = []

    def hook(layer, args):
        x, q, k, v, pos, mask = args
        M, _ = _key_slots(args)
        w = layer.weights(q, k, pos, mask)  # (B, H, T, S)
        layers.append(w[:, :, query, M + keys.start:M + keys.stop].sum(-1).mean(1))  # (B,)
        if len(layers) == len(core.layers):
            into.append(torch.stack(layers, 1))
            layers.clear()

    return _before_every_layer(core, hook)


def condition_block(core, condition: str, episode: dict):
    """The context that blocks what `condition` (module docstring) takes away, for this episode."""
    cue, end = cue_keys(episode), hallway_end(episode)
    if condition == "end":
        return blocked(core, end, cue)
    if condition == "end_placebo":
        return blocked(core, end, placebo_keys(cue, end))
    if condition == "all":
        return blocked(core, cue.stop, cue)
    return contextlib.nullcontext()


def _spread(values: list) -> dict:
    w = torch.cat(values).cpu().numpy()  # (episodes, n_layers)
    return {"mean": w.mean(0).tolist(), "min": w.min(0).tolist(), "max": w.max(0).tolist()}


@torch.no_grad()
def readback(wm, episodes: list[dict], *, draws: int, seed: int = 0) -> dict:
    """Reward accuracy (inference) per condition (module docstring), mean over `draws` latent samples
    (draw d uses torch seed seed + d in every condition), and the decision query's attention weight
    per layer (open, first draw) on the cue frames, on position 0 (no frame: where attention often
    rests) and, for reference, what uniform attention over its visible keys would put on the cue."""
    core, device = wm.core, wm.device
    if not hasattr(core, "layers") or not hasattr(core.layers[0], "weights"):
        raise ValueError(f"the read-back test needs a Transformer-XL core (tssm), not {type(core).__name__}")
    accuracy = {c: [] for c in CONDITIONS}
    on_cue, on_start, uniform = [], [], []
    for draw in range(draws):
        for condition in CONDITIONS:
            torch.manual_seed(seed + draw)
            correct = []
            for e in episodes:
                t, cue = metrics.decision_step(e["reward_step"]), cue_keys(e)
                data = to_torch({k: e[k][None] for k in MODEL_KEYS}, device)  # (1, T, ...)
                block = condition_block(core, condition, e)
                record = contextlib.ExitStack()
                if condition == "open" and draw == 0:
                    record.enter_context(weight_on(core, t, cue, on_cue))
                    record.enter_context(weight_on(core, t, range(1), on_start))
                    seen = range(max(t - core.mem_len, 0), t + 1)  # the query's window
                    uniform.append(len(range(max(cue.start, seen.start), cue.stop)) / len(seen))
                with block, record:  # one pass: the positions are the step indices
                    feat, _ = observe(wm, data, wm.initial_state(1), len(e["image"]))
                correct.append(metrics.reward_correct(wm.reward(feat)[0].cpu().numpy(),
                                                      e["reward"], e["reward_step"]))
            accuracy[condition].append(metrics.accuracy(correct))
    return {"episodes": len(episodes), "draws": draws,
            "reward_acc_inference": {c: float(np.mean(v)) for c, v in accuracy.items()},
            "per_draw": accuracy,
            "decision_weight": {"cue_frames": _spread(on_cue), "position_0": _spread(on_start),
                                "uniform_on_cue_frames": float(np.mean(uniform))}}


def main(argv=None) -> None:
    args = cell_arguments("memory.readback", __doc__, "a trained tssm cell", argv)
    _, wm, test, updates = load_cell(args.logdir, backbone="tssm")
    out = args.logdir / "eval" / "readback.json"
    try:
        result = {"updates": updates, **readback(wm, test, draws=args.draws, seed=args.seed)}
        write_result(out, result)
    except (ValueError, OSError) as e:
        fail(f"{args.logdir}: {e}")
    acc, w = result["reward_acc_inference"], result["decision_weight"]
    print(f"{args.logdir} at {updates} updates, {result['episodes']} test episodes, {args.draws} draws")
    print("| blocked | reward accuracy (inference) |\n|---|---|")
    for c in CONDITIONS:
        print(f"| {c} | {acc[c]:.1%} |")
    print("decision query's attention weight per layer: on the cue frames "
          + ", ".join(f"{v:.3f}" for v in w["cue_frames"]["mean"])
          + f" (uniform: {w['uniform_on_cue_frames']:.3f}); on position 0 (no frame) "
          + ", ".join(f"{v:.3f}" for v in w["position_0"]["mean"]))
    print(f"wrote {out}")


if __name__ == "__main__":
    command(main)
