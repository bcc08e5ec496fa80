"""Scores of the memory benchmarks (paper Sec. 3), as small pure functions on numpy arrays.

Images are compared on [0, 1] (uint8 / 255), RGB, per frame:

    mse        mean over pixels and channels of (pred - truth)^2          per pixel, in [0, 1]
    mse_sum    sum over pixels and channels of (pred - truth)^2           "per frame", paper-style:
                                                                          mse_sum = mse * H * W * C
    psnr       10 log10(1 / mse)   (dB; capped at 100 dB when mse == 0)
    ssim       SSIM of Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), constants
               C1 = (0.01)^2, C2 = (0.03)^2 for data range 1, computed per channel over the 'valid'
               window positions and averaged over positions and channels

The paper does not state its MSE normalisation; our tables report `mse` (per pixel) and the
docs give mse_sum for comparison (summed over a frame: 12288 * mse at 64x64x3, 768 * mse at 16x16x3).

Multi Doors Keys [ours]: what an (imagined) frame shows of the two things the paper says the model
must keep track of, read back from its pixels. The held-keys strip: slot i is read as held when its
mean colour is nearer the slot's key colour than black (`held_keys`). A door in the 5x5 window: read
as open when its cell's pixels are nearer those of an open door of its colour than a locked one
(`doors_open`; the pixel layout and the door pixels come from envs.gridmemory.read_layout).

Reward prediction (Distracting Memory): the predicted reward at the recorded decision step (the step
onto an end square, dataset key `reward_step`) is classified as rewarded when it exceeds 0.5 and
compared with the recorded reward there; accuracy = fraction of episodes classified right.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def to_unit(images) -> np.ndarray:
    """uint8 images -> float64 on [0, 1]; float images are taken as already on [0, 1]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float64) / 255.0
    return images.astype(np.float64)


def mse(pred, truth) -> np.ndarray:
    """(..., H, W, C) -> (...): mean squared error per pixel and channel on [0, 1]."""
    diff = to_unit(pred) - to_unit(truth)
    return np.mean(diff * diff, axis=(-3, -2, -1))


def mse_sum(pred, truth) -> np.ndarray:
    """(..., H, W, C) -> (...): squared error summed over the frame on [0, 1] (paper-style)."""
    diff = to_unit(pred) - to_unit(truth)
    return np.sum(diff * diff, axis=(-3, -2, -1))


def psnr(pred, truth, cap: float = 100.0) -> np.ndarray:
    """(..., H, W, C) -> (...): peak signal-to-noise ratio in dB for data range 1."""
    err = mse(pred, truth)
    with np.errstate(divide="ignore"):
        value = 10.0 * np.log10(1.0 / err)
    return np.minimum(value, cap)


