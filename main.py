"""Dreamer-style agent with a swappable world-model backbone (S4WM, S5WM, RSSM-TBTT, TSSM-XL).

    python main.py --configs miniworld s4wm [--key value ...]

The loop, per iteration: act in the environments -> store the step in replay -> update the world
model and the actor-critic (train_ratio replayed steps per env step) -> evaluate -> log -> checkpoint.
Rerunning the same command resumes the run in the same logdir.
"""
from __future__ import annotations

import signal
import sys
import time

import numpy as np
import torch

from agent.agent import build_agent
from agent.loop import Collector, evaluate, openloop_video
from common import checkpoint
from common.cli import fail, parse, prepare_logdir
from common.logger import Logger
from common.schedule import Every, Ratio
from envs import parse_task


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        fail(f"device '{name}' requested but CUDA is not available (choices here: auto, cpu)")
    return torch.device(name)


def offline_name(config) -> str:
    """Default run name of an offline memory run: offline_<dataset>, e.g. offline_four_rooms."""
    from common.config import ConfigError
    from memory.collect import Spec
    try:
        return "offline_" + Spec.from_config(config).name
    except ConfigError as e:
        fail(str(e))


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> None:
    # Ctrl-C and SIGTERM (e.g. a cluster's pre-emption) both end in a checkpoint. Installed
    # explicitly: a process started in the background inherits SIGINT as ignored.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    config = parse(sys.argv[1:] if argv is None else argv)
    try:
        parse_task(config.task)  # an unknown task fails here in one line, not inside a worker
    except ValueError as e:
        fail(str(e))
    logdir = prepare_logdir(config, offline_name(config) if config.mode == "offline" else None)
    checkpoint.seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    if config.mode == "offline":  # a memory benchmark: the world model alone, on its dataset
        from memory.train import run
        return run(config, logdir, device)

    B, T = config.train.batch_size, config.train.seq_len
    if config.train.prefill < config.env.envs * T:
        fail(f"train.prefill ({config.train.prefill}) must be >= env.envs x train.seq_len "
             f"({config.env.envs * T}) so that every worker's stream holds a whole sequence")
    try:
        ckpt = checkpoint.load(logdir / "checkpoint.pt")
    except RuntimeError as e:
        fail(str(e))
    step = int(ckpt["step"]) if ckpt is not None else 0
    collector = Collector(config, logdir, step)  # env workers + replay (loads what is on disk)
    agent = build_agent(config, collector.act_dim, collector.discrete, device)
    logger = Logger(logdir)
    updates, ratio_done, pretrain = 0, 0, config.train.pretrain
    if ckpt is not None:
        try:
            agent.restore(ckpt["agent"])
            checkpoint.set_rng_state(ckpt["rng"])
            collector.sampler_state(ckpt["sampler"])
            updates, ratio_done = int(ckpt["updates"]), int(ckpt["ratio_done"])
        except (KeyError, RuntimeError, ValueError) as e:
            fail(f"checkpoint {logdir / 'checkpoint.pt'} does not fit this model/config "
                 f"({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        pretrain = 0
        print(f"resuming {logdir} at step {step} ({updates} updates, {len(collector.replay)} "
              f"steps in replay)")

    def save():
        collector.replay.flush()
        checkpoint.save(logdir / "checkpoint.pt", {
            "agent": agent.checkpoint(), "step": step, "updates": updates,
            "ratio_done": ratio.done,
            "rng": checkpoint.rng_state(), "sampler": collector.sampler_state()})

    should_log, should_eval = Every(config.run.log_every, step), Every(config.run.eval_every, step)
    should_video = Every(config.run.video_every, step)
    should_save = Every(config.run.checkpoint_every, step)
    ratio = Ratio(config.train.train_ratio, B * T, ratio_done)
    prefill, bad_updates, healthy = config.train.prefill, 0, True
    carried, timer = None, {"t": time.time(), "step": step, "updates": updates}
    progress = collector.progress(step) if config.run.progress else None
    try:
        while step < config.steps:
            # 1. collect: one step in every env worker (random policy until prefill is done)
            random_policy = step < prefill
            step += collector.step(agent, random_policy, logger)
            if progress is not None:
                progress.update(collector.num_envs)

            # 2. update world model + actor-critic, train_ratio replayed steps per env step
            if step >= prefill and len(collector.replay) >= B * T:
                due, pretrain = ratio(step - prefill) + pretrain, 0
                for _ in range(due):
                    batch, reset = collector.sample(B, T)
                    metrics, carried, ok = agent.update(batch, carried, reset)
                    bad_updates = 0 if ok else bad_updates + 1
                    if not ok:
                        print(f"warning: non-finite loss at step {step}: update skipped "
                              f"({bad_updates} in a row)", file=sys.stderr)
                        logger.scalar("train/nonfinite_updates", 1)
                        if bad_updates >= config.run.nan_patience:
                            healthy = False
                            fail(f"{bad_updates} non-finite losses in a row at step {step}: "
                                 f"stopped; the last good checkpoint in {logdir} is kept")
                        continue
                    carried = carried if config.train.carry_state else None
                    updates += 1
                    logger.scalars(metrics, "train/")

            # 3. evaluate with the greedy policy; open-loop predictions of the world model
            if step >= prefill and should_eval(step):
                logger.scalars(evaluate(config, agent, logger, step, should_video(step)), "eval/")
                if len(collector.replay) >= T:
                    openloop_video(config, agent, collector, logger, step)

            # 4. log and checkpoint
            if should_log(step):
                now = time.time()
                logger.scalar("fps/env", (step - timer["step"]) / (now - timer["t"]))
                logger.scalar("fps/updates", (updates - timer["updates"]) / (now - timer["t"]))
                logger.scalar("replay/size", len(collector.replay))
                means = logger.write(step)
                timer = {"t": now, "step": step, "updates": updates}
                if progress is not None:
                    progress.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in means.items()
                                          if k in ("episode/return", "fps/env")})
            if should_save(step) and bad_updates == 0:  # never replace a good checkpoint by a bad one
                save()
    except KeyboardInterrupt:
        print(f"interrupted at step {step}: saving a checkpoint", file=sys.stderr)
    finally:
        collector.replay.flush()  # what was collected is never lost, even when stopping on NaN
        if healthy and bad_updates == 0:
            save()
        collector.close()
        logger.write(step)
        logger.close()
        if progress is not None:
            progress.close()


if __name__ == "__main__":
    main()
