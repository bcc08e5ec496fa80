"""Offline world-model training on a memory-benchmark dataset (paper Sec. 3), run by main.py when
`mode: offline` (every memory block sets it):

    python main.py --configs four_rooms s4wm          # dataset made if missing, trained, evaluated

1. The dataset (memory.collect, settings from the `memory` section) is generated if incomplete, then
   read into memory; the last `offline.test_episodes` of its `memory.episodes` indices are held out
   for evaluation (by index, whatever is readable: a test episode is never trained on).
2. An update trains on `train.batch_size` rows of `offline.window` steps (0: the longest episode).
   A row is an episode from its first frame, continued by further random episodes when shorter than
   the window (is_first marks each start), so the context and its query are always in one row.
   By default (`offline.chunk` 0) the whole row is one parallel pass: one loss, backward and AdamW
   step, and each backbone limits its own gradient horizon as its name says: RSSM-TBTT detaches its
   state every `rssm.tbtt_length` steps, TSSM-XL attends to `tssm.mem_len` steps per layer, S4WM and
   S5WM see the whole row (the paper's protocol; docs/memory.md, Protocol). `offline.chunk` > 0 cuts
   the row into chunks of that many steps, the state carried detached into the next one (TBTT for
   every backbone: memory-bounded, but it caps S4WM/S5WM at the chunk too).
3. Every `offline.eval_every` updates and at the end: memory.evaluate on the test episodes ->
   <logdir>/eval/metrics.json (latest), eval/metrics_<updates>.json, eval/prediction.npz (episode 0:
   truth and prediction) and a video truth / model / error; scalars go to TensorBoard and
   metrics.jsonl with step = updates.
   Training stops after `offline.updates`, or earlier once the mean training loss of an evaluation
   window improves on the one before by less than the fraction `offline.plateau` (the loss has
   flattened); the result records the loss per window, the training seconds and whether it stopped
   at a plateau.
4. Checkpoints (model, optimiser, updates, RNG, training seconds, loss windows) every `offline.checkpoint_every` updates and at exit
   (Ctrl-C included), only from a completed, finite update (common/health.py); rerunning the
   same command resumes. Rows are drawn from (seed, update index,
   rank), so a resumed run sees the same rows as an uninterrupted one. A finished run whose
   checkpoint is gone (committed results on a fresh clone) is left as it is (finished()).
Data parallel under torchrun (common/parallel.py): rank 0 makes the dataset, every rank draws its rows
from its own contiguous slice of the training episodes (parallel.shard), gradients are averaged before
clipping and the step; only rank 0 evaluates and writes logs, videos and checkpoints.
"""
from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np
import torch

from common import checkpoint, interrupt, parallel
from common.cli import check_logdir, fail, prepare_logdir
from common.config import ConfigError
from common.console import Progress, offline_header
from common.health import Health, adamw, check_growth, load_optimizer, optimizer_step
from common.logger import Logger, openloop_grid
from common.resources import check_memory
from common.run import guarded, load_checkpoint, restore
from common.tree import detach
from memory import evaluate as evaluation
from memory.collect import Spec, collect, dataset_folder, episode_path
from memory.episodes import MODEL_KEYS
from replay import to_torch
from replay.storage import read_chunk
from world_models import build_world_model

FIELDS = {"trainer": dict, "updates": int, "rng": dict}  # what a checkpoint holds (checked)


def load_episodes(folder: str, count: int, test: int) -> tuple[list[dict], list[dict]]:
    """(train, test) episodes of the dataset's indices [0, count): test are the last `test`
    indices, train the others; an unreadable file is left out of its part (one warning)."""
    def read(indices):
        return [e for e in (read_chunk(episode_path(folder, i)) for i in indices) if e is not None]
    train, held_out = read(range(count - test)), read(range(count - test, count))
    if not train or not held_out:
        part = "test" if train else "training"
        raise ConfigError(f"dataset {folder} holds no readable {part} episodes among indices "
                          f"[0, {count}) (offline.test_episodes={test})")
    return train, held_out


