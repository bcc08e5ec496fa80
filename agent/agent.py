"""The agent: a world model, an actor-critic and their optimisers.

`act` only acts (no gradient, no training); `update` is one training step on a replayed batch:
world-model loss -> world-model step, then actor-critic in imagination from the batch's posterior
states. Only `build_agent` reads the config.

Data parallel (common/parallel.py): every rank calls `update` on its own batch; gradients are
averaged over ranks after each backward and before clipping, and every skip decision (non-finite loss) is
agreed by all ranks, so parameters stay identical and no rank waits in a skipped collective.
A step that blows the weights up raises common.health.Diverged (the run stops, checkpoint kept).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.profiler import record_function

from agent.actor_critic import ActorCritic
from common import parallel
from common.health import adamw, check_growth, load_optimizer, optimizer_step
from common.tree import detach, where_reset
from replay import to_torch
from world_models import build_world_model


class Agent(torch.nn.Module):
    def __init__(self, wm, ac, *, wm_opt: dict, ac_opt: dict, start_stride: int):
        super().__init__()
        self.wm, self.ac, self.start_stride = wm, ac, start_stride
        self.wm_clip, self.ac_clip = wm_opt.pop("grad_clip"), ac_opt.pop("grad_clip")
        self.wm_opt = adamw(wm.parameters(), **wm_opt)
        ac_kw = {"eps": ac_opt["eps"], "weight_decay": 0.0}
        self.actor_opt = adamw(ac.actor.parameters(), lr=ac_opt["actor_lr"], **ac_kw)
        self.critic_opt = adamw(ac.critic.parameters(), lr=ac_opt["critic_lr"], **ac_kw)
        self.sizes = {name: sum(p.numel() for p in net.parameters())  # weights per network
                      for name, net in (("world model", wm), ("actor", ac.actor),
                                        ("critic", ac.critic))}

    @property
    def device(self):
        return self.wm.device

    # ---- acting ---------------------------------------------------------------------------
    def initial_policy_state(self, batch_size: int):
        return self.wm.initial_state(batch_size)

    @torch.no_grad()
    def act(self, obs: dict, state: dict, prev_action: np.ndarray, greedy: bool = False):
        """One env step for N workers. obs: the model's keys (image uint8 (N, H, W, C), vectors
        (N, n)) and 'is_first' (N,); prev_action (N, A): the action that led to obs.
        Returns (action (N, A) numpy, state); a row of nan where the policy's parameters are not
        finite (see ActorCritic.act)."""
        x = {k: torch.as_tensor(obs[k], device=self.device).unsqueeze(1)  # each (N, 1, ...)
             for k in self.wm.obs_keys}
        is_first = torch.as_tensor(obs["is_first"], device=self.device).reshape(-1, 1)  # (N, 1)
        prev = torch.as_tensor(prev_action, device=self.device, dtype=torch.float32).unsqueeze(1)
        state = where_reset(is_first[:, 0], self.wm.initial_state(is_first.shape[0]), state)
        embed = self.wm.embed(x)  # (N, 1, E)
        _, state, _ = self.wm.observe(embed, prev, is_first, state)
        action = self.ac.act(self.wm.feat(state), greedy)
        return action.cpu().numpy(), state

    # ---- training ---------------------------------------------------------------------------
    def update(self, batch: dict, carried: dict | None = None, reset=None):
        """One update. batch: numpy (B, T, ...) from replay; carried: the world-model state after the
        previous chunk of the same streams (carry_state), reset (B,) rows that start afresh.
        Returns (metrics dict of floats, new carried state, finite flag)."""
        data = to_torch(batch, self.device)
        B, T = data["is_first"].shape
        state = self.wm.initial_state(B) if carried is None else carried
        if reset is not None and carried is not None:
            state = where_reset(torch.as_tensor(reset, device=self.device),
                                self.wm.initial_state(B), state)
        positions = torch.arange(self.start_stride - 1, T, self.start_stride, device=self.device)
        wm_loss, metrics, _, new_state, starts = self.wm.loss(data, state, positions)
        if not parallel.all_true(torch.isfinite(wm_loss)):
            return {}, None, False
        steps = []  # (network, its weight norms before/after the step): checked at the next sync
        with record_function("wm/backward_step"):
            metrics["wm/grad_norm"], norms = self._step(self.wm_opt, wm_loss, self.wm.parameters(),
                                                        self.wm_clip)
            steps.append(("world model", norms))
        if not torch.isfinite(metrics["wm/grad_norm"]):
            return {}, None, False

        start = detach(starts)
        start_cont = 1.0 - data["is_terminal"][:, positions].reshape(-1).float()  # (B*K,)
        actor_loss, critic_loss, ac_metrics = self.ac.loss(self.wm, start, start_cont)
        if not parallel.all_true(torch.isfinite(actor_loss) & torch.isfinite(critic_loss)):
            self._check_growth(steps)
            return {}, None, False  # the world model stepped; the actor-critic is left as it was
        with record_function("ac/backward_step"):
            metrics["ac/actor_grad_norm"], norms = self._step(
                self.actor_opt, actor_loss, self.ac.actor.parameters(), self.ac_clip)
            steps.append(("actor", norms))
            metrics["ac/critic_grad_norm"], norms = self._step(
                self.critic_opt, critic_loss, self.ac.critic.parameters(), self.ac_clip)
            steps.append(("critic", norms))
        if not (torch.isfinite(metrics["ac/actor_grad_norm"])
                and torch.isfinite(metrics["ac/critic_grad_norm"])):
            self._check_growth(steps)
            return {}, None, False
        self.ac.update_slow()
        metrics.update(ac_metrics)
        metrics["loss/world_model"] = wm_loss.detach()
        metrics["loss/actor"], metrics["loss/critic"] = actor_loss.detach(), critic_loss.detach()
        floats = {k: float(v) for k, v in metrics.items()}  # one device sync per update
        self._check_growth(steps)
        return floats, detach(new_state), True

    def _step(self, opt, loss, params, clip):
        """Backward, average over ranks, clip, step; a non-finite gradient norm skips the step
        (weights untouched). The norm is computed from the averaged gradients, so it is the same
        on every rank and so is the decision to skip. Returns (norm, weight norms before/after)."""
        params = list(params)
        opt.zero_grad(set_to_none=True)
        self.wm_opt.zero_grad(set_to_none=True)  # actor gradients through the model are discarded
        loss.backward()
        return optimizer_step(opt, params, clip)

    def _check_growth(self, steps) -> None:
        for network, norms in steps:
            check_growth(network, norms, self.sizes[network])

    # ---- checkpoint -------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        return {"model": self.state_dict(), "wm_opt": self.wm_opt.state_dict(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict()}

    def restore(self, ckpt: dict) -> None:
        self.load_state_dict(ckpt["model"])
        load_optimizer(self.wm_opt, ckpt["wm_opt"])
        load_optimizer(self.actor_opt, ckpt["actor_opt"])
        load_optimizer(self.critic_opt, ckpt["critic_opt"])


def build_agent(config, act_dim: int, discrete: bool, device, spaces: dict | None = None) -> Agent:
    """spaces: the env's observations {key: (shape, dtype)} (world_models.observation_keys picks
    the model's inputs); None: one RGB image."""
    c = config
    wm = build_world_model(c, act_dim, spaces=spaces)
    ac = ActorCritic(feat_size=wm.feat_size, act_dim=act_dim, discrete=discrete, units=c.ac.units,
                     layers=c.ac.layers, bins=c.wm.reward_bins, unimix=c.wm.unimix,
                     horizon=c.ac.horizon, gamma=c.ac.gamma, lam=c.ac.lam, entropy=c.ac.entropy,
                     grad=c.ac.actor_grad, slow_rate=c.ac.slow_critic_rate, slow_reg=c.ac.slow_reg,
                     retnorm_decay=c.ac.retnorm_decay, retnorm_limit=c.ac.retnorm_limit)
    agent = Agent(wm, ac, start_stride=c.ac.start_stride,
                  wm_opt={"lr": c.wm.lr, "eps": c.wm.eps, "weight_decay": c.wm.weight_decay,
                          "grad_clip": c.wm.grad_clip},
                  ac_opt={"actor_lr": c.ac.actor_lr, "critic_lr": c.ac.critic_lr,
                          "eps": c.ac.eps, "grad_clip": c.ac.grad_clip})
    return agent.to(device)
