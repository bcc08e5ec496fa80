"""Agent update: non-finite losses are skipped without touching the weights; carried state."""
import numpy as np
import pytest
import torch

from agent.agent import build_agent
from common.config import load_blocks, merge


def make_batch(B=2, T=8, A=3, seed=0):
    rng = np.random.default_rng(seed)
    batch = {"image": rng.integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8),
             "action": np.eye(A, dtype=np.float32)[rng.integers(0, A, (B, T))],
             "reward": rng.normal(size=(B, T)).astype(np.float32),
             "is_first": np.zeros((B, T), bool), "is_last": np.zeros((B, T), bool),
             "is_terminal": np.zeros((B, T), bool)}
    batch["is_first"][:, 0] = True
    return batch


def agent_for(backbone, **over):
    torch.manual_seed(0)
    config = merge(load_blocks(), ["debug", backbone], over)
    return build_agent(config, act_dim=3, discrete=True, device=torch.device("cpu"))


@pytest.mark.parametrize("backbone", ["rssm", "s4wm"])
def test_nonfinite_loss_skips_the_update(backbone):
    agent = agent_for(backbone)
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    batch = make_batch()
    batch["reward"][0, 3] = np.nan
    metrics, carried, ok = agent.update(batch)
    assert not ok and metrics == {} and carried is None
    for key, value in agent.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("grad", ["reinforce", "straight_through"])
def test_update_changes_every_part_and_reports_metrics(grad):
    agent = agent_for("s5wm", **{"ac.actor_grad": grad})
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    metrics, carried, ok = agent.update(make_batch())
    assert ok and np.isfinite(list(metrics.values())).all()
    for part in ("wm.encoder", "wm.core", "ac.actor", "ac.critic", "ac.slow_critic"):
        changed = [k for k in before if k.startswith(part) and not torch.equal(before[k],
                                                                             agent.state_dict()[k])]
        assert changed, part
    assert carried["h"].shape == (2, 32)


def test_continuous_actions_are_bounded():
    torch.manual_seed(0)
    config = merge(load_blocks(), ["debug", "rssm"])
    agent = build_agent(config, act_dim=2, discrete=False, device=torch.device("cpu"))
    feat = torch.randn(64, agent.wm.feat_size) * 10
    action = agent.ac.act(feat)
    assert action.shape == (64, 2) and action.abs().max() <= 1.0
    assert agent.ac.act(feat, greedy=True).abs().max() <= 1.0


def test_clip_straight_through_clips_values_and_keeps_gradients():
    from agent.actor_critic import clip_straight_through
    a = torch.tensor([-2.0, -0.5, 0.3, 1.7], requires_grad=True)
    out = clip_straight_through(a)
    assert torch.equal(out.detach(), torch.tensor([-1.0, -0.5, 0.3, 1.0]))  # what the env gets
    out.sum().backward()
    assert torch.equal(a.grad, torch.ones(4))  # a plain clamp would give 0 at -2.0 and 1.7