def draw_rows(episodes: list[dict], rng: np.random.Generator, batch: int, window: int) -> dict:
    """batch rows of `window` steps {key: (B, window, ...)}: each row an episode from its start,
    continued with further random episodes until it is long enough (see module docstring)."""
    rows = []
    for _ in range(batch):
        parts, n = [], 0
        while n < window:
            e = episodes[rng.integers(len(episodes))]
            parts.append({k: e[k] for k in MODEL_KEYS})
            n += len(e["is_first"])
        rows.append({k: np.concatenate([p[k] for p in parts])[:window] for k in MODEL_KEYS})
    return {k: np.stack([r[k] for r in rows]) for k in MODEL_KEYS}


class Trainer:
    """World model + AdamW; `update` is one row batch in chunks with the state carried."""

    def __init__(self, config, act_dim: int, device):
        self.wm = build_world_model(config, act_dim).to(device)
        c = config.wm
        self.opt = adamw(self.wm.parameters(), lr=c.lr, eps=c.eps, weight_decay=c.weight_decay)
        self.clip, self.chunk, self.device = c.grad_clip, config.offline.chunk, device
        self.params = list(self.wm.parameters())
        self.size = sum(p.numel() for p in self.params)

    def update(self, rows: dict) -> tuple[dict, bool]:
        """Train on rows (numpy (B, W, ...)). Returns (metrics averaged over chunks, all finite)."""
        B, W = rows["is_first"].shape
        state, sums, n = self.wm.initial_state(B), {}, 0
        chunk = self.chunk or W
        for s in range(0, W, chunk):
            data = to_torch({k: v[:, s:s + chunk] for k, v in rows.items()}, self.device)
            loss, metrics, _, state, _ = self.wm.loss(data, state)
            if not parallel.all_true(torch.isfinite(loss)):  # every rank skips, or none
                return {}, False
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            # averaged over ranks, clipped, stepped unless non-finite
            norm, norms = optimizer_step(self.opt, self.params, self.clip)
            if norms is None:
                return {}, False
            check_growth("world model", norms, self.size)  # Diverged: the run stops
            state = detach(state)
            metrics = {**metrics, "grad_norm": norm, "loss": loss.detach()}
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        return {k: v / n for k, v in sums.items()}, True

    def checkpoint(self) -> dict:
        return {"model": self.wm.state_dict(), "opt": self.opt.state_dict()}

    def restore(self, ckpt: dict) -> None:
        self.wm.load_state_dict(ckpt["model"])
        load_optimizer(self.opt, ckpt["opt"])


def evaluation_file(logdir, updates: int | None = None) -> pathlib.Path:
    """Where run_evaluation writes: <logdir>/eval/metrics.json (the latest evaluation), or
    eval/metrics_<updates>.json (the one at `updates`, kept for every evaluation)."""
    name = "metrics.json" if updates is None else f"metrics_{updates:08d}.json"
    return pathlib.Path(logdir) / "eval" / name


def evaluated_at(logdir) -> list[int]:
    """The budgets (updates) at which the run in `logdir` was evaluated, ascending."""
    found = (pathlib.Path(logdir) / "eval").glob("metrics_*.json")
    tails = (p.stem.removeprefix("metrics_") for p in found)
    return sorted(int(t) for t in tails if t.isdigit())


def run_evaluation(config, trainer: Trainer, test: list[dict], logdir, logger: Logger, updates: int,
                   probe_train: list[dict] | None = None, progress: dict | None = None) -> dict:
    """Evaluate on `test`; the probes (memory maze: layout and objects, distracting memory: cue
    colour) are fitted on `probe_train`, the first offline.probe_episodes training episodes.
    `progress` (training seconds so far, loss per evaluation window, plateau reached) is recorded
    in the result."""
    o, m = config.offline, config.memory
    start = time.time()
    summary, curves, video = evaluation.evaluate(
        trainer.wm, test, m.env, query_observe=o.query_observe, batch=o.eval_batch,
        chunk=config.train.seq_len, device=trainer.device, teleport=m.teleport and m.env == "rooms",
        probe_train=probe_train, probe_updates=o.probe_updates, seed=config.seed)
    result = {"updates": updates, "backbone": config.backbone, "dataset": Spec.from_config(config).name,
              "test_episodes": len(test), "query_observe": o.query_observe, "summary": summary,
              "curves": curves, "seconds": time.time() - start, **(progress or {})}
    out = evaluation_file(logdir).parent
    out.mkdir(exist_ok=True)
    for path in (evaluation_file(logdir, updates), evaluation_file(logdir)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, path)
    truth = test[0]["image"][:len(video)]
    tmp = out / "prediction.tmp.npz"
    np.savez_compressed(tmp, truth=truth, prediction=video, updates=updates)
    os.replace(tmp, out / "prediction.npz")
    logger.scalars(summary, "eval/")
    logger.video("eval/imagination", openloop_grid(truth[None], video[None]), updates)
    return result


