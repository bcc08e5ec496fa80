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
    local    [ours] feat_t -> the 5x5 cells around the agent in its own frame (heading rounded to
             an axis; rows ahead to behind); `probe_local_acc` over all 25, `probe_behind_acc`
             over the 10 behind the agent, which the camera does not show: only a memory of
             the way it came can know them. Needs far fewer mazes than the global layout.
             Control (`probe_local_acc_frame`, `probe_behind_acc_frame`): the same probe on the
             encoder's embedding of the current frame alone, which has no memory; what the
             model's state adds over it is memory (and not the maze's regularities, which a
             single frame also lets a probe guess from).

A layout is only knowable once seen, so the scores are reported as curves over the episode step
(`wall_acc`, `object_mse`, `behind_acc`) and as means over all test steps. Baselines that see no
frame, fitted on the training episodes: the per-cell majority layout (`probe_wall_acc_baseline`),
the mean relative position of each object (`probe_object_mse_baseline`) and the per-cell majority
of the local windows (`probe_local_acc_baseline`, `probe_behind_acc_baseline`). [ours] The
memory-maze authors train the probe alongside the world model with the gradient stopped; we fit it
after training on the frozen model, which is the same question asked of the final weights.

Distracting Memory [ours]: the reward accuracy needs the cue remembered *and* compared with the
colour stepped on, and stays at chance until both are learned. `cue_scores` separates perception
from memory: a probe reads the cue colour (8 classes, cross-entropy) from the features of the first
frame (the cue in view: `cue_acc_start`) and of the last frame before the end squares come into view
(`cue_acc_hallway_end`: the agent ~width cells down the hallway; later frames show the end squares,
one of them the cue's colour, which would narrow the guess to two without any memory). Chance is
1/8 for both; what the first frame shows but the hallway end has lost was forgotten. At the first
frame the features [h, z] hold the frame only through z, one sample of the posterior (h has not
seen it yet), so a third probe reads the posterior distribution of frame 0 itself
(`cue_acc_start_posterior`): perception without the sampling noise, the perception gate's measure.

Every probe is fitted on four fifths of the given training episodes and early-stopped on the rest
(`fit`, `held_out`): with few mazes (the CPU scale has 200; the memory-maze dataset 29k) an MLP
can memorise each training maze from its features and would then score below the baselines.

Sizes: the training features kept for the probes are capped at MAX_ROWS frames (a frame stride per
episode), so paper-scale datasets (200 episodes x 1001 frames x 1536 features) stay ~0.3 GB.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from common import interrupt
from envs.gridmemory import COLOURS, CUE
from memory.episodes import MODEL_KEYS, observe
from memory.metrics import decision_step
from replay import to_torch

MAX_ROWS = 50_000  # training frames kept for fitting a probe
LOCAL = 2  # memory maze: the agent-centred layout probe covers (2 LOCAL + 1)^2 cells
BEHIND = slice((LOCAL + 1) * (2 * LOCAL + 1), None)  # its cells behind the agent (out of view)
VIEW = 2  # Distracting Memory: the agent-centred window reaches 2 cells to each side (5x5)


def targets(episode: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(walls float32 (T, S*S) in {0, 1}, objects float32 (T, K*2), local walls float32 (T, W*W))
    of one episode."""
    T = len(episode["image"])
    return (episode["maze_layout"].reshape(T, -1).astype(np.float32),
            episode["targets_vec"].reshape(T, -1).astype(np.float32),
            local_layout(episode["maze_layout"], episode["agent_pos"], episode["agent_dir"]))


def local_layout(layout: np.ndarray, pos: np.ndarray, heading: np.ndarray, radius: int = LOCAL) -> np.ndarray:
    """The (2r+1)^2 cells around the agent's cell in its own frame, heading rounded to the nearest
    axis: layout (T, S, S) [y, x], pos (T, 2), heading (T, 2) -> float32 (T, (2r+1)^2), 1 = free,
    cells outside the maze 0. Row-major, rows from r cells ahead to r cells behind, columns from
    r cells to the left to r to the right (so the last r rows are behind the agent: BEHIND)."""
    T, S = layout.shape[0], layout.shape[1]
    k = np.round(np.arctan2(heading[:, 1], heading[:, 0]) / (np.pi / 2)).astype(int) % 4  # (T,)
    fwd = np.array([(1, 0), (0, 1), (-1, 0), (0, -1)])[k]  # (T, 2) as (x, y)
    right = np.stack([fwd[:, 1], -fwd[:, 0]], -1)  # (T, 2)
    ahead = np.arange(radius, -radius - 1, -1)  # rows: ahead first
    side = np.arange(-radius, radius + 1)  # columns: left first
    cells = (np.floor(pos).astype(int)[:, None, None] + ahead[None, :, None, None] * fwd[:, None, None]
             + side[None, None, :, None] * right[:, None, None])  # (T, W, W, 2) as (x, y)
    x, y = cells[..., 0], cells[..., 1]
    inside = (x >= 0) & (x < S) & (y >= 0) & (y < S)
    free = layout[np.arange(T)[:, None, None], np.clip(y, 0, S - 1), np.clip(x, 0, S - 1)]
    return (free * inside).reshape(T, -1).astype(np.float32)


@torch.no_grad()
def features(wm, episodes: list[dict], *, batch: int, chunk: int, device, stride: int = 1,
             frame_only: bool = False, posterior: bool = False) -> list[torch.Tensor]:
    """Posterior features of each episode, every `stride`-th frame: [(ceil(T_i / stride), F)] float32
    on the CPU. Episodes are observed `batch` at a time, the shorter ones padded at the end (the
    models are causal: padding never changes an earlier feature), in chunks of `chunk` steps with
    the state carried, as in training. frame_only: the encoder's embedding of each frame instead
    (no memory: the control that says what one frame shows). posterior: the posterior
    distribution of each step (wm.posterior: no sample drawn) instead of [h, z]."""
    out = []
    for s in range(0, len(episodes), batch):
        group = episodes[s:s + batch]
        T = max(len(e["image"]) for e in group)
        data = to_torch({k: np.stack([_pad(e[k], T) for e in group]) for k in MODEL_KEYS}, device)
        if frame_only:
            feat = torch.cat([wm.encoder(data["image"][:, t:t + chunk]) for t in range(0, T, chunk)], 1)
        else:
            feat, _ = observe(wm, data, wm.initial_state(len(group)), chunk, posterior)  # (B, T, F)
        out += [feat[i, :len(e["image"]):stride].float().cpu() for i, e in enumerate(group)]
    return out


def _pad(x: np.ndarray, T: int) -> np.ndarray:
    return np.concatenate([x, np.zeros((T - len(x), *x.shape[1:]), x.dtype)]) if len(x) < T else x


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
        seed: int, units: int = 256, layers: int = 2, out_dim: int | None = None,
        val: tuple[torch.Tensor, torch.Tensor] | None = None) -> Probe:
    """Train a Probe x (M, F) -> y (M, D) (or class indices y (M,) with out_dim classes) with Adam
    on random minibatches. With `val` (x, y of held-out episodes), the weights with the lowest
    validation loss (checked 40 times, and before the first step) are returned: early stopping, so a
    probe that can only memorise its training episodes falls back to what generalises (at worst the
    output bias, i.e. the baseline). Deterministic in seed; the global RNG is left as it was."""
    gen = torch.Generator().manual_seed(seed)
    every = max(1, updates // 40)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(seed)  # the probe's initial weights
        probe = Probe(x.shape[-1], out_dim or y.shape[-1], units, layers)
        opt = torch.optim.Adam(probe.parameters(), lr=lr)
        best = (float("inf"), None)
        for step in range(updates + 1):
            interrupt.check()  # a Ctrl-C / SIGTERM during evaluation stops within a step
            if val is not None and (step % every == 0 or step == updates):
                with torch.no_grad():
                    loss = float(loss_fn(probe(val[0]), val[1]))
                if loss < best[0]:
                    best = (loss, {k: v.clone() for k, v in probe.state_dict().items()})
            if step == updates:
                break
            idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
            loss = loss_fn(probe(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if best[1] is not None:
            probe.load_state_dict(best[1])
    return probe.eval()


def held_out(n: int) -> int:
    """Of n training episodes, how many fit a probe: the last fifth (at least 1) validates it, from
    5 episodes on (whole episodes: frames of one episode are alike, so a split by frame would not
    show memorisation)."""
    return n - max(1, n // 5) if n >= 5 else n


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
    stride = -(-sum(len(e["image"]) for e in train) // MAX_ROWS)  # ceil: at most MAX_ROWS rows
    walls_ep, objects_ep, local_ep = zip(*(tuple(torch.from_numpy(t[::stride]) for t in targets(e))
                                           for e in train))
    walls_te, objects_te, local_te = (np.stack(a) for a in zip(*(targets(e) for e in test)))  # (N, T, D)
    x_ep = features(wm, train, batch=batch, chunk=chunk, device=device, stride=stride)  # [(T_i, F)]
    x_te = torch.stack(features(wm, test, batch=batch, chunk=chunk, device=device))  # (N, T, F)
    n = held_out(len(train))

    def part(rows, a, b):  # episodes [a, b) -> (M, D), or None when empty
        return torch.cat(rows[a:b]) if b > a else None

    x_fit, x_val = part(x_ep, 0, n), part(x_ep, n, len(train))
    probes = []
    for k, (ys, loss) in enumerate(((walls_ep, wall_loss), (objects_ep, object_loss), (local_ep, wall_loss))):
        val = (x_val, part(ys, n, len(train))) if x_val is not None else None
        probes.append(fit(x_fit, part(ys, 0, n), loss, updates=updates, batch=512, lr=lr,
                          seed=seed + k, val=val))
    walls, objects, local = probes
    walls_tr, objects_tr, local_tr = (torch.cat(a).numpy() for a in (walls_ep, objects_ep, local_ep))  # (M, D)
    with torch.no_grad():
        acc = wall_accuracy(walls(x_te).numpy(), walls_te)  # (N, T)
        err = object_error(objects(x_te).numpy(), objects_te)  # (N, T)
        local_logits = local(x_te).numpy()  # (N, T, W*W)
    majority = (walls_tr.mean(0) > 0.5).astype(np.float32)  # (S*S,)
    local_majority = 2 * (local_tr.mean(0) > 0.5).astype(np.float32) - 1  # (W*W,) as logits
    mean_pos = objects_tr.mean(0)  # (K*2,)
    behind = wall_accuracy(local_logits[..., BEHIND], local_te[..., BEHIND])  # (N, T)
    summary = {"probe_wall_acc": float(acc.mean()),
               "probe_wall_acc_baseline": float(wall_accuracy(2 * majority - 1, walls_te).mean()),
               "probe_object_mse": float(err.mean()),
               "probe_object_mse_baseline": float(object_error(mean_pos, objects_te).mean()),
               "probe_local_acc": float(wall_accuracy(local_logits, local_te).mean()),
               "probe_local_acc_baseline": float(wall_accuracy(local_majority, local_te).mean()),
               "probe_behind_acc": float(behind.mean()),
               "probe_behind_acc_baseline": float(
                   wall_accuracy(local_majority[BEHIND], local_te[..., BEHIND]).mean())}
    # Control: the same local probe on the encoder's embedding of the current frame alone.
    e_ep = features(wm, train, batch=batch, chunk=chunk, device=device, stride=stride, frame_only=True)
    e_te = torch.stack(features(wm, test, batch=batch, chunk=chunk, device=device, frame_only=True))
    val = (part(e_ep, n, len(train)), part(local_ep, n, len(train))) if n < len(train) else None
    frame = fit(part(e_ep, 0, n), part(local_ep, 0, n), wall_loss, updates=updates, batch=512, lr=lr,
                seed=seed + 2, val=val)
    with torch.no_grad():
        frame_logits = frame(e_te).numpy()  # (N, T, W*W)
    summary["probe_local_acc_frame"] = float(wall_accuracy(frame_logits, local_te).mean())
    summary["probe_behind_acc_frame"] = float(wall_accuracy(frame_logits[..., BEHIND], local_te[..., BEHIND]).mean())
    return summary, {"wall_acc": acc.mean(0).tolist(), "object_mse": err.mean(0).tolist(),
                     "behind_acc": behind.mean(0).tolist()}


def cue_frames(episode: dict) -> int:
    """Distracting Memory: how many leading frames show the cue, the agent within VIEW cells of its
    column (the scripted policy walks on and never comes back into view, which is checked)."""
    x = episode["cell"][:, 0]
    gone = np.flatnonzero(x > CUE[0] + VIEW)
    if not len(gone) or (x[gone[0]:] <= CUE[0] + VIEW).any():
        raise ValueError("the episode does not leave the cue's view for good")
    return int(gone[0])


def hallway_end(episode: dict) -> int:
    """Distracting Memory: the last frame before the end squares enter the agent's view (the agent
    still more than VIEW cells left of the junction, the column of the end squares)."""
    x = episode["cell"][:, 0]
    junction = int(x[decision_step(episode["reward_step"])])  # the end squares' column
    before = np.flatnonzero(x < junction - VIEW)
    if not len(before):
        raise ValueError("the episode never stands more than 2 cells before the junction")
    return int(before[-1])


@torch.no_grad()
def cue_scores(wm, train: list[dict], test: list[dict], *, batch: int, chunk: int, device,
               updates: int = 2000, lr: float = 1e-3, seed: int = 0) -> dict:
    """Distracting Memory: cue colour probes at the first frame and at the hallway's end (module
    docstring): {'cue_acc_start', 'cue_acc_start_posterior', 'cue_acc_hallway_end'}, fractions of
    `test` right. cue_acc_start reads [h, z] of frame 0, where h holds nothing of the frame yet and
    z is one sample of the posterior; cue_acc_start_posterior reads the posterior distribution
    itself (wm.posterior), i.e. what the model perceives in frame 0 without the sampling noise."""
    def rows(episodes):
        feats = features(wm, episodes, batch=batch, chunk=chunk, device=device)  # [(T_i, F)]
        start = torch.stack([f[0] for f in feats])
        end = torch.stack([f[hallway_end(e)] for f, e in zip(feats, episodes)])
        first = [{k: e[k][:1] for k in MODEL_KEYS} for e in episodes]  # frame 0 is all it needs
        post = torch.stack([f[0] for f in features(wm, first, batch=batch, chunk=chunk,
                                                   device=device, posterior=True)])
        return start, post, end, torch.tensor([int(e["cue"][0]) for e in episodes])

    s_tr, p_tr, e_tr, y_tr = rows(train)
    s_te, p_te, e_te, y_te = rows(test)
    n, scores = held_out(len(train)), {}
    for name, x_tr, x_te in (("cue_acc_start", s_tr, s_te), ("cue_acc_start_posterior", p_tr, p_te),
                             ("cue_acc_hallway_end", e_tr, e_te)):
        val = (x_tr[n:], y_tr[n:]) if n < len(train) else None
        p = fit(x_tr[:n], y_tr[:n], nn.functional.cross_entropy, updates=updates, batch=256, lr=lr,
                seed=seed, out_dim=len(COLOURS), val=val)
        scores[name] = float((p(x_te).argmax(-1) == y_te).float().mean())
    return scores
