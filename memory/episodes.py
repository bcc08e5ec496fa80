"""The world model's posterior pass over recorded episodes, shared by the evaluation
(memory/evaluate.py) and the probes (memory/probe.py)."""
from __future__ import annotations

import torch

from common import interrupt

# The keys of a recorded episode that the world model reads (the rest: phase, pose, layout, ...).
MODEL_KEYS = ("image", "action", "reward", "is_first", "is_last", "is_terminal")


@torch.no_grad()
def observe(wm, data: dict, state: dict, chunk: int, posterior: bool = False):
    """Posterior pass over data (B, T, ...) in chunks. Returns (feat (B, T, F), final state);
    posterior: the posterior distribution of each step instead (wm.posterior, (B, T, P))."""
    feats, T = [], data["image"].shape[1]
    for s in range(0, T, chunk):
        interrupt.check()  # a Ctrl-C / SIGTERM during evaluation stops within a chunk
        part = {k: v[:, s:s + chunk] for k, v in data.items()}
        out, state, _ = wm.observe(wm.encoder(part["image"]), part["action"], part["is_first"], state)
        feats.append(wm.posterior(out) if posterior else wm.feat(out))
    return torch.cat(feats, 1), state