def run(config, name: str, device) -> None:
    """The offline loop (module docstring); `name` is the default run name."""
    main_rank = parallel.is_main()
    o, B = config.offline, config.train.batch_size
    if o.test_episodes >= config.memory.episodes:  # training only: collection alone may take fewer
        fail(f"config key 'offline.test_episodes' ({o.test_episodes}) must be < memory.episodes "
             f"({config.memory.episodes}): some episodes must be left to train on")
    if config.memory.env == "memory_maze" and o.probe_episodes < 1:
        fail("memory maze evaluation fits its probes on training episodes: offline.probe_episodes "
             f"must be >= 1, got {o.probe_episodes}")
    check_memory(config, device, batch=B,  # before anything is built or written
                 build=lambda dev: build_world_model(config, 1))
    if done := finished(check_logdir(config, name), o):  # e.g. committed results on a fresh clone
        if main_rank:
            print(f"{done}; its checkpoint is not here, so there is nothing to train")
        return
    logdir = prepare_logdir(config, name, write=main_rank)
    ckpt = load_checkpoint(logdir, FIELDS)
    checkpoint.seed_everything(config.seed)  # the same on every rank: identical initial weights
    folder = dataset_folder(config)
    try:
        if main_rank:
            stats = collect(config)  # writes only what is missing; checks the folder's settings
            if stats["written"]:
                print(f"{folder}: wrote {stats['written']} episodes in {stats['seconds']:.0f} s")
        parallel.all_true(True)  # the other ranks wait for the dataset
        train, test = load_episodes(folder, config.memory.episodes, o.test_episodes)
        probe_train = train[:o.probe_episodes]  # before sharding: the same on any world size
        if parallel.world_size() > 1:
            train = list(parallel.shard(train))  # this rank's slice
    except ConfigError as e:
        fail(str(e))
    window = o.window or max(len(e["is_first"]) for e in train)
    trainer = Trainer(config, train[0]["action"].shape[-1], device)
    updates, seconds, windows, start = 0, 0.0, [], "a new run"
    if ckpt is not None:
        def apply():
            trainer.restore(ckpt["trainer"])
            if main_rank:
                checkpoint.set_rng_state(ckpt["rng"])
        restore(logdir, apply)
        updates = int(ckpt["updates"])
        seconds = float(ckpt.get("seconds", 0.0))  # older checkpoints: not recorded
        windows = [float(v) for v in ckpt.get("loss_windows", [])]
        start = f"resuming {logdir} at update {updates}"
        if not main_rank:
            print(start)  # rank 0 says it in the header
    parallel.broadcast_module(trainer.wm)  # rank 0's weights everywhere
    if not main_rank:
        checkpoint.seed_everything(parallel.rank_seed(config.seed) + updates)  # own sampling noise
    print(f"{f'rank {parallel.rank()}: ' if parallel.world_size() > 1 else ''}offline training: "
          f"{len(train)} train / {len(test)} test episodes from {folder}, rows of {window} steps "
          f"{f'in chunks of {o.chunk}' if o.chunk else 'in one pass'}, {o.updates} updates")
    if main_rank:
        print(offline_header(config, trainer.wm, device, logdir, start,
                             Spec.from_config(config).name, folder, window), flush=True)
    logger, last_eval = Logger(logdir, enabled=main_rank, resume_step=updates), _last_eval(logdir)
    health = Health(config.run.nan_patience, logdir, "update")

    def save():
        if not main_rank:
            return
        checkpoint.save(logdir / "checkpoint.pt", {"trainer": trainer.checkpoint(), "updates": updates,
                                                   "rng": checkpoint.rng_state(),
                                                   "seconds": seconds + time.time() - started,
                                                   "loss_windows": windows})

    def progress_info() -> dict:
        return {"train_seconds": seconds + time.time() - started, "loss_windows": windows,
                "plateau": plateaued(windows, o.plateau), "budget": o.updates}

    progress = Progress(o.updates, updates, unit="update", updates_per_unit=1.0,
                        eval_every=o.eval_every, enabled=config.run.progress and main_rank)
    timer = (time.time(), updates)
    started, loss_sum = time.time(), [0.0, 0]  # training time of this call; loss sum, count
    if plateaued(windows, o.plateau):
        print(f"the training loss had flattened at update {updates}: no more updates")
    # the weights are saved only from a completed, good update (common/health.py)
    with guarded(lambda: f"update {updates}", health, save,
                 after=[lambda: logger.write(updates), logger.close, progress.close]):
        while updates < o.updates and not plateaued(windows, o.plateau):
            interrupt.check()  # a Ctrl-C / SIGTERM stops here and saves (common/interrupt.py)
            rows = draw_rows(train, np.random.default_rng([config.seed, updates, parallel.rank()]), B, window)
            health.begin()  # from here until end(), no checkpoint may be written
            metrics, ok = trainer.update(rows)
            updates += 1
            health.end(ok, updates)  # stops the run after run.nan_patience in a row
            progress.lap("update")
            if not ok:
                continue
            logger.scalars(metrics, "train/")
            loss_sum = [loss_sum[0] + metrics["loss"], loss_sum[1] + 1]
            evaluated = updates % o.eval_every == 0
            if evaluated:
                windows.append(loss_sum[0] / loss_sum[1])
                loss_sum = [0.0, 0]
                if main_rank:
                    progress.show(updates, updates, "evaluation")
                    run_evaluation(config, trainer, test, logdir, logger, updates, probe_train,
                                   progress_info())
                    progress.lap("eval")
                last_eval = updates
                if plateaued(windows, o.plateau):
                    print(f"update {updates}: the training loss changed by less than "
                          f"{100 * o.plateau:g}% over the last {o.eval_every} updates: stopping")
            if updates % o.log_every == 0 or evaluated:
                now = time.time()
                logger.scalar("fps/updates", (updates - timer[1]) / (now - timer[0]))
                means = logger.write(updates)
                timer = (now, updates)
                progress.notes["loss"] = f"{means.get('train/loss', float('nan')):.4g}"
            if updates % o.checkpoint_every == 0 and health.saveable:
                save()
            progress.show(updates, updates, "training")
        # the final evaluation (also when a finished run is rerun), of weights that may be saved
        if last_eval != updates and main_rank and health.saveable:
            progress.show(updates, updates, "evaluation")
            run_evaluation(config, trainer, test, logdir, logger, updates, probe_train,
                           progress_info())
            logger.write(updates)


