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


UPDATES = 200


class PointWorld:
    """A known, differentiable latent world for the actor-critic alone: position x in R, an action
    moves it by 0.3 a (continuous a in [-1, 1], or one-hot {left, stay, right}), reward 1 - x^2
    after the move, never terminates. Features: [x, tanh(W x + b)] (fixed W, b). The best policy
    walks to 0 and stays; a policy that ignores x drifts."""

    def __init__(self, discrete: bool):
        gen = torch.Generator().manual_seed(0)
        self.w, self.b = torch.randn(1, 8, generator=gen), torch.randn(8, generator=gen)
        self.discrete = discrete

    def feat(self, x):
        return torch.cat([x, torch.tanh(x @ self.w + self.b)], -1)  # (N, 9)

    def imagine(self, start, policy, horizon, final_state=True):
        x, feats = start["x"], [self.feat(start["x"])]
        for _ in range(horizon):
            a = policy(feats[-1])
            move = a @ torch.tensor([[-1.0], [0.0], [1.0]]) if self.discrete else a
            x = x + 0.3 * move
            feats.append(self.feat(x))
        return {"feat": torch.stack(feats, 1)}

    def reward(self, feat):
        return 1.0 - feat[..., 0].square()

    def cont(self, feat):
        return torch.ones(feat.shape[:-1])


def plain_ac_loss(ac, wm, start, start_cont):
    """ActorCritic.loss written out plainly: batch-major (N, H, F) features, the actor re-run on
    the imagined states for its loss, the critic run twice (values, then its own loss)."""
    from agent.actor_critic import clip_straight_through
    from agent.returns import lambda_returns, trajectory_weight
    backprop, raw = ac.grad == "straight_through", []

    def sample(feat):
        a = ac._sample(ac.policy(feat.detach()))  # one-hot / reparameterised sample
        raw.append(a)
        return a if ac.discrete else clip_straight_through(a)

    with torch.set_grad_enabled(backprop):
        feat = wm.imagine(start, sample, ac.horizon)["feat"].contiguous()  # (N, H+1, F)
        reward, cont = wm.reward(feat[:, 1:]), wm.cont(feat[:, 1:])  # (N, H)
    value = ac.value(feat).mean()  # (N, H+1)
    ret_actor = lambda_returns(reward, cont, value if backprop else value.detach(), ac.gamma,
                               ac.lam)
    ret = ret_actor.detach()
    weight = trajectory_weight(cont.detach(), ac.gamma, start_cont)
    ac.retnorm.track(ret)
    scale = ac.retnorm.scale()
    policy = ac.policy(feat[:, :-1].detach())
    entropy = policy.entropy()
    if backprop:
        objective = ret_actor / scale
    else:
        objective = policy.log_prob(torch.stack(raw, 1)) * (ret - value[:, :-1]).detach() / scale
    actor_loss = -(weight * (objective + ac.entropy_scale * entropy)).mean()
    dist = ac.value(feat[:, :-1].detach())
    slow = ac.value(feat[:, :-1].detach(), slow=True).mean()
    critic_loss = (weight * -(dist.log_prob(ret) + ac.slow_reg * dist.log_prob(slow))).mean()
    return actor_loss, critic_loss


@pytest.mark.parametrize("backbone,discrete,grad", [
    ("s4wm", True, "reinforce"), ("rssm", True, "straight_through"),
    ("tssm", False, "reinforce"), ("s5wm", False, "straight_through")])
