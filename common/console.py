"""What a run prints: a header before the first step (stdout) and one progress line (stderr).

The header names the task, backbone, device, sizes, parameter counts, where the outputs go, whether
the run resumes, and the TensorBoard command. The progress line shows the phase (prefill, training,
evaluation), env steps/s and updates/s over the last minute, and the time left, estimated from the
time measured per env step, per update and per evaluation (none before the first update).
"""
from __future__ import annotations

import collections
import pathlib
import sys
import time

import torch


def count(module: torch.nn.Module) -> str:
    """Parameter count, e.g. '9.84M', '310.5k'."""
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}k"


def tensorboard_command(logdir) -> str:
    """`<venv>/bin/tensorboard --logdir <logdir>`, paths relative to the working folder."""
    exe = pathlib.Path(sys.executable).parent / "tensorboard"
    return f"{_short(exe) if exe.exists() else 'tensorboard'} --logdir {_short(logdir)}"


def _short(path) -> str:
    path = pathlib.Path(path)
    try:
        return str(path.absolute().relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


def describe_device(device: torch.device) -> str:
    threads = torch.get_num_threads()
    name = f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    return f"{name}, {threads} CPU thread{'s' if threads != 1 else ''}"


def size_rows(config, device: torch.device) -> list[tuple[str, str]]:
    """The size block that applies, why, and the sizes that matter most for speed."""
    from common.config import AUTO_SIZE
    auto = AUTO_SIZE.get((device.type, config.mode), "default")
    offline, cpu = config.mode == "offline", device.type != "cuda"
    runs = f"{'offline runs' if offline else 'runs'} on {'a CPU' if cpu else 'CUDA'}"
    if config.size == auto:
        why = (f"the size for {runs} (CPU: cpu, offline memory_cpu; CUDA: the DreamerV3-S "
               "defaults); choose with --configs <size block> or --size")
    else:
        why = f"named on the command line ({runs} get {auto} otherwise)"
    w = config.wm
    latents = (f"{w.stoch}x{w.classes} categorical" if w.latent == "categorical"
               else f"{w.stoch} gaussian")
    cnn = f"CNN depth {w.cnn_depth}" if w.cnn_keys else "no image (wm.cnn_keys '')"
    return [("size", f"{config.size}: {why}"),
            ("", f"d_model {w.d_model}, latents {latents}, {cnn}")]


def header(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows) + 2
    return "\n".join(f"{k:<{width}}{v}" for k, v in rows)


def online_header(config, agent, device, logdir, start: str, updates_per_step: float) -> str:
    """Header of main.py's agent loop. start: 'a new run' or the resume line."""
    from envs import parse_task
    t, r = config.train, config.run
    per = f"1 update per {1 / updates_per_step:.3g} env steps" if updates_per_step else "no updates"
    rows = [("task", f"{config.task} (env family {parse_task(config.task)[0]}), "
                     f"{config.steps} env steps (the first {t.prefill} with a random policy)"),
            ("backbone", config.backbone), ("device", describe_device(device)),
            *size_rows(config, device),
            ("", f"batch {t.batch_size} x {t.seq_len} steps, train ratio {t.train_ratio:g} "
                 f"({per})"),
            ("parameters", f"world model {count(agent.wm)}, actor {count(agent.ac.actor)}, "
                           f"critic {count(agent.ac.critic)}"),
            ("cadence", f"every {r.eval_every} env steps an evaluation (videos every "
                        f"{r.video_every}), checkpoint every {r.checkpoint_every}, "
                        f"log every {r.log_every}"),
            ("logdir", f"{logdir} (config.yaml, metrics.jsonl, videos/, checkpoint.pt)"),
            ("start", start), ("tensorboard", tensorboard_command(logdir))]
    return header(rows)


def offline_header(config, wm, device, logdir, start: str, dataset: str, folder: str,
                   window: int) -> str:
    """Header of memory/train.py's offline world-model training."""
    o, t = config.offline, config.train
    rows = [("dataset", f"{dataset} in {folder} ({config.memory.episodes} episodes, "
                        f"{o.test_episodes} held out)"),
            ("backbone", config.backbone), ("device", describe_device(device)),
            *size_rows(config, device),
            ("", f"batch {t.batch_size} rows x {window} steps "
                 f"{f'in chunks of {o.chunk}' if o.chunk else 'in one pass'}"),
            ("parameters", f"world model {count(wm)}"),
            ("cadence", f"{o.updates} updates: evaluation every {o.eval_every} and at the end, "
                        f"checkpoint every {o.checkpoint_every}, log every {o.log_every}"),
            ("logdir", f"{logdir} (config.yaml, metrics.jsonl, eval/, videos/, checkpoint.pt)"),
            ("start", start), ("tensorboard", tensorboard_command(logdir))]
    return header(rows)


def clock(seconds: float) -> str:
    """3725 -> '1:02:05', 65 -> '1:05', beyond two days '7.6 days'."""
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class Progress:
    """The run's status line. `lap(kind, n)` charges the time since the previous lap to kind ('env',
    'update' or 'eval') done n times; `show(position, updates, phase)` redraws (throttled).

    total, start: positions in `unit`s (env steps, or updates offline); updates_per_unit: updates
    due per unit (online: train_ratio / (batch x length); offline: 1, the unit is the update);
    eval_every: units between evaluations. Disabled, it only keeps the clock (no output)."""

    def __init__(self, total: int, start: int, *, unit: str, updates_per_unit: float,
                 eval_every: int, enabled: bool = True):
        self.total, self.unit, self.eval_every = total, unit, eval_every
        self.per_unit = updates_per_unit
        self.time = dict.fromkeys(("env", "update", "eval"), 0.0)
        self.done = dict.fromkeys(("env", "update", "eval"), 0)
        self.notes: dict[str, str] = {}
        self._last = time.perf_counter()
        self._recent = collections.deque()  # (time, position, updates) of the last minute or more
        self._shown, self._phase, self.bar = 0.0, "", None
        self.enabled, self.start = enabled, start
        self.interval = 0.5 if sys.stderr.isatty() else 60.0  # a log file gets a line a minute

    def lap(self, kind: str, n: int = 1) -> None:
        now = time.perf_counter()
        self.time[kind] += now - self._last
        self.done[kind] += n
        self._last = now

    def remaining(self, position: int) -> float | None:
        """Seconds left: units left x (env time per unit + updates per unit x time per update) +
        evaluations left x time per evaluation; None until an update has been timed."""
        if not self.done["update"]:
            return None
        left = max(self.total - position, 0)
        mean = {k: self.time[k] / self.done[k] if self.done[k] else 0.0 for k in self.time}
        every = self.eval_every
        evals = self.total // every - position // every if every else 0
        return left * (mean["env"] + self.per_unit * mean["update"]) + evals * mean["eval"]

    def show(self, position: int, updates: int, phase: str) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if phase == self._phase and now - self._shown < self.interval:
            return
        if self.bar is None:  # made at the first show: nothing is drawn before the header
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, initial=self.start, unit=self.unit, file=sys.stderr,
                            dynamic_ncols=True, mininterval=self.interval,
                            delay=1e-9,  # nothing drawn before the description is set
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
                                       "{unit}s [{elapsed}{postfix}]")
        self._recent.append((now, position, updates))
        while len(self._recent) > 1 and now - self._recent[1][0] >= 60:  # keep at least a minute
            self._recent.popleft()
        t0, p0, u0 = self._recent[0]
        parts = []
        if now - t0 > 1:
            if self.unit != "update":
                parts.append(f"{(position - p0) / (now - t0):.3g} {self.unit}s/s")
            parts.append(f"{(updates - u0) / (now - t0):.3g} updates/s")
        if self.done["update"]:
            parts.append(f"{self.time['update'] / self.done['update']:.3g} s/update")
        left = self.remaining(position)
        parts.append(f"{clock(left)} left" if left is not None else "time left: after the first "
                     "updates")
        parts += [f"{k} {v}" for k, v in self.notes.items()]
        self.bar.set_description_str(phase, refresh=False)
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.update(position - self.bar.n)
        self.bar.refresh()
        self._shown, self._phase = now, phase

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
