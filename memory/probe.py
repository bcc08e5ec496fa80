"""Memory Maze offline probing (Pasukonis et al. 2022; the S4WM paper's Memory Maze table): how
much of the maze a trained world model's state holds, read out by probes on frozen features.

The world model observes every frame of an episode (posterior); its features feat_t (deterministic
state and latent, `wm.feat`) are taken without gradient. Two probes, each a small MLP trained on
the training episodes' features (every step) and scored on the test episodes at every step:

    walls    feat_t -> S*S logits of the maze layout (1 free, 0 wall; global frame, fixed for the
             episode); binary cross-entropy; score `probe_wall_acc`: fraction of cells right
    objects  feat_t -> the K object positions relative to the agent, in its own frame, in cell units
             (`targets_vec`); squared error; score `probe_object_mse`: squared distance between
             predicted and true position, summed over x and y, averaged over the K objects

A layout is only knowable once seen, so both scores are reported as curves over the episode step
(`wall_acc`, `object_mse`) and as means over all test steps. Baselines that see no frame, fitted on
the training episodes: the per-cell majority layout (`probe_wall_acc_baseline`) and the mean
relative position of each object (`probe_object_mse_baseline`). [ours] The memory-maze authors
train the probe alongside the world model with the gradient stopped; we fit it after training on
the frozen model, which is the same question asked of the final weights.

Distracting Memory [ours]: the reward accuracy needs the cue remembered *and* compared with the
colour stepped on, and stays at chance until both are learned. `cue_scores` separates perception
from memory: a probe reads the cue colour (8 classes, cross-entropy) from the features of the first
frame (the cue in view: `cue_acc_start`) and of the decision step (~width steps later:
`cue_acc_decision`); chance is 1/8. What the first frame shows but the decision step has lost was
forgotten.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from agent.agent import to_torch
from memory.evaluate import MODEL_KEYS, observe


def targets(episode: dict) -> tuple[np.ndarray, np.ndarray]:
    """(walls float32 (T, S*S) in {0, 1}, objects float32 (T, K*2)) of one episode."""
    T = len(episode["image"])
    return (episode["maze_layout"].reshape(T, -1).astype(np.float32),
            episode["targets_vec"].reshape(T, -1).astype(np.float32))


@torch.no_grad()
def features(wm, episodes: list[dict], *, batch: int, chunk: int, device) -> torch.Tensor:
    """Posterior features of equally long episodes: (N, T, F) float32 on the CPU."""
    out = []
    for s in range(0, len(episodes), batch):
        group = episodes[s:s + batch]
        data = to_torch({k: np.stack([e[k] for e in group]) for k in MODEL_KEYS}, device)
        feat, _ = observe(wm, data, wm.initial_state(len(group)), chunk)
        out.append(feat.float().cpu())
    return torch.cat(out, 0)


class Probe(nn.Module):
    """feat (..., F) -> (..., out): LayerNorm, then `layers` hidden layers of `units` (ELU)."""

    def __init__(self, in_dim: int, out_dim: int, units: int = 256, layers: int = 2):
        super().__init__()
        mods: list[nn.Module] = [nn.LayerNorm(in_dim)]
        for i in range(layers):
            mods += [nn.Linear(in_dim if i == 0 else units, units), nn.ELU()]
        mods.append(nn.Linear(units if layers else in_dim, out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def wall_loss(logits: torch.Tensor, walls: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, walls)


def object_loss(pred: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    return (pred - objects).pow(2).mean()


def fit(x: torch.Tensor, y: torch.Tensor, loss_fn, *, updates: int, batch: int, lr: float,
        seed: int, units: int = 256, layers: int = 2, out_dim: int | None = None) -> Probe:
    """Train a Probe x (M, F) -> y (M, D) (or class indices y (M,) with out_dim classes) with Adam
    on random minibatches (deterministic in seed)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = Probe(x.shape[-1], out_dim or y.shape[-1], units, layers)
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    for _ in range(updates):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
        loss = loss_fn(probe(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return probe.eval()


def wall_accuracy(logits: np.ndarray, walls: np.ndarray) -> np.ndarray:
    """logits, walls (..., S*S) -> fraction of cells whose sign is right (...)."""
    return ((logits > 0) == (walls > 0.5)).mean(-1)


def object_error(pred: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """pred, objects (..., K*2) -> squared distance summed over (x, y), mean over the K objects (...)."""
    sq = (pred - objects) ** 2
    return sq.reshape(*sq.shape[:-1], -1, 2).sum(-1).mean(-1)


def evaluate_probes(wm, train: list[dict], test: list[dict], *, batch: int, chunk: int, device,
                    updates: int = 2000, lr: float = 1e-3, seed: int = 0) -> tuple[dict, dict]:
    """Fit both probes on `train`, score them on `test` (module docstring). Returns (summary,
    curves over the episode step)."""
    walls_tr, objects_tr = (np.stack(a) for a in zip(*(targets(e) for e in train)))  # (N, T, D)
    walls_te, objects_te = (np.stack(a) for a in zip(*(targets(e) for e in test)))
    x_tr = features(wm, train, batch=batch, chunk=chunk, device=device)  # (N, T, F)
    x_te = features(wm, test, batch=batch, chunk=chunk, device=device)
    flat = x_tr.reshape(-1, x_tr.shape[-1])
    with torch.enable_grad():
        walls = fit(flat, torch.from_numpy(walls_tr.reshape(flat.shape[0], -1)), wall_loss,
                    updates=updates, batch=512, lr=lr, seed=seed)
        objects = fit(flat, torch.from_numpy(objects_tr.reshape(flat.shape[0], -1)), object_loss,
                      updates=updates, batch=512, lr=lr, seed=seed + 1)
    with torch.no_grad():
        acc = wall_accuracy(walls(x_te).numpy(), walls_te)  # (N, T)
        err = object_error(objects(x_te).numpy(), objects_te)  # (N, T)
    majority = (walls_tr.reshape(-1, walls_tr.shape[-1]).mean(0) > 0.5).astype(np.float32)  # (S*S,)
    mean_pos = objects_tr.reshape(-1, objects_tr.shape[-1]).mean(0)  # (K*2,)
    summary = {"probe_wall_acc": float(acc.mean()),
               "probe_wall_acc_baseline": float(wall_accuracy(2 * majority - 1, walls_te).mean()),
               "probe_object_mse": float(err.mean()),
               "probe_object_mse_baseline": float(object_error(mean_pos, objects_te).mean())}
    return summary, {"wall_acc": acc.mean(0).tolist(), "object_mse": err.mean(0).tolist()}


@torch.no_grad()
def cue_scores(wm, train: list[dict], test: list[dict], *, chunk: int, device, updates: int = 2000,
               lr: float = 1e-3, seed: int = 0) -> dict:
    """Distracting Memory: cue colour probes at the first frame and at the decision step (module
    docstring). Episodes differ in length, so features are taken one episode at a time."""
    def at_start_and_decision(episodes):
        start, decision = [], []
        for e in episodes:
            feat = features(wm, [e], batch=1, chunk=chunk, device=device)[0]  # (T, F)
            start.append(feat[0])
            decision.append(feat[int(np.argmax(e["reward_step"]))])
        return torch.stack(start), torch.stack(decision), torch.tensor([int(e["cue"][0]) for e in episodes])

    s_tr, d_tr, y_tr = at_start_and_decision(train)
    s_te, d_te, y_te = at_start_and_decision(test)
    scores = {}
    for name, x_tr, x_te in (("cue_acc_start", s_tr, s_te), ("cue_acc_decision", d_tr, d_te)):
        with torch.enable_grad():
            p = fit(x_tr, y_tr, nn.functional.cross_entropy, updates=updates, batch=256, lr=lr,
                    seed=seed, out_dim=8)
        scores[name] = float((p(x_te).argmax(-1) == y_te).float().mean())
    return scores
