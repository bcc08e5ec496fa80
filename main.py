"""Dreamer-style agent with a swappable world-model backbone (S4WM, S5WM, RSSM-TBTT, TSSM-XL).

    python main.py --configs miniworld s4wm [--key value ...]
    torchrun --nproc_per_node N main.py --configs ...      # data parallel over N processes

The loop, per iteration: act in the environments -> store the step in replay -> update the world
model and the actor-critic (train_ratio replayed steps per env step) -> evaluate -> log -> checkpoint.
Rerunning the same command resumes the run in the same logdir. A logdir with a run's results but
no checkpoint.pt (e.g. committed results) is never trained over (common/cli.py unresumable).

Data parallel (common/parallel.py): every rank runs this loop on its own env workers (own seed) and
its own replay shard; updates average gradients over ranks. `step` counts env steps of all ranks.
Only rank 0 evaluates and writes logs, videos and checkpoints; every rank resumes from it.

Exit status: 0 done; 2 a user's mistake or a stopped run (one line on stderr: a bad value or file,
a full disk, non-finite updates, a diverged network), the last good checkpoint kept; 130 / 143
stopped by SIGINT / SIGTERM after saving; 1 a bug (with its traceback).
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from agent.agent import build_agent
from agent.experience import Collector, evaluate, openloop_video
from common import checkpoint, interrupt, parallel
from common.cli import fail, parse, prepare_logdir, storage_failure
from common.config import ConfigError
from common.console import Progress, online_header
from common.health import Diverged, Health
from common.logger import Logger
from common.resources import check_memory
from common.run import guarded, load_checkpoint, restore
from common.schedule import Every, Ratio
from envs import env_seed, parse_task
from replay.buffer import ChunkMismatch

# what an online checkpoint holds (checked on load: one line for a missing or mistyped field)
FIELDS = {"agent": dict, "step": int, "updates": int, "ratio_done": int, "rng": dict,
          "sampler": dict}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        fail(f"device '{name}' requested but CUDA is not available (choices here: auto, cpu)")
    return torch.device(name)


def offline_name(config) -> str:
    """Default run name of an offline memory run: offline_<dataset>, e.g. offline_four_rooms.
    The task must be of the dataset's env family: offline training never runs the task's env, so
    a task of another family would train on a dataset the command does not name (within the
    family, memory.* picks the size: --memory.width 200 with the distracting_memory block)."""
    from common.config import ConfigError
    from memory.collect import Spec
    try:
        spec = Spec.from_config(config)
    except ConfigError as e:
        fail(str(e))
    if parse_task(config.task)[0] != spec.family:
        fail(f"mode offline trains on the memory dataset memory.* describes ({spec.name}, a "
             f"{spec.family} dataset), not on task {config.task}: use a memory block (two_rooms, "
             f"four_rooms_teleport, distracting_memory, multi_doors_keys, memory_maze_probe, "
             f"...) or --mode online")
    return "offline_" + spec.name


def main(argv=None) -> None:
    interrupt.install()  # Ctrl-C and SIGTERM end in a checkpoint at the loop's next safe point
    config = parse(sys.argv[1:] if argv is None else argv)
    try:
        parse_task(config.task)  # an unknown task fails here in one line, not inside a worker
    except ValueError as e:
        fail(str(e))
    if config.threads:
        torch.set_num_threads(config.threads)
    device = parallel.init(pick_device(config.device))  # joins the process group under torchrun
    finished = False
    try:
        if config.mode == "offline":  # a memory benchmark: the world model alone, on its dataset
            from memory.train import run as run_offline
            run_offline(config, offline_name(config), device)
        else:
            run(config, device)
        finished = True
    except KeyboardInterrupt:  # the checkpoint is saved by now (common/interrupt.py)
        raise SystemExit(interrupt.exit_code()) from None
    except (Diverged, checkpoint.NonFiniteCheckpoint, ChunkMismatch) as e:
        fail(str(e))
    except OSError as e:  # a full disk, a read-only folder: the user's to fix, not a bug
        message = storage_failure(e)
        if message is None:
            raise
        fail(message)
    finally:
        parallel.close(wait=finished)


def check_sizes(config, ranks: int, B: int, T: int) -> None:
    """Exit with one line when prefill or replay cannot hold what the updates sample."""
    if config.train.prefill < ranks * config.env.envs * T:
        fail(f"train.prefill ({config.train.prefill}) must be >= processes x env.envs x "
             f"train.seq_len ({ranks * config.env.envs * T}) so that every worker's stream holds "
             f"a whole sequence")
    if config.replay.capacity < B * T:
        fail(f"replay.capacity ({config.replay.capacity}) must be >= train.batch_size x "
             f"train.seq_len ({B * T}) of this process: a batch could never be sampled")


def run(config, device) -> None:
    """The online loop: act, store, update, evaluate, log, checkpoint (the module docstring)."""
    OnlineRun(config, device).train()


class OnlineRun:
    """One online run on this rank: its agent, env workers and replay (Collector), logger, and the
    counters a checkpoint holds (FIELDS). Built from <logdir>/checkpoint.pt when there is one."""

    def __init__(self, config, device):
        self.config, self.ranks, self.main = config, parallel.world_size(), parallel.is_main()
        self.B, self.T = parallel.batch_size(config), config.train.seq_len
        self.check(device)  # before building or writing anything
        self.logdir = prepare_logdir(config, write=self.main)
        parallel.all_true(True)  # every rank waits for rank 0's lock on the logdir: none touches it first
        checkpoint.seed_everything(config.seed)  # the same on every rank: identical initial weights
        ckpt = load_checkpoint(self.logdir, FIELDS)
        self.step = int(ckpt["step"]) if ckpt is not None else 0
        # Rank r > 0 has its own seed; its RNG states are not in the checkpoint (only rank 0's
        # are), so a resumed rank r > 0 re-derives them from the step it resumes at.
        seed = parallel.rank_seed(config.seed)
        if ckpt is not None and not self.main:
            seed = env_seed(seed, self.step)
        # env workers + replay (loads what is on disk: <logdir>/replay, rank r > 0 replay/rank<r>)
        try:  # an observation choice (wm.cnn_keys / wm.mlp_keys) the task lacks: one line
            self.collector = Collector(config, self.logdir, self.step, seed=seed,
                                       batch_size=self.B, rank=parallel.rank())
        except ConfigError as e:
            fail(str(e))
        c = self.collector
        self.agent = build_agent(config, c.act_dim, c.discrete, device, c.spaces)
        self.logger = Logger(self.logdir, enabled=self.main, resume_step=self.step)
        self.updates, ratio_done, self.pretrain = 0, 0, config.train.pretrain
        start = "a new run" if ckpt is None else self.resume(ckpt)
        if ckpt is not None:
            self.updates, ratio_done = int(ckpt["updates"]), int(ckpt["ratio_done"])
            self.pretrain = 0
        if not self.main:
            checkpoint.seed_everything(seed)  # this rank's own sampling noise from here on
        parallel.broadcast_module(self.agent)  # rank 0's weights everywhere; a barrier before saves
        self.schedule(ratio_done)
        self.ready, self.carried = False, None
        self.health = Health(config.run.nan_patience, self.logdir)  # when the weights may be saved
        self.timer = {"t": time.time(), "step": self.step, "updates": self.updates}
        if self.main:
            print(online_header(config, self.agent, device, self.logdir, start,
                                self.ratio.per_step), flush=True)
        self.progress = Progress(config.steps, self.step, unit="step",
                                 updates_per_unit=self.ratio.per_step,
                                 eval_every=config.run.eval_every,
                                 enabled=config.run.progress and self.main)

    def check(self, device) -> None:
        """Sizes and memory, each a one-line exit when they cannot work."""
        check_sizes(self.config, self.ranks, self.B, self.T)
        if self.ranks > 1 and self.main:
            print(f"data parallel: {self.ranks} processes x batch {self.B} = global batch "
                  f"{self.ranks * self.B}")
        check_memory(self.config, device, batch=self.B, ranks=self.ranks,
                     build=lambda dev: build_agent(self.config, 1, True, dev))

    def schedule(self, ratio_done: int) -> None:
        """When to log, evaluate, film and save (by env step, so they resume), and how many
        updates are due: train_ratio replayed steps (of all ranks) per env step."""
        run, step = self.config.run, self.step
        self.should_log, self.should_eval = Every(run.log_every, step), Every(run.eval_every, step)
        self.should_video = Every(run.video_every, step)
        self.should_save = Every(run.checkpoint_every, step)
        self.ratio = Ratio(self.config.train.train_ratio, self.ranks * self.B * self.T, ratio_done)

    def resume(self, ckpt) -> str:
        """Load the checkpoint into the agent (and, on rank 0, the RNGs and the replay sampler)."""
        def apply():
            self.agent.restore(ckpt["agent"])
            if self.main:
                checkpoint.set_rng_state(ckpt["rng"])
                self.collector.sampler_state(ckpt["sampler"])
        restore(self.logdir, apply)
        who = f"rank {parallel.rank()}: " if self.ranks > 1 else ""
        start = (f"{who}resuming {self.logdir} at step {self.step} ({int(ckpt['updates'])} "
                 f"updates, {len(self.collector.replay)} steps in replay)")
        if not self.main:
            print(start)  # rank 0 says it in the header
        return start

    def train(self) -> None:
        """The algorithm. What was collected is never lost, even when stopping on NaN; the weights
        are saved only from a completed, good update (common/health.py)."""
        prefill = self.config.train.prefill
        with guarded(lambda: f"step {self.step}", self.health, self.save,
                     before=[self.collector.replay.flush],
                     after=[self.collector.close, lambda: self.logger.write(self.step),
                            self.logger.close, self.progress.close]):
            while self.step < self.config.steps:
                interrupt.check()
                self.collect(random_policy=self.step < prefill)  # 1. act in every env worker
                if self.replay_ready(prefill):  # 2. train_ratio replayed steps per env step
                    self.update(self.ratio(self.step - prefill) + self.pretrain)
                    self.pretrain = 0
                if self.step >= prefill and self.should_eval(self.step) and self.main:
                    self.evaluate()  # 3. greedy episodes, open-loop predictions
                if self.should_log(self.step):  # 4. log and checkpoint
                    self.log()
                if self.should_save(self.step) and self.health.saveable:  # never bad over good
                    self.save()
                self.progress.show(self.step, self.updates,
                                   "prefill" if self.step < prefill else "training")

    def collect(self, random_policy: bool) -> None:
        """One step in every env worker of every rank (a random policy until the prefill)."""
        steps, acted = self.collector.step(self.agent, random_policy, self.logger)
        self.step += steps * self.ranks
        if not acted:  # a non-finite policy counts as a bad update
            self.health.fault(self.step, "non-finite policy", "random actions instead")
        self.progress.lap("env", self.collector.num_envs * self.ranks)

    def replay_ready(self, prefill: int) -> bool:
        """Past the prefill with a whole batch in every rank's replay (else a rank would wait
        alone in the update); once true, stays true."""
        self.ready = self.ready or (self.step >= prefill and parallel.all_true(
            len(self.collector.replay) >= self.B * self.T))
        return self.ready

    def update(self, due: int) -> None:
        """`due` updates of the world model and the actor-critic on replayed batches."""
        for _ in range(due):
            interrupt.check()
            batch, reset = self.collector.training_batch(self.B, self.T)
            self.health.begin()  # from here until end(), no checkpoint may be written
            metrics, self.carried, ok = self.agent.update(batch, self.carried, reset)
            self.health.end(ok, self.step)  # stops the run after run.nan_patience in a row
            if not ok:  # (carried is None now)
                self.logger.scalar("train/nonfinite_updates", 1)
                continue
            if not self.config.train.carry_state:  # else each rank carries its own streams' states
                self.carried = None
            self.updates += 1
            self.logger.scalars(metrics, "train/")
        self.progress.lap("update", due)

    def evaluate(self) -> None:
        """Greedy episodes (a video every run.video_every) and the world model's open-loop video."""
        self.progress.show(self.step, self.updates, "evaluation")
        scores = evaluate(self.config, self.agent, self.logger, self.step,
                          self.should_video(self.step))
        if scores is None:
            self.health.fault(self.step, "non-finite policy", "evaluation skipped")
        else:
            self.logger.scalars(scores, "eval/")
        if len(self.collector.replay) >= self.T:
            openloop_video(self.config, self.agent, self.collector, self.logger, self.step)
        self.progress.lap("eval")

    def log(self) -> None:
        """Every rank's episodes and losses pooled, with speeds and the replay size."""
        self.logger.pool(parallel.gather_lists)
        now, last = time.time(), self.timer
        self.logger.scalar("fps/env", (self.step - last["step"]) / (now - last["t"]))
        self.logger.scalar("fps/updates", (self.updates - last["updates"]) / (now - last["t"]))
        self.logger.scalar("replay/size", len(self.collector.replay))
        means = self.logger.write(self.step)
        self.timer = {"t": now, "step": self.step, "updates": self.updates}
        if "episode/return" in means:
            self.progress.notes["return"] = f"{means['episode/return']:.3g}"

    def save(self) -> None:
        self.collector.replay.flush()  # every rank flushes its own shard
        if not self.main:
            return
        checkpoint.save(self.logdir / "checkpoint.pt", {
            "agent": self.agent.checkpoint(), "step": self.step, "updates": self.updates,
            "ratio_done": self.ratio.done, "rng": checkpoint.rng_state(),
            "sampler": self.collector.sampler_state()})


if __name__ == "__main__":
    main()
