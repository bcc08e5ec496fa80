"""What a run prints (common/console.py): the header's content, the time-left estimate."""
import pytest
import torch

from common import console
from common.config import load_blocks, merge


def test_online_header_names_everything_a_new_user_asks(tmp_path):
    from agent.agent import build_agent
    config = merge(load_blocks(), ["dmc", "rssm"], {"task": "dmc_cartpole_balance",
                                                     "device": "cpu"}, cuda_available=False)
    agent = build_agent(config, act_dim=1, discrete=False, device=torch.device("cpu"))
    start = f"resuming {tmp_path} at step 120 (40 updates, 121 steps in replay)"
    text = console.online_header(config, agent, torch.device("cpu"), tmp_path, start,
                                 updates_per_step=64 / (16 * 64))
    rows = dict(line.split(None, 1) for line in text.splitlines() if not line.startswith(" "))
    assert rows["task"].startswith("dmc_cartpole_balance (env family dmc), 1000000 env steps")
    assert rows["backbone"] == "rssm"
    assert rows["device"] == f"cpu, {torch.get_num_threads()} CPU thread" + \
        ("s" if torch.get_num_threads() != 1 else "")
    assert rows["size"].startswith("cpu: the size for runs on a CPU (CPU: cpu, offline memory_cpu")
    assert "d_model 256, latents 32x32 categorical, CNN depth 16" in text
    assert "batch 16 x 64 steps, train ratio 64 (1 update per 16 env steps)" in text
    wm, actor, critic = (sum(p.numel() for p in m.parameters())
                         for m in (agent.wm, agent.ac.actor, agent.ac.critic))
    assert rows["parameters"] == (f"world model {wm / 1e6:.2f}M, actor {actor / 1e6:.2f}M, "
                                  f"critic {critic / 1e6:.2f}M")
    assert rows["cadence"].startswith(f"every {config.run.eval_every} env steps an evaluation")
    assert rows["logdir"].startswith(str(tmp_path)) and rows["start"] == start
    assert rows["tensorboard"].endswith(f"tensorboard --logdir {tmp_path}")


def test_a_named_size_says_so():
    config = merge(load_blocks(), ["learn"], cuda_available=False)
    rows = dict(console.size_rows(config, torch.device("cpu")))
    assert rows["size"] == "learn: named on the command line (runs on a CPU get cpu otherwise)"


def test_time_left_comes_from_measured_env_update_and_eval_times(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(console.time, "perf_counter", lambda: now[0])
    p = console.Progress(1000, 0, unit="step", updates_per_unit=0.25, eval_every=100,
                         enabled=False)

    def spend(seconds, kind, n=1):
        now[0] += seconds
        p.lap(kind, n)
    for _ in range(100):
        spend(0.01, "env")  # 0.01 s per env step
    assert p.remaining(100) is None  # prefill: no update timed yet
    spend(2.0, "update", 1)
    spend(6.0, "update", 3)  # 2 s per update
    spend(5.0, "eval")
    # 900 steps left x (0.01 + 0.25 x 2) + 9 evaluations left x 5 s
    assert p.remaining(100) == pytest.approx(900 * 0.51 + 9 * 5)


@pytest.mark.parametrize("seconds, text", [(65, "1:05"), (3725, "1:02:05"),
                                           (86400 * 7.6, "7.6 days")])
def test_clock(seconds, text):
    assert console.clock(seconds) == text