def plateaued(windows: list[float], tolerance: float) -> bool:
    """True when the mean training loss of the last evaluation window improved on the window before
    by less than `tolerance` (a fraction of it); tolerance 0: never (train all offline.updates)."""
    if tolerance <= 0 or len(windows) < 2:
        return False
    return windows[-2] - windows[-1] < tolerance * abs(windows[-2])


def finished(logdir, offline) -> str | None:
    """How the run in `logdir` ended, when its checkpoint is gone and its last evaluation reached
    `offline.updates` or found the loss flat (offline.plateau, recomputed from the loss windows it
    recorded); None otherwise (no checkpoint: no run yet, or one that cannot go on; a checkpoint:
    the run resumes, or ends by itself)."""
    logdir = pathlib.Path(logdir)
    if (logdir / "checkpoint.pt").exists():
        return None
    try:
        last = json.loads(evaluation_file(logdir).read_text())
        updates, windows = int(last["updates"]), [float(v) for v in last.get("loss_windows", [])]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if updates >= offline.updates:
        return f"{logdir}: finished at update {updates} (results in {evaluation_file(logdir)})"
    if plateaued(windows, offline.plateau):
        return (f"{logdir}: stopped at update {updates}, where the training loss had flattened "
                f"(results in {evaluation_file(logdir)})")
    return None


def _last_eval(logdir) -> int | None:
    try:
        return int(json.loads(evaluation_file(logdir).read_text())["updates"])
    except (OSError, ValueError, KeyError):
        return None
