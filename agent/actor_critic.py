"""Actor-critic learned purely in latent imagination (DreamerV3 recipe), on any backbone's features.

Actor: one-hot categorical with 1% unimix (discrete) or a bounded normal (continuous, tanh mean,
sigmoid std). Critic: symlog-twohot over `bins`, regularised towards a slow EMA copy. Actor gradient:
REINFORCE on normalised advantages (default, DreamerV3) or `straight_through`: for discrete actions
the one-hot sample passes gradients, and the actor maximises returns by backpropagating through the
imagined dynamics (DreamerV1/V2 style).
"""
from __future__ import annotations

import copy

import torch
from torch import distributions as td
from torch import nn
from torch.profiler import record_function

from agent.returns import ReturnNorm, lambda_returns, trajectory_weight
from common.distributions import TwoHot, sample_onehot, twohot_bins, unimix_logits
from world_models.nets import MLP


def clip_straight_through(action: torch.Tensor) -> torch.Tensor:
    """Clip to [-1, 1] as the env does, but pass gradients as if unclipped: a sample outside the
    range still tells the actor which way the return grows (a plain clamp would give it zero)."""
    return action + (action.clamp(-1, 1) - action).detach()


class ActorCritic(nn.Module):
    def __init__(self, *, feat_size: int, act_dim: int, discrete: bool, units: int, layers: int,
                 bins: int, unimix: float = 0.01, horizon: int = 15, gamma: float = 0.997,
                 lam: float = 0.95, entropy: float = 3e-4, grad: str = "reinforce",
                 slow_rate: float = 0.02, slow_reg: float = 1.0, retnorm_decay: float = 0.99,
                 retnorm_limit: float = 1.0, min_std: float = 0.1, max_std: float = 1.0):
        super().__init__()
        self.act_dim, self.discrete, self.unimix = act_dim, discrete, unimix
        self.horizon, self.gamma, self.lam, self.entropy_scale = horizon, gamma, lam, entropy
        self.grad, self.slow_rate, self.slow_reg = grad, slow_rate, slow_reg
        self.min_std, self.max_std = min_std, max_std
        self.actor = MLP(feat_size, units, layers, act_dim if discrete else 2 * act_dim)
        self.critic = MLP(feat_size, units, layers, bins)
        nn.init.zeros_(self.critic.net[-1].weight)  # DreamerV3: critic starts predicting 0
        nn.init.zeros_(self.critic.net[-1].bias)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.retnorm = ReturnNorm(retnorm_decay, retnorm_limit)
        self.register_buffer("bins", twohot_bins(bins), persistent=False)

    def policy(self, feat: torch.Tensor) -> td.Distribution:
        return self._dist(self.actor(feat))

    def _dist(self, out: torch.Tensor) -> td.Distribution:
        """The policy from the actor's output (logits, or mean and std before squashing)."""
        if self.discrete:
            return td.OneHotCategoricalStraightThrough(logits=unimix_logits(out, self.unimix),
                                                       validate_args=False)
        mean, std = out.chunk(2, -1)
        std = (self.max_std - self.min_std) * torch.sigmoid(std + 2.0) + self.min_std
        return td.Independent(td.Normal(torch.tanh(mean), std, validate_args=False), 1,
                              validate_args=False)

    def act(self, feat: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """Action (B, A) for the environment: one-hot, or clipped to [-1, 1]; a row whose policy
        parameters are not finite is all nan (no valid action: the caller decides)."""
        out = self.actor(feat)  # (B, A or 2A)
        dist = self._dist(out)
        if greedy:
            if self.discrete:
                action = nn.functional.one_hot(dist.probs.argmax(-1), self.act_dim).float()
            else:
                action = dist.base_dist.mean
        else:
            action = self._sample(dist).detach()
            action = action if self.discrete else action.clamp(-1, 1)
        valid = torch.isfinite(out).all(-1, keepdim=True)  # (B, 1)
        return torch.where(valid, action, torch.full_like(action, float("nan")))

    def _sample(self, dist: td.Distribution) -> torch.Tensor:
        """A sample with straight-through / reparameterised gradients. Never raises on non-finite
        parameters (torch's samplers do): those reach the losses, whose finiteness every update
        checks (common/health.py)."""
        if self.discrete:
            return sample_onehot(dist.probs)
        return dist.rsample()

    def value(self, feat, slow=False):
        net = self.slow_critic if slow else self.critic
        return TwoHot(net(feat), self.bins)

    def loss(self, wm, start: dict, start_cont: torch.Tensor):
        """Imagine from `start` (N states) and return (actor_loss, critic_loss, metrics).

        Every network runs once per imagined state: the actor's output at each state is kept with
        its graph from the rollout (not recomputed for the loss), and with REINFORCE, where the
        features carry no gradient, one critic pass gives both the bootstrap values and the
        critic's loss. The trajectory is handled time-major, (H+1, N, F), so the per-step slices
        that the heads read are contiguous (a strided (N, H, F) slice costs matmul a copy)."""
        with record_function("ac/imagine"):
            feat, outs, raw = self._imagine(wm, start)
        with record_function("ac/heads_loss"):
            return self._losses(wm, feat, outs, raw, start_cont)

    def _imagine(self, wm, start: dict):
        """Roll out the policy: features (H+1, N, F), and per state 0..H-1 the actor's output
        (with grad to the actor) and the action sample."""
        backprop = self.grad == "straight_through"
        outs, raw = [], []

        def sample(feat):
            with torch.enable_grad():
                out = self.actor(feat.detach())  # (N, A or 2A)
            outs.append(out)
            # the model sees the samples clipped to [-1, 1] like the env does
            a = self._sample(self._dist(out if backprop else out.detach()))
            raw.append(a)
            return a if self.discrete else clip_straight_through(a)

        with torch.set_grad_enabled(backprop):
            traj = wm.imagine(start, sample, self.horizon, final_state=False)
            feat = traj["feat"].transpose(0, 1).contiguous()  # (H+1, N, F); free if time-major
        return feat, outs, raw

    def _losses(self, wm, feat, outs, raw, start_cont):
        """(actor_loss, critic_loss, metrics) of a rollout from `_imagine`; start_cont (N,)."""
        backprop = self.grad == "straight_through"
        with torch.set_grad_enabled(backprop):
            reward = wm.reward(feat[1:])  # (H, N)
            cont = wm.cont(feat[1:])  # (H, N)
        if backprop:  # the actor's values keep their gradient through the features; the critic's
            value = self.value(feat).mean()  # (H+1, N)
            dist = self.value(feat[:-1].detach())  # (H, N)
        else:  # features without gradient: one pass serves both
            logits = self.critic(feat)  # (H+1, N, bins)
            value = TwoHot(logits, self.bins).mean()  # (H+1, N)
            dist = TwoHot(logits[:-1], self.bins)
        # straight_through: the actor's returns keep their gradient through rewards, continues and
        # bootstrap values (DreamerV1/V2); the critic and the normaliser see them detached.
        reward, cont, value = reward.t(), cont.t(), value.t()  # (N, H), (N, H), (N, H+1)
        ret_actor = lambda_returns(reward, cont, value if backprop else value.detach(),
                                   self.gamma, self.lam)  # (N, H)
        ret = ret_actor.detach()
        weight = trajectory_weight(cont.detach(), self.gamma, start_cont)  # (N, H)
        self.retnorm.track(ret)  # skips non-finite batches; percentiles over all ranks' returns
        scale = self.retnorm.scale()

        policy = self._dist(torch.stack(outs, 1))  # (N, H) over states 0..H-1
        entropy = policy.entropy()  # (N, H)
        if backprop:
            objective = ret_actor / scale
        else:
            adv = (ret - value[:, :-1]).detach() / scale
            objective = policy.log_prob(torch.stack(raw, 1).detach()) * adv
        actor_loss = -(weight * (objective + self.entropy_scale * entropy)).mean()

        slow_target = self.value(feat[:-1].detach(), slow=True).mean().detach()  # (H, N)
        critic_loss = -(dist.log_prob(ret.t()) + self.slow_reg * dist.log_prob(slow_target))
        critic_loss = (weight * critic_loss.t()).mean()
        metrics = {"ac/return": ret.mean().detach(), "ac/value": value.mean().detach(),
                   "ac/imag_reward": reward.mean().detach(), "ac/entropy": entropy.mean().detach(),
                   "ac/return_scale": scale.detach()}
        return actor_loss, critic_loss, metrics

    @torch.no_grad()
    def update_slow(self):
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.lerp_(fast, self.slow_rate)