def _gaussian(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()  # (size,), sums to 1


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter over the 'valid' positions: x (N, 1, H, W) -> (N, 1, H-k+1, W-k+1)."""
    k = len(g)
    return F.conv2d(F.conv2d(x, g.reshape(1, 1, k, 1)), g.reshape(1, 1, 1, k))


def ssim(pred, truth, size: int = 11, sigma: float = 1.5, chunk: int = 256) -> np.ndarray:
    """(..., H, W, C) -> (...): mean structural similarity on [0, 1] (see module docstring).
    The window is applied as two 1-D passes (the 2-D float64 convolution is ~100x slower on CPU)."""
    a, b = to_unit(pred), to_unit(truth)
    lead, (H, W, C) = a.shape[:-3], a.shape[-3:]
    a, b = a.reshape(-1, H, W, C), b.reshape(-1, H, W, C)
    g, c1, c2, out = _gaussian(size, sigma), 0.01 ** 2, 0.03 ** 2, []
    for s in range(0, len(a), chunk):  # bounded memory for long videos
        x = torch.from_numpy(a[s:s + chunk]).permute(0, 3, 1, 2).reshape(-1, 1, H, W)
        y = torch.from_numpy(b[s:s + chunk]).permute(0, 3, 1, 2).reshape(-1, 1, H, W)
        mu_x, mu_y = _blur(x, g), _blur(y, g)
        var_x = _blur(x * x, g) - mu_x ** 2
        var_y = _blur(y * y, g) - mu_y ** 2
        cov = _blur(x * y, g) - mu_x * mu_y
        v = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
        out.append(v.mean((-3, -2, -1)).reshape(-1, C).mean(-1))  # (n,) mean over channels
    return torch.cat(out).reshape(lead).numpy()


def image_scores(pred, truth) -> dict[str, np.ndarray]:
    """All image scores of frames (..., H, W, C): {'mse', 'mse_sum', 'psnr', 'ssim'} each (...)."""
    return {"mse": mse(pred, truth), "mse_sum": mse_sum(pred, truth), "psnr": psnr(pred, truth),
            "ssim": ssim(pred, truth)}


def region_mse(pred, truth, mask) -> np.ndarray:
    """(..., H, W, C) -> (...): mean squared error on [0, 1] over the pixels where mask (H, W) is True."""
    diff = to_unit(np.asarray(pred)[..., mask, :]) - to_unit(np.asarray(truth)[..., mask, :])
    return np.mean(diff * diff, axis=(-2, -1))


def held_keys(frames, labels, colours) -> np.ndarray:
    """frames uint8 (..., H, W, 3), labels (H, W) with strip slot i marked i, colours (K, 3) RGB of
    the slots -> bool (..., K): slot i read as held (mean colour nearer colours[i] than black)."""
    frames, out = np.asarray(frames), []
    for i, rgb in enumerate(np.asarray(colours, np.float64) / 255.0):
        mean = to_unit(frames[..., labels == i, :]).mean(-2)  # (..., 3)
        out.append(((mean - rgb) ** 2).sum(-1) < (mean ** 2).sum(-1))
    return np.stack(out, -1)


def doors_open(frames, agent, doors, cells, opened, locked, view: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Which doors a frame shows open, and which it shows at all.
    frames uint8 (N, H, W, 3); agent int (N, 2): the agent's cell (x, y), at the window's centre;
    doors int (K, 2): each door's cell; cells int (view * view, n): the flat pixel indices of window
    cell dx + view * dy; opened, locked uint8 (N, K, n, 3): each door's pixels when open / locked.
    Returns (open bool (N, K): the pixels nearer the open door's, visible bool (N, K): the door is in
    the window; `open` is meaningless where not visible)."""
    N, H, W, C = frames.shape
    d = np.asarray(doors)[None] - np.asarray(agent)[:, None] + view // 2  # (N, K, 2): window cell
    visible = ((d >= 0) & (d < view)).all(-1)
    index = np.where(visible, d[..., 0] + view * d[..., 1], 0)  # (N, K)
    pixels = to_unit(frames.reshape(N, H * W, C)[np.arange(N)[:, None, None], cells[index]])  # (N, K, n, C)
    to_open = ((pixels - to_unit(opened)) ** 2).sum((-2, -1))
    to_locked = ((pixels - to_unit(locked)) ** 2).sum((-2, -1))
    return to_open < to_locked, visible


def decision_step(reward_step) -> int:
    """The index of the scored step of an episode: the first True of `reward_step` (T,)."""
    idx = np.flatnonzero(np.asarray(reward_step))
    if len(idx) == 0:
        raise ValueError("episode has no recorded decision step (reward_step is all False)")
    return int(idx[0])


def reward_correct(pred_reward, reward, reward_step, threshold: float = 0.5) -> bool:
    """Is the predicted reward (T,) right at the recorded decision step? (binary reward)"""
    t = decision_step(reward_step)
    return bool((float(pred_reward[t]) > threshold) == (float(reward[t]) > threshold))


def accuracy(correct) -> float:
    """Fraction of True in a list of per-episode outcomes."""
    correct = np.asarray(correct, dtype=bool)
    return float(correct.mean()) if correct.size else float("nan")


def revisit_mask(pose, phase, radius: float = 0.5, angle: float = 0.35) -> np.ndarray:
    """(T,) bool: query frames (phase 1) whose pose (x, z, heading) is within `radius` units and
    `angle` radians of some context pose (phase 0): views the context already showed."""
    pose, phase = np.asarray(pose, np.float64), np.asarray(phase)
    ctx, qry = pose[phase == 0], pose[phase == 1]  # (Tc, 3), (Tq, 3)
    near = np.linalg.norm(qry[:, None, :2] - ctx[None, :, :2], axis=-1) <= radius  # (Tq, Tc)
    turn = np.abs((qry[:, None, 2] - ctx[None, :, 2] + np.pi) % (2 * np.pi) - np.pi) <= angle
    mask = np.zeros(len(pose), bool)
    mask[np.flatnonzero(phase == 1)] = (near & turn).any(1)
    return mask