def test_actor_critic_loss_equals_plain_computation(backbone, discrete, grad):
    """ActorCritic.loss keeps the actor's outputs from the rollout, runs the critic once under
    REINFORCE and works time-major; same seed -> the same losses and gradients as the plain form."""
    import copy
    torch.manual_seed(0)
    config = merge(load_blocks(), ["debug", backbone], {"ac.actor_grad": grad})
    agent = build_agent(config, act_dim=3, discrete=discrete, device=torch.device("cpu"))
    wm = agent.wm
    with torch.no_grad():  # zero-initialised outputs would make every value 0 and hide mistakes
        for net in (agent.ac.critic, agent.ac.slow_critic, wm.reward_head):
            net.net[-1].weight.normal_(0.0, 0.3)
            net.net[-1].bias.normal_(0.0, 0.3)
    data = {k: torch.as_tensor(v) for k, v in make_batch(B=2, T=6).items()}
    with torch.no_grad():
        _, _, start = wm.observe(wm.encoder(data["image"]), data["action"], data["is_first"],
                                 wm.initial_state(2), torch.arange(6))
    start_cont = torch.ones(12)
    results = []
    for fn in (lambda ac: ac.loss(wm, start, start_cont)[:2],
               lambda ac: plain_ac_loss(ac, wm, start, start_cont)):
        ac = copy.deepcopy(agent.ac)  # each its own return normaliser
        ac.retnorm.track(torch.linspace(0, 3, 20))
        torch.manual_seed(1)
        actor_loss, critic_loss = fn(ac)
        grads = [torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
                 for loss, net in ((actor_loss, ac.actor), (critic_loss, ac.critic))]
        # the critic's loss reaches neither the actor nor the world model
        leak = torch.autograd.grad(critic_loss, [*ac.actor.parameters(), *wm.parameters()],
                                   retain_graph=True, allow_unused=True)
        assert all(g is None or not g.any() for g in leak)
        results.append((actor_loss, critic_loss, grads))
    (a1, c1, g1), (a2, c2, g2) = results
    torch.testing.assert_close(a1, a2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c1, c2, rtol=1e-5, atol=1e-6)
    for x, y in zip(g1[0] + g1[1], g2[0] + g2[1]):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("discrete,grad", [(False, "straight_through"), (False, "reinforce"),
                                           (True, "reinforce"), (True, "straight_through")])
def test_actor_critic_learns_a_known_world(discrete, grad):
    """The actor-critic alone (no world-model error) finds the policy that walks x to 0, with every
    actor gradient: after 200 updates greedy rollouts from x0 in [-1.5, 1.5] end within 0.25 of 0
    on average (the initial policy ends > 0.5 away) and the mean reward per step is > 0.85 (best
    ~0.95; < 0 before)."""
    from agent.actor_critic import ActorCritic
    torch.manual_seed(0)
    world = PointWorld(discrete)
    ac = ActorCritic(feat_size=9, act_dim=3 if discrete else 1, discrete=discrete, units=64,
                     layers=2, bins=255, horizon=15, gamma=0.9, grad=grad)
    actor_opt = torch.optim.Adam(ac.actor.parameters(), lr=1e-3, eps=1e-5)
    critic_opt = torch.optim.Adam(ac.critic.parameters(), lr=1e-3, eps=1e-5)
    x0 = torch.linspace(-1.5, 1.5, 64)[:, None]

    @torch.no_grad()
    def greedy_final_x():
        feat = world.imagine({"x": x0}, lambda f: ac.act(f, greedy=True), 15)["feat"]
        return float(feat[:, -1, 0].abs().mean()), float(world.reward(feat[:, 1:]).mean())

    before, ret_before = greedy_final_x()
    for _ in range(UPDATES):
        start = {"x": torch.rand(128, 1) * 3 - 1.5}
        actor_loss, critic_loss, _ = ac.loss(world, start, torch.ones(128))
        for opt, loss, params in ((actor_opt, actor_loss, ac.actor.parameters()),
                                  (critic_opt, critic_loss, ac.critic.parameters())):
            opt.zero_grad()
            loss.backward(retain_graph=True)
            torch.nn.utils.clip_grad_norm_(params, 100.0)
            opt.step()
        ac.update_slow()
    after, ret_after = greedy_final_x()
    assert before > 0.5 and ret_before < 0.0, (before, ret_before)
    assert after < 0.25, (before, after)
    assert ret_after > 0.85, (ret_before, ret_after)  # best possible ~0.95
