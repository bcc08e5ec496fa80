"""Outputs of a run: TensorBoard scalars and videos, <logdir>/metrics.jsonl, mp4 files.

Metric names are stable (documented in the README): episode/*, eval/*, train/*, fps/*.
TensorBoard videos go through SummaryWriter.add_video, which needs `moviepy.editor` (moviepy 1.x,
pinned); mp4 files are written with moviepy's ImageSequenceClip (ffmpeg from imageio-ffmpeg).
"""
from __future__ import annotations

import errno
import json
import os
import pathlib

import numpy as np

from common.cli import naming

# moviepy.editor (imported by SummaryWriter.add_video) initialises pygame/SDL; on a headless machine
# SDL then complains about audio devices and XDG_RUNTIME_DIR. Dummy drivers, only where unset.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


class Logger:
    """resume_step: the step of the checkpoint a run resumes from (0 without one). What a killed
    run logged after it is dropped (metrics.jsonl rewritten, TensorBoard events purged), so the
    logs never repeat or reorder steps."""

    def __init__(self, logdir, enabled: bool = True, fps: int = 16,
                 resume_step: int | None = None):
        self.logdir = pathlib.Path(logdir)
        self.enabled, self.fps = enabled, fps
        self._writer = None
        self._scalars: dict[str, list[float]] = {}
        self._purge = None
        if enabled and resume_step is not None:
            truncate_jsonl(self.logdir / "metrics.jsonl", resume_step)
            self._purge = resume_step + 1

    @property
    def writer(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(str(self.logdir), max_queue=1000, flush_secs=30,
                                         purge_step=self._purge)
        return self._writer

    def scalar(self, name: str, value) -> None:
        self._scalars.setdefault(name, []).append(float(value))

    def scalars(self, metrics: dict, prefix: str = "") -> None:
        for key, value in metrics.items():
            self.scalar(prefix + key, value)

    def pool(self, gather) -> None:
        """Replace what was accumulated by `gather(accumulated)`, e.g. common.parallel.gather_lists:
        then rank 0 logs the episodes and losses of every rank."""
        self._scalars = gather(self._scalars)

    def write(self, step: int) -> dict:
        """Average what was accumulated since the last write, log it at `step` and return it."""
        means = {k: float(np.mean(v)) for k, v in self._scalars.items() if v}
        self._scalars.clear()
        if not self.enabled or not means:
            return means
        for key, value in means.items():
            self.writer.add_scalar(key, value, step)
        path = self.logdir / "metrics.jsonl"
        try:
            with open(path, "a") as f:
                f.write(json.dumps({"step": step, **means}) + "\n")
        except OSError as e:
            raise naming(e, path) from None
        self.writer.flush()
        return means

    def video(self, name: str, frames: np.ndarray, step: int) -> pathlib.Path | None:
        """frames uint8 (T, H, W, C) -> <logdir>/videos/<name>_<step>.mp4 and a TensorBoard video."""
        if not self.enabled:
            return None
        frames = np.asarray(frames, dtype=np.uint8)
        path = self.logdir / "videos" / f"{name.replace('/', '_')}_{step:09d}.mp4"
        write_mp4(path, frames, self.fps)
        tb = frames.transpose(0, 3, 1, 2)[None]  # (1, T, C, H, W) as add_video wants
        self.writer.add_video(name, tb, step, fps=self.fps)
        self.writer.flush()
        return path

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def truncate_jsonl(path, last_step: int) -> None:
    """Keep the rows of a metrics.jsonl up to `last_step` (and drop a line cut by a kill);
    rewritten atomically, only when something goes."""
    path = pathlib.Path(path)
    if not path.is_file():  # absent, or not a file we wrote (appending to it will tell)
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    keep = []
    for line in lines:
        try:
            row = json.loads(line)
            if row["step"] <= last_step and line.endswith("\n"):
                keep.append(line)
        except (ValueError, TypeError, KeyError):
            pass
    if len(keep) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)


def write_mp4(path, frames: np.ndarray, fps: int) -> None:
    """Atomically write frames uint8 (T, H, W, C) as an H.264 mp4 (even sizes are padded)."""
    from moviepy.video.io.ImageSequenceClip import ImageSequenceClip
    T, H, W, C = frames.shape
    frames = np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)))  # yuv420p needs even sizes
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    clip = ImageSequenceClip(list(frames), fps=fps)
    try:
        clip.write_videofile(str(tmp), codec="libx264", audio=False, logger=None,
                             ffmpeg_params=["-pix_fmt", "yuv420p"])
    except OSError as e:  # ffmpeg died (a full disk, say): moviepy's message is many lines
        tmp.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or ["?"])[0]
        raise OSError(errno.EIO, f"ffmpeg could not write it ({first})", str(path)) from None
    os.replace(tmp, path)


def openloop_grid(truth: np.ndarray, model: np.ndarray) -> np.ndarray:
    """truth, model uint8 (B, T, H, W, C) -> (T, 3H, B*W, C): rows truth / model / |error|."""
    error = np.abs(truth.astype(np.int16) - model.astype(np.int16)).astype(np.uint8)
    rows = np.concatenate([truth, model, error], 2)  # (B, T, 3H, W, C)
    return np.concatenate(list(rows), 2)  # (T, 3H, B*W, C)
