"""Scale-out speed: env steps/s against env workers, and updates/s against data-parallel processes.

    python -m bench.scale envs --task dmc_cartpole_balance --fast-render --workers 1,2,4
    python -m bench.scale envs --task miniworld_FourRooms --workers 1,2,4
    python -m bench.scale updates --configs learn dmc rssm                   # 1 process
    torchrun --standalone --nproc_per_node 2 -m bench.scale updates --configs learn dmc rssm

`envs`: a random policy in make_vector_env(task, n) (n > 1: one spawned process per env, as
`env.envs` does in main.py); prints agent steps/s summed over the n envs.
`updates`: Agent.update on seeded random (B, T) batches of the config's size (B per rank:
train.batch_size, or train.global_batch / processes) on every rank; prints updates/s and replayed
sequences/s over all ranks.
Results on the build machine: docs/benchmarks.md ("Environment workers", "Data-parallel updates").
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def bench_envs(task: str, workers: list[int], steps: int, fast_render: bool) -> None:
    from envs import OneHot, make_vector_env
    for n in workers:
        envs = make_vector_env(task, n, seed=0, image_size=64, fast_render=fast_render)
        try:
            envs.reset()
            rng = np.random.default_rng(0)
            space = envs.single_action_space
            discrete, dim = isinstance(space, OneHot), int(space.shape[0])

            def act():
                if discrete:
                    return np.eye(dim, dtype=np.float32)[rng.integers(0, dim, n)]
                return rng.uniform(-1, 1, (n, dim)).astype(np.float32)
            for _ in range(10):  # warm-up: first renders, worker start-up
                envs.step(act())
            start = time.perf_counter()
            for _ in range(steps):
                envs.step(act())
            elapsed = time.perf_counter() - start
        finally:
            envs.close()
        print(f"{task} fast_render={fast_render} envs={n}: {n * steps / elapsed:.0f} steps/s "
              f"({n * steps} steps in {elapsed:.1f} s)", flush=True)


def random_batch(B: int, T: int, act_dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    batch = {"image": rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8),
             "action": np.eye(act_dim, dtype=np.float32)[rng.integers(0, act_dim, (B, T))],
             "reward": rng.normal(size=(B, T)).astype(np.float32),
             "is_first": np.zeros((B, T), bool), "is_last": np.zeros((B, T), bool),
             "is_terminal": np.zeros((B, T), bool)}
    batch["is_first"][:, 0] = True
    return batch


def bench_updates(argv: list[str], updates: int) -> None:
    from agent.agent import build_agent
    from common import checkpoint, parallel
    from common.cli import parse
    config = parse(argv, prog="python -m bench.scale updates")
    torch.set_num_threads(config.threads or 1)
    device = parallel.init(torch.device("cpu"))
    try:
        checkpoint.seed_everything(config.seed)
        agent = build_agent(config, act_dim=4, discrete=True, device=device)
        B, T = parallel.batch_size(config), config.train.seq_len  # per rank (train.global_batch split)
        seed = parallel.rank_seed(config.seed)
        batches = [random_batch(B, T, 4, seed=seed + i) for i in range(4)]
        agent.update(batches[0])  # warm-up
        start = time.perf_counter()
        for i in range(updates):
            agent.update(batches[i % 4])
        elapsed = time.perf_counter() - start
        if parallel.is_main():
            ranks = parallel.world_size()
            print(f"{ranks} process(es), per-rank batch {B}x{T}: {updates / elapsed:.2f} updates/s, "
                  f"{ranks * B * updates / elapsed:.1f} sequences/s over all ranks", flush=True)
    finally:
        parallel.close()


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["envs", "updates"])
    p.add_argument("--task", default="dmc_cartpole_balance")
    p.add_argument("--workers", default="1,2,4", help="comma-separated env worker counts")
    p.add_argument("--steps", type=int, default=300, help="timed vector steps per worker count")
    p.add_argument("--fast-render", action="store_true")
    p.add_argument("--updates", type=int, default=10, help="timed updates")
    args, rest = p.parse_known_args(argv)
    if args.what == "envs":
        bench_envs(args.task, [int(w) for w in args.workers.split(",")], args.steps,
                   args.fast_render)
    else:
        bench_updates(rest, args.updates)


if __name__ == "__main__":
    main()
