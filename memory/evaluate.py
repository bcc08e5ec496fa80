"""Evaluation of a trained world model on held-out episodes of a memory benchmark (paper Sec. 3).

Every episode is split by its recorded `phase`: context frames (0) are observed (posterior), query
frames (1) are imagined from the recorded actions alone (prior), except the first `query_observe`
query frames, which are observed too (teleport variants: the model is shown where it landed).

    rooms, multi doors keys   recon_* over the context, gen_* over the imagined query frames,
                              per-frame curves over the imagination step (index 0 = first imagined
                              frame); teleport: gen_mse_revisit over query frames that show a view
                              the context already showed (memory.metrics.revisit_mask)
    distracting memory        reward accuracy at the recorded decision step, (a) 'inference': the
                              whole episode observed, (b) 'imagination': the context observed, the
                              rest imagined; plus gen_mse of the imagined frames, and [ours] cue
                              colour probes at the first frame and at the hallway's end (given
                              training episodes: memory/probe.py)
    memory maze               as rooms, plus the offline probes of memory/probe.py (global wall
                              layout, object positions, the walls around and behind the agent with
                              a one-frame control; fitted on training episodes)

Formulas: memory/metrics.py. Everything here runs under no_grad in chunks of `chunk` steps, so an
episode of any length fits in memory.
"""
from __future__ import annotations

import numpy as np
import torch

from memory import metrics
from memory.episodes import MODEL_KEYS, observe
from memory.probe import cue_scores, evaluate_probes
from replay import to_torch

