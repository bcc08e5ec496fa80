"""Data parallelism (common/parallel.py) on the CPU with gloo and 2 processes: two ranks on halves of
a batch train exactly like one process on the whole batch; a torchrun run writes one set of outputs
and resumes on both ranks; ranks have their own seeds and replay shards."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from common import parallel
from envs import env_seed
from replay import Replay
from tests.test_agent import agent_for, make_batch
from world_models import BACKBONES

ROOT = pathlib.Path(__file__).resolve().parent.parent
B, T, K = 4, 8, 3  # rows per rank, steps per row, updates


# ---- two ranks == one process on the concatenated batch -------------------------------------------
def _median_onehot(probs):
    """sample_onehot with u = 0.5 instead of a uniform draw: a per-row function of probs, so the
    result does not depend on how rows are split over processes (straight-through as before)."""
    cdf = probs.detach().cumsum(-1)  # (..., C)
    index = (cdf < 0.5 * cdf[..., -1:]).sum(-1).clamp(max=probs.shape[-1] - 1)
    onehot = torch.nn.functional.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return onehot + probs - probs.detach()


def _argmax_sample(self, sample_shape=torch.Size()):
    return torch.nn.functional.one_hot(self.probs.argmax(-1), self.probs.shape[-1]).to(self.probs)


def _without_sampling_noise():
    """Sampling noise is drawn per process, so two ranks can not draw what one process draws for
    the same rows; every other difference would be a bug. Replace both samplers of the update (the
    latents and the actor's actions) by deterministic per-row functions."""
    import common.distributions
    common.distributions.sample_onehot = _median_onehot
    import agent.actor_critic  # it samples actions with its own binding of sample_onehot
    agent.actor_critic.sample_onehot = _median_onehot
    torch.distributions.OneHotCategorical.sample = _argmax_sample


def _global_batches():
    """K batches of 2B rows; the second resets rows 1 and 6 (carried state replaced)."""
    batches = [make_batch(B=2 * B, T=T, seed=k) for k in range(K)]
    resets = [None] + [np.isin(np.arange(2 * B), [1, 6]) for _ in range(K - 1)]
    for batch in batches[1:]:
        batch["is_first"][:, 0] = False
        batch["is_first"][[1, 6], 0] = True
    for batch in batches:
        batch["reward"][:, ::3] *= 5.0  # spread the returns: the percentiles matter
    return batches, resets


def _train(backbone, rows=slice(None)):
    """K updates with the state carried between them, on `rows` of every global batch.
    wm.eps 1e-5: AdamW divides by sqrt(v) + eps, so with eps 1e-8 a gradient that is zero up to
    rounding (some of TSSM's relative-position weights) moves by up to lr in a direction set by the
    rounding of the sum; a larger eps keeps the comparison about the gradients."""
    agent = agent_for(backbone, **{"wm.eps": "1e-5"})
    carried = None
    for batch, reset in zip(*_global_batches()):
        batch = {k: v[rows] for k, v in batch.items()}
        _, carried, ok = agent.update(batch, carried, None if reset is None else reset[rows])
        assert ok
    return agent.state_dict(), carried


def _rank_worker(r, world, port, out):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=r, world_size=world)
    _without_sampling_noise()
    rows = parallel.shard(np.arange(2 * B))  # rank 0: rows 0..3, rank 1: rows 4..7
    results = {"rows": rows, "shard": parallel.shard(list(range(11)))}
    for backbone in BACKBONES:
        results[backbone] = _train(backbone, rows)
    torch.save(results, f"{out}/rank{r}.pt")
    tdist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_train_like_one_process_on_the_whole_batch(tmp_path, monkeypatch):
    mp.spawn(_rank_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert list(ranks[0]["rows"]) == [0, 1, 2, 3] and list(ranks[1]["rows"]) == [4, 5, 6, 7]
    assert ranks[0]["shard"] == [0, 1, 2, 3, 4] and ranks[1]["shard"] == [5, 6, 7, 8, 9]
    import common.distributions
    monkeypatch.setattr(common.distributions, "sample_onehot", _median_onehot)
    import agent.actor_critic
    monkeypatch.setattr(agent.actor_critic, "sample_onehot", _median_onehot)
    monkeypatch.setattr(torch.distributions.OneHotCategorical, "sample", _argmax_sample)
    for backbone in BACKBONES:
        params, carried = _train(backbone)
        for key, value in params.items():
            # identical on both ranks (bit for bit), and equal to one process on all rows
            assert torch.equal(ranks[0][backbone][0][key], ranks[1][backbone][0][key]), key
            assert torch.allclose(ranks[0][backbone][0][key], value, atol=1e-5, rtol=1e-4), \
                (backbone, key, (ranks[0][backbone][0][key] - value).abs().max().item())
        # each rank carries the state of its own rows
        for r in range(2):
            mine = torch.cat([x.reshape(B, -1) for x in _leaves(ranks[r][backbone][1])], 1)
            ref = torch.cat([x.reshape(2 * B, -1) for x in _leaves(carried)], 1)[r * B:(r + 1) * B]
            assert torch.allclose(mine, ref, atol=1e-4), (backbone, r)


def _leaves(tree):
    if isinstance(tree, dict):
        return [x for k in sorted(tree) for x in _leaves(tree[k])]
    if isinstance(tree, (list, tuple)):
        return [x for v in tree for x in _leaves(v)]
    return [tree.real if tree.is_complex() else tree]


# ---- seeds, shards and config ---------------------------------------------------------------------
def test_seeds_differ_per_rank_and_env_worker():
    seeds = [env_seed(parallel.rank_seed(7, r), i) for r in range(4) for i in range(4)]
    assert len(set(seeds)) == 16
    assert parallel.rank_seed(7, 0) == 7  # rank 0 collects exactly like a single process
    assert len({parallel.rank_seed(s, r) for s in range(3) for r in range(3)}) == 9


def test_single_process_is_untouched():
    assert not tdist.is_initialized()
    assert (parallel.rank(), parallel.world_size(), parallel.is_main()) == (0, 1, True)
    assert parallel.init(torch.device("cpu")) == torch.device("cpu") and not tdist.is_initialized()
    assert parallel.shard([1, 2, 3]) == [1, 2, 3] and parallel.all_true(torch.tensor(True))
    x = torch.ones(3)
    assert parallel.all_gather_cat(x) is x


def test_global_batch_must_split_evenly(monkeypatch, capsys):
    from common.config import load_blocks, merge
    config = merge(load_blocks(), ["debug"], {"train.global_batch": "6"})
    monkeypatch.setattr(parallel, "world_size", lambda: 3)
    assert parallel.batch_size(config) == 2
    monkeypatch.setattr(parallel, "world_size", lambda: 4)
    with pytest.raises(SystemExit) as e:
        parallel.batch_size(config)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0 and "multiple" in err, err


# ---- a whole torchrun run --------------------------------------------------------------------------
def torchrun(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "main.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_rank_run_writes_one_set_of_outputs_and_resumes(tmp_path):
    logdir = tmp_path / "run"
    args = ["--configs", "debug", "miniworld", "rssm", "--train.carry_state", "true",
            "--logdir", str(logdir)]
    proc = torchrun(*args, "--steps", "160")
    assert "2 processes x batch 4 = global batch 8" in proc.stdout
    rows = [json.loads(l) for l in (logdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)) and steps[-1] == 160  # one writer
    assert any("train/loss/image" in r for r in rows) and any("eval/return" in r for r in rows)
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name.split("_0")[0] for p in (logdir / "videos").glob("*.mp4")) == \
        ["eval_openloop", "eval_policy"]
    saved = torch.load(logdir / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 160 and saved["updates"] > 0

    # one replay shard per rank: different folders, different data
    shards_dirs = (logdir / "replay", logdir / "replay" / "rank1")
    shards = [Replay(str(d), 10_000, readonly=True) for d in shards_dirs]
    assert [len(s) for s in shards] == [81, 81]  # 160 global steps = 80 per rank + the first obs
    images = [next(s.streams())["image"] for s in shards]
    assert not np.array_equal(images[0][:20], images[1][:20])

    proc = torchrun(*args, "--steps", "220")
    assert "rank 0: resuming" in proc.stdout and "rank 1: resuming" in proc.stdout
    assert proc.stdout.count("at step 160 (") == 2
    steps = [json.loads(l)["step"] for l in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 220
    assert torch.load(logdir / "checkpoint.pt", weights_only=True)["updates"] > saved["updates"]
    assert [len(Replay(str(d), 10_000, readonly=True)) for d in shards_dirs] == [112, 112]


def test_two_rank_offline_training_shards_the_dataset(tmp_path):
    """Offline memory training under torchrun: each rank reads its own slice of the training
    episodes, rank 0 alone evaluates and writes, and both resume."""
    logdir = tmp_path / "run"
    args = ["--configs", "multi_doors_keys", "debug", "s4wm", "--memory.out", str(tmp_path / "data"),
            "--memory.context", "12", "--memory.query", "12", "--memory.episodes", "6",
            "--offline.test_episodes", "2", "--offline.eval_every", "2", "--offline.log_every", "1",
            "--logdir", str(logdir)]
    proc = torchrun(*args, "--offline.updates", "2")
    assert "rank 0: offline training: 2 train" in proc.stdout  # 4 training episodes, 2 per rank
    assert "rank 1: offline training: 2 train" in proc.stdout
    assert json.loads((logdir / "eval" / "metrics.json").read_text())["updates"] == 2
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 1
    steps = [json.loads(l)["step"] for l in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer
    proc = torchrun(*args, "--offline.updates", "3")
    assert proc.stdout.count("resuming") == 2 and "at update 2" in proc.stdout
    assert torch.load(logdir / "checkpoint.pt", weights_only=True)["updates"] == 3


def test_scale_benchmark_runs_in_one_process(capsys):
    from bench import scale
    scale.main(["updates", "--updates", "1", "--configs", "debug", "rssm", "--threads", "1"])
    assert "1 process(es), per-rank batch 4x16:" in capsys.readouterr().out
