"""Evaluation of a trained world model on held-out episodes of a memory benchmark (paper Sec. 3).

Every episode is split by its recorded `phase`: context frames (0) are observed (posterior), query
frames (1) are imagined from the recorded actions alone (prior), except the first `query_observe`
query frames, which are observed too (teleport variants: the model is shown where it landed).

    rooms, multi doors keys   recon_* over the context, gen_* over the imagined query frames,
                              per-frame curves over the imagination step (index 0 = first imagined
                              frame); teleport: gen_mse_revisit over query frames that show a view
                              the context already showed (memory.metrics.revisit_mask); rooms and
                              memory maze [ours]: gen_mse_frozen, gen_mse_mean and gen_mse_episode, the
                              gen_mse of three guesses from the recorded frames (the last observed
                              frame kept; the mean context frame of the test set; the episode's own
                              mean context frame), the levels a model must beat
    multi doors keys          [ours] also what the frames show of the held keys and the doors, read
                              back from their pixels: held_acc_* (the strip shows exactly the held
                              keys) and door_acc_* (a door in view is shown open iff it is), over the
                              reconstructed context (perception), the imagined query (memory), and
                              for the 'frozen' guess (the last observed frame's keys and doors, kept
                              unchanged through the query) and the 'blank' one (an empty strip, every
                              door drawn as a black, i.e. open, cell); gen_mse_strip / gen_mse_window split
                              gen_mse into the held-keys strip and the 5x5 window
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

from envs import gridmemory as grid
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
            images: bool = True, imagine_seed: int | None = None):
    """Observe the first context + query_observe frames of equally long episodes, imagine the rest.
    Returns (recon uint8 (B, context + query_observe, ...) of the observed frames, imagined feats
    (B, Q', F), imagined uint8 (B, Q', ...)) with Q' = T - context - query_observe; images=False:
    the feats alone, (None, feats, None) (nothing decoded; the same random numbers drawn).
    imagine_seed: seed torch's generator after observing, so that the imagined latents draw the
    same numbers however many frames were observed (None: go on with the generator as it is)."""
    data = to_torch({k: np.stack([e[k] for e in episodes]) for k in MODEL_KEYS}, device)
    B, T = data["is_first"].shape
    seen = context + query_observe
    feat, state = observe(wm, {k: v[:, :seen] for k, v in data.items()}, wm.initial_state(B), chunk)
    if imagine_seed is not None:
        torch.manual_seed(imagine_seed)
    imag = wm.imagine(state, data["action"][:, seen:], T - seen)["feat"][:, 1:]  # (B, Q', F)
    if not images:
        return None, imag, None
    return decode(wm, feat, chunk), imag, decode(wm, imag, chunk)  # the decoder draws nothing


def _context_length(episode: dict) -> int:
    return int(np.sum(episode["phase"] == 0))


def read_doors_keys(group: list[dict], frames: np.ndarray, start: int) -> dict[str, np.ndarray]:
    """Multi Doors Keys frames (B, T', H, W, C), steps start .. start + T' - 1 of the episodes of
    `group`, against their recorded state: {'held' bool (B, T'): the strip shows exactly the held
    keys, 'door' bool (B, T', K): a door is shown in its state (meaningless where not visible),
    'visible' bool (B, T', K): the door's cell is in the window, by the recorded agent cell}."""
    B, T = frames.shape[:2]
    labels, colours, cells, opened, locked = grid.read_layout(frames.shape[-2])
    truth = {k: np.stack([e[k][start:start + T] for e in group]) for k in ("held", "door_open", "door_color", "cell")}
    keys = truth["door_open"].shape[-1]
    doors = np.array([(x, y) for x, y, _ in grid.door_cells(keys)])
    colour = truth["door_color"].reshape(B * T, keys).astype(np.int64)
    shown_open, visible = metrics.doors_open(frames.reshape(B * T, *frames.shape[2:]),
                                             truth["cell"].reshape(B * T, 2), doors, cells,
                                             opened[colour], locked[colour], view=grid.VIEW)
    held = metrics.held_keys(frames, labels, colours) == truth["held"]  # (B, T', 8)
    door = shown_open == truth["door_open"].reshape(B * T, keys)
    return {"held": held.all(-1), "door": door.reshape(B, T, keys), "visible": visible.reshape(B, T, keys)}


def doors_keys_scores(group: list[dict], recon: np.ndarray, imag: np.ndarray, truth: np.ndarray,
                      seen: int) -> dict[str, np.ndarray]:
    """Multi Doors Keys, per episode of `group`: the reconstructed context frames recon (B, context,
    ...) and the imagined ones imag (B, T - seen, ...) read back (read_doors_keys; truth: the
    recorded frames imag stands for, for the strip and window MSE), and the two
    guesses scored from the recorded arrays: 'frozen' (the keys and doors of step seen - 1 kept
    through the query) and 'blank' (no key in the strip; every door drawn as a black cell, which
    reads as open). Per-frame arrays, (B, ...) each; doors_keys_summary averages them."""
    context, imagined = read_doors_keys(group, recon, 0), read_doors_keys(group, imag, seen)
    held = np.stack([e["held"][seen - 1:] for e in group])  # (B, 1 + Q', 8): the last seen, the query
    is_open = np.stack([e["door_open"][seen - 1:] for e in group])  # (B, 1 + Q', K)
    labels = grid.read_layout(imag.shape[-2])[0]
    return {"held_recon": context["held"], "door_recon": context["door"], "visible_recon": context["visible"],
            "held_imagination": imagined["held"], "door_imagination": imagined["door"],
            "visible": imagined["visible"],
            "held_frozen": (held[:, 1:] == held[:, :1]).all(-1), "door_frozen": is_open[:, 1:] == is_open[:, :1],
            "held_blank": ~held[:, 1:].any(-1), "door_blank": is_open[:, 1:],
            "mse_strip": metrics.region_mse(imag, truth, (labels >= 0) & (labels < grid.WINDOW)),
            "mse_window": metrics.region_mse(imag, truth, labels >= grid.WINDOW)}


def _visible_mean(correct: np.ndarray, visible: np.ndarray, axis=None) -> np.ndarray | float:
    """Mean of `correct` over the visible entries (along `axis`, or all); nan where none is visible."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (correct & visible).sum(axis) / visible.sum(axis)


def doors_keys_summary(scores: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """doors_keys_scores of every test episode (concatenated) -> (summary, curves over the
    imagination step; door_acc is nan at a step where no test episode shows a door)."""
    summary = {}
    for part in ("recon", "imagination", "frozen", "blank"):
        visible = scores["visible_recon"] if part == "recon" else scores["visible"]
        summary[f"held_acc_{part}"] = float(scores[f"held_{part}"].mean())
        summary[f"door_acc_{part}"] = float(_visible_mean(scores[f"door_{part}"], visible))
    summary["gen_mse_strip"] = float(scores["mse_strip"].mean())
    summary["gen_mse_window"] = float(scores["mse_window"].mean())
    curves = {"held_acc": scores["held_imagination"].mean(0).tolist(),
              "door_acc": _visible_mean(scores["door_imagination"], scores["visible"], (0, 2)).tolist()}
    return summary, curves


def evaluate_frames(wm, episodes: list[dict], *, query_observe: int, batch: int, chunk: int,
                    device, revisit: bool, doors_keys: bool = False,
                    imagine_seed: int | None = None, frame_guesses: bool = False) -> tuple[dict, dict, np.ndarray]:
    """Rooms and Multi Doors Keys (all episodes the same length). Returns (summary of scalar
    means, curves over the imagination step, prediction of episode 0 as uint8 (T, H, W, C):
    reconstructed context, observed query frames (their reconstruction), imagined frames).
    doors_keys: add the held-key and door scores (doors_keys_scores, doors_keys_summary).
    imagine_seed: the batch starting at episode s imagines with rollout's imagine_seed + s.
    frame_guesses: add the gen_mse of three guesses and their curves per imagined step (mse_<name>):
    gen_mse_frozen (the last observed frame kept through the query: no dynamics), gen_mse_mean (the
    mean of every test episode's context frames, for every query frame: no memory of the episode)
    and gen_mse_episode (the mean of the episode's own context frames: its colours remembered, not
    where the agent is)."""
    context = _context_length(episodes[0])
    per_frame, recon_mse, revisit_err, video, read, guesses = [], [], [], None, [], []
    if frame_guesses:  # on [0, 1]: each episode's mean context frame, and the mean of them all
        own_frames = np.stack([metrics.to_unit(e["image"][:context]).mean(0) for e in episodes])  # (N, H, W, C)
        mean_frame = own_frames.mean(0)  # every context has the same length: the mean of all context frames
    for s in range(0, len(episodes), batch):
        group = episodes[s:s + batch]
        truth = np.stack([e["image"] for e in group])  # (B, T, H, W, C)
        recon, _, imag = rollout(wm, group, context, query_observe, chunk, device,
                                 imagine_seed=None if imagine_seed is None else imagine_seed + s)
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
        if doors_keys:
            read.append(doors_keys_scores(group, recon[:, :context], imag, truth[:, seen:], seen))
        if frame_guesses:
            guesses.append({"frozen": metrics.mse(truth[:, seen - 1:seen], truth[:, seen:]),  # (B, Q')
                            "mean": metrics.mse(mean_frame, truth[:, seen:]),
                            "episode": metrics.mse(own_frames[s:s + batch, None], truth[:, seen:])})
    scores = {k: np.concatenate([p[k] for p in per_frame], 0) for k in per_frame[0]}  # (N, Q')
    summary = {"recon_mse": float(np.concatenate(recon_mse).mean())}
    summary.update({f"gen_{k}": float(v.mean()) for k, v in scores.items()})
    if revisit:
        summary["gen_mse_revisit"] = float(np.mean(revisit_err)) if revisit_err else float("nan")
    curves = {k: v.mean(0).tolist() for k, v in scores.items()}
    for name in ("frozen", "mean", "episode") if frame_guesses else ():
        guess = np.concatenate([g[name] for g in guesses])  # (N, Q')
        summary[f"gen_mse_{name}"], curves[f"mse_{name}"] = float(guess.mean()), guess.mean(0).tolist()
    if doors_keys:
        more, more_curves = doors_keys_summary({k: np.concatenate([r[k] for r in read]) for k in read[0]})
        summary, curves = {**summary, **more}, {**curves, **more_curves}
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
                                                 chunk=chunk, device=device, revisit=teleport,
                                                 doors_keys=env == "multi_doors_keys",
                                                 frame_guesses=env in ("rooms", "memory_maze"))
        if env == "memory_maze":
            if not probe_train:
                raise ValueError("memory maze evaluation needs training episodes for the probes")
            more, probe_curves = evaluate_probes(wm, probe_train, episodes, batch=batch, chunk=chunk,
                                                 device=device, updates=probe_updates, seed=seed)
            summary, curves = {**summary, **more}, {**curves, **probe_curves}
        return summary, curves, video
    finally:
        wm.train(was_training)