def to_uint8(pred: torch.Tensor) -> np.ndarray:
    """Decoder means in [-0.5, 0.5] units -> uint8 images."""
    return ((pred + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


@torch.no_grad()
def decode(wm, feat: torch.Tensor, chunk: int) -> np.ndarray:
    """feat (B, T, F) -> uint8 images (B, T, H, W, C), decoded `chunk` steps at a time."""
    return np.concatenate([to_uint8(wm.decoder(feat[:, s:s + chunk]))
                           for s in range(0, feat.shape[1], chunk)], 1)


@torch.no_grad()
def rollout(wm, episodes: list[dict], context: int, query_observe: int, chunk: int, device,
            images: bool = True):
    """Observe the first context + query_observe frames of equally long episodes, imagine the rest.
    Returns (recon uint8 (B, context + query_observe, ...) of the observed frames, imagined feats
    (B, Q', F), imagined uint8 (B, Q', ...)) with Q' = T - context - query_observe; images=False:
    the feats alone, (None, feats, None) (nothing decoded; the same random numbers drawn)."""
    data = to_torch({k: np.stack([e[k] for e in episodes]) for k in MODEL_KEYS}, device)
    B, T = data["is_first"].shape
    seen = context + query_observe
    feat, state = observe(wm, {k: v[:, :seen] for k, v in data.items()}, wm.initial_state(B), chunk)
    imag = wm.imagine(state, data["action"][:, seen:], T - seen)["feat"][:, 1:]  # (B, Q', F)
    if not images:
        return None, imag, None
    return decode(wm, feat, chunk), imag, decode(wm, imag, chunk)  # the decoder draws nothing


def _context_length(episode: dict) -> int:
    return int(np.sum(episode["phase"] == 0))


def evaluate_frames(wm, episodes: list[dict], *, query_observe: int, batch: int, chunk: int,
                    device, revisit: bool) -> tuple[dict, dict, np.ndarray]:
    """Rooms and Multi Doors Keys (all episodes the same length). Returns (summary of scalar
    means, curves over the imagination step, prediction of episode 0 as uint8 (T, H, W, C):
    reconstructed context, observed query frames (their reconstruction), imagined frames)."""
    context = _context_length(episodes[0])
    per_frame, recon_mse, revisit_err, video = [], [], [], None
    for s in range(0, len(episodes), batch):
        group = episodes[s:s + batch]
        truth = np.stack([e["image"] for e in group])  # (B, T, H, W, C)
        recon, _, imag = rollout(wm, group, context, query_observe, chunk, device)
        seen = context + query_observe
        recon_mse.append(metrics.mse(recon[:, :context], truth[:, :context]))  # (B, context)
        per_frame.append(metrics.image_scores(imag, truth[:, seen:]))  # each (B, Q')
        if revisit:
            for b, e in enumerate(group):
                mask = metrics.revisit_mask(e["pose"], e["phase"])[seen:]  # (Q',)
                if mask.any():
                    revisit_err.append(per_frame[-1]["mse"][b][mask].mean())
        if video is None:  # reconstructed context and observed query frames, then imagined ones
            video = np.concatenate([recon[0], imag[0]], 0)
    scores = {k: np.concatenate([p[k] for p in per_frame], 0) for k in per_frame[0]}  # (N, Q')
    summary = {"recon_mse": float(np.concatenate(recon_mse).mean())}
    summary.update({f"gen_{k}": float(v.mean()) for k, v in scores.items()})
    if revisit:
        summary["gen_mse_revisit"] = float(np.mean(revisit_err)) if revisit_err else float("nan")
    curves = {k: v.mean(0).tolist() for k, v in scores.items()}
    return summary, curves, video


@torch.no_grad()
def predict_rewards(wm, episode: dict, *, chunk: int, device, images: bool = True) -> dict:
    """Distracting Memory, one episode: the predicted reward of every frame (T,) in 'inference' (the
    whole episode observed) and in 'imagination' (the context observed, the rest imagined: the
    context's frames get 0), with the reconstructed context 'recon' and the imagined frames 'imag'
    (uint8; None with images=False: nothing decoded). The latents are sampled: the global torch
    generator draws them, the same numbers with or without images."""
    data = to_torch({k: episode[k][None] for k in MODEL_KEYS}, device)  # (1, T, ...)
    T, t = len(episode["image"]), metrics.decision_step(episode["reward_step"])
    feat, _ = observe(wm, data, wm.initial_state(1), chunk)
    context = _context_length(episode)
    if not 0 < context <= t:
        raise ValueError(f"decision step {t} is not after the context ({context} frames)")
    recon, imag_feat, imag = rollout(wm, [episode], context, 0, chunk, device, images)
    imagined = np.zeros(T, np.float32)  # posterior frames, then the prior's
    imagined[context:] = wm.reward(imag_feat)[0].cpu().numpy()
    return {"inference": wm.reward(feat)[0].cpu().numpy(), "imagination": imagined,
            "recon": recon[0] if images else None, "imag": imag[0] if images else None}


def evaluate_rewards(wm, episodes: list[dict], *, chunk: int, device) -> tuple[dict, dict, np.ndarray]:
    """Distracting Memory: reward accuracy at the decision step, observed vs imagined (one episode
    at a time: lengths differ). Returns (summary, curves {}, prediction of episode 0)."""
    inference, imagination, gen_mse, video = [], [], [], None
    for e in episodes:
        pred = predict_rewards(wm, e, chunk=chunk, device=device)
        inference.append(metrics.reward_correct(pred["inference"], e["reward"], e["reward_step"]))
        imagination.append(metrics.reward_correct(pred["imagination"], e["reward"], e["reward_step"]))
        gen_mse.append(metrics.mse(pred["imag"], e["image"][_context_length(e):]).mean())
        if video is None:
            video = np.concatenate([pred["recon"], pred["imag"]], 0)
    summary = {"reward_acc_inference": metrics.accuracy(inference),
               "reward_acc_imagination": metrics.accuracy(imagination),
               "gen_mse": float(np.mean(gen_mse))}
    return summary, {}, video


def evaluate(wm, episodes: list[dict], env: str, *, query_observe: int, batch: int, chunk: int,
             device, teleport: bool = False, probe_train: list[dict] | None = None,
             probe_updates: int = 2000, seed: int = 0) -> tuple[dict, dict, np.ndarray]:
    """Dispatch on the dataset's env (memory.env). Returns (summary, curves, video prediction).
    Memory maze: the probes are fitted on `probe_train` (required there); Distracting Memory: the
    cue probes, when `probe_train` is given."""
    was_training = wm.training
    wm.eval()
    try:
        if env == "distracting_memory":
            summary, curves, video = evaluate_rewards(wm, episodes, chunk=chunk, device=device)
            if probe_train:
                summary.update(cue_scores(wm, probe_train, episodes, batch=batch, chunk=chunk,
                                          device=device, updates=probe_updates, seed=seed))
            return summary, curves, video
        summary, curves, video = evaluate_frames(wm, episodes, query_observe=query_observe, batch=batch,
                                                 chunk=chunk, device=device, revisit=teleport)
        if env == "memory_maze":
            if not probe_train:
                raise ValueError("memory maze evaluation needs training episodes for the probes")
            more, probe_curves = evaluate_probes(wm, probe_train, episodes, batch=batch, chunk=chunk,
                                                 device=device, updates=probe_updates, seed=seed)
            summary, curves = {**summary, **more}, {**curves, **probe_curves}
        return summary, curves, video
    finally:
        wm.train(was_training)
