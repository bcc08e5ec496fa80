"""Dreamer-style agent with a swappable world-model backbone (S4WM, S5WM, RSSM-TBTT, TSSM-XL).

    python main.py --configs miniworld s4wm [--key value ...]
    torchrun --nproc_per_node N main.py --configs ...      # data parallel over N processes

The loop, per iteration: act in the environments -> store the step in replay -> update the world
model and the actor-critic (train_ratio replayed steps per env step) -> evaluate -> log -> checkpoint.
Rerunning the same command resumes the run in the same logdir.

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
    ranks, main_rank = parallel.world_size(), parallel.is_main()
    B, T = parallel.batch_size(config), config.train.seq_len
    check_sizes(config, ranks, B, T)
    if ranks > 1 and main_rank:
        print(f"data parallel: {ranks} processes x batch {B} = global batch {ranks * B}")
    check_memory(config, device, batch=B, ranks=ranks,  # before building anything
                 build=lambda dev: build_agent(config, 1, True, dev))
    logdir = prepare_logdir(config, write=main_rank)  # after every check: nothing written before
    checkpoint.seed_everything(config.seed)  # the same on every rank: identical initial weights
    ckpt = load_checkpoint(logdir, FIELDS)
    step = int(ckpt["step"]) if ckpt is not None else 0
    # Rank r > 0 has its own seed; its RNG states are not in the checkpoint (only rank 0's are),
    # so a resumed rank r > 0 re-derives them from the step it resumes at.
    seed = parallel.rank_seed(config.seed)
    if ckpt is not None and not main_rank:
        seed = env_seed(seed, step)
    # env workers + replay (loads what is on disk: <logdir>/replay, rank r > 0 replay/rank<r>)
    try:  # an observation choice (wm.cnn_keys / wm.mlp_keys) the task lacks fails in one line
        collector = Collector(config, logdir, step, seed=seed, batch_size=B, rank=parallel.rank())
    except ConfigError as e:
        fail(str(e))
    agent = build_agent(config, collector.act_dim, collector.discrete, device, collector.spaces)
    logger = Logger(logdir, enabled=main_rank, resume_step=step)
    updates, ratio_done, pretrain, start = 0, 0, config.train.pretrain, "a new run"
    if ckpt is not None:
        def apply():
            agent.restore(ckpt["agent"])
            if main_rank:
                checkpoint.set_rng_state(ckpt["rng"])
                collector.sampler_state(ckpt["sampler"])
        restore(logdir, apply)
        updates, ratio_done = int(ckpt["updates"]), int(ckpt["ratio_done"])
        pretrain = 0
        who = f"rank {parallel.rank()}: " if ranks > 1 else ""
        start = (f"{who}resuming {logdir} at step {step} "
                 f"({updates} updates, {len(collector.replay)} steps in replay)")
        if not main_rank:
            print(start)  # rank 0 says it in the header
    if not main_rank:
        checkpoint.seed_everything(seed)  # this rank's own sampling noise from here on
    parallel.broadcast_module(agent)  # rank 0's weights everywhere (and a barrier before any save)

    def save():
        collector.replay.flush()  # every rank flushes its own shard
        if not main_rank:
            return
        checkpoint.save(logdir / "checkpoint.pt", {
            "agent": agent.checkpoint(), "step": step, "updates": updates,
            "ratio_done": ratio.done,
            "rng": checkpoint.rng_state(), "sampler": collector.sampler_state()})

    should_log, should_eval = Every(config.run.log_every, step), Every(config.run.eval_every, step)
    should_video = Every(config.run.video_every, step)
    should_save = Every(config.run.checkpoint_every, step)
    ratio = Ratio(config.train.train_ratio, ranks * B * T, ratio_done)  # replayed by all ranks
    prefill, ready = config.train.prefill, False
    health = Health(config.run.nan_patience, logdir)  # when the weights may be saved
    carried, timer = None, {"t": time.time(), "step": step, "updates": updates}
    if main_rank:
        print(online_header(config, agent, device, logdir, start, ratio.per_step), flush=True)
    progress = Progress(config.steps, step, unit="step", updates_per_unit=ratio.per_step,
                        eval_every=config.run.eval_every, enabled=config.run.progress and main_rank)
    # what was collected is never lost, even when stopping on NaN; the weights are saved only
    # from a completed, good update (common/health.py)
    with guarded(lambda: f"step {step}", health, save, before=[collector.replay.flush],
                 after=[collector.close, lambda: logger.write(step), logger.close,
                        progress.close]):
        while step < config.steps:
            interrupt.check()
            # 1. collect: one step in every env worker of every rank (random policy until prefill)
            random_policy = step < prefill
            steps, acted = collector.step(agent, random_policy, logger)
            step += steps * ranks
            if not acted:  # a non-finite policy counts as a bad update
                health.fault(step, "non-finite policy", "random actions instead")
            progress.lap("env", collector.num_envs * ranks)

            # 2. update world model + actor-critic, train_ratio replayed steps per env step
            # (every rank must hold a batch, else a rank would wait alone in the update)
            ready = ready or (step >= prefill and parallel.all_true(len(collector.replay) >= B * T))
            if ready:
                due, pretrain = ratio(step - prefill) + pretrain, 0
                for _ in range(due):
                    interrupt.check()
                    batch, reset = collector.training_batch(B, T)
                    health.begin()  # from here until end(), no checkpoint may be written
                    metrics, carried, ok = agent.update(batch, carried, reset)
                    health.end(ok, step)  # stops the run after run.nan_patience in a row
                    if not ok:
                        logger.scalar("train/nonfinite_updates", 1)
                        continue
                    # each rank carries the states of its own sampler's streams
                    carried = carried if config.train.carry_state else None
                    updates += 1
                    logger.scalars(metrics, "train/")
                progress.lap("update", due)

            # 3. evaluate with the greedy policy; open-loop predictions of the world model
            if step >= prefill and should_eval(step) and main_rank:
                progress.show(step, updates, "evaluation")
                scores = evaluate(config, agent, logger, step, should_video(step))
                if scores is None:
                    health.fault(step, "non-finite policy", "evaluation skipped")
                else:
                    logger.scalars(scores, "eval/")
                if len(collector.replay) >= T:
                    openloop_video(config, agent, collector, logger, step)
                progress.lap("eval")

            # 4. log and checkpoint
            if should_log(step):
                logger.pool(parallel.gather_lists)  # every rank's episodes and losses
                now = time.time()
                logger.scalar("fps/env", (step - timer["step"]) / (now - timer["t"]))
                logger.scalar("fps/updates", (updates - timer["updates"]) / (now - timer["t"]))
                logger.scalar("replay/size", len(collector.replay))
                means = logger.write(step)
                timer = {"t": now, "step": step, "updates": updates}
                if "episode/return" in means:
                    progress.notes["return"] = f"{means['episode/return']:.3g}"
            if should_save(step) and health.saveable:  # never a bad one over a good one
                save()
            progress.show(step, updates, "prefill" if step < prefill else "training")

if __name__ == "__main__":
    main()
