"""Pure functions of the actor-critic: lambda-returns, trajectory weights, return normalisation.

Imagined trajectory alignment (N start states, H steps):

    state    s_0   s_1   ...   s_H          value  v_0 .. v_H        (N, H+1)
    action   a_0   a_1   ...   a_{H-1}      a_t taken in s_t, leads to s_{t+1}
    reward         r_1   ...   r_H          r_t, c_t predicted from s_t  (N, H), index t-1
    return   R_0   R_1   ...   R_{H-1}      R_t = r_{t+1} + gamma c_{t+1} ((1-lam) v_{t+1} + lam R_{t+1})
                                             with R_H = v_H (bootstrap)
"""
from __future__ import annotations

import torch

from common import parallel


def lambda_returns(reward: torch.Tensor, cont: torch.Tensor, value: torch.Tensor,
                   gamma: float, lam: float) -> torch.Tensor:
    """reward, cont (N, H) for steps 1..H; value (N, H+1) for states 0..H -> returns (N, H)."""
    H = reward.shape[1]
    disc = gamma * cont  # (N, H)
    out, last = [], value[:, -1]
    for t in reversed(range(H)):
        last = reward[:, t] + disc[:, t] * ((1 - lam) * value[:, t + 1] + lam * last)
        out.append(last)
    return torch.stack(out[::-1], 1)  # (N, H)


def trajectory_weight(cont: torch.Tensor, gamma: float, start_cont: torch.Tensor) -> torch.Tensor:
    """Weight of each state 0..H-1: the discounted probability of having reached it.
    cont (N, H) for steps 1..H, start_cont (N,) -> (N, H)."""
    disc = gamma * cont[:, :-1]  # (N, H-1): transitions into states 1..H-1
    reach = torch.cumprod(torch.cat([start_cont.unsqueeze(1), disc], 1), 1)  # (N, H)
    return reach.detach()


class ReturnNorm(torch.nn.Module):
    """DreamerV3 return normalisation: an EMA of the 5th-95th percentile range of the returns; the
    actor's advantages are divided by max(limit, range), so large returns are scaled down while small
    ones are not amplified.

    Data parallel: the percentiles are taken over the returns of every rank (gathered), so the
    range is the same on all ranks and equals that of one process on the concatenated batch."""

    def __init__(self, decay: float = 0.99, limit: float = 1.0):
        super().__init__()
        self.decay, self.limit = decay, limit
        self.register_buffer("range", torch.zeros(()))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def track(self, returns: torch.Tensor) -> None:
        """Fold in a batch of returns (any shape); a batch with a non-finite return (on any rank)
        is ignored, so one bad batch can not poison the running range."""
        flat = parallel.all_gather_cat(returns.detach().float().flatten())  # (ranks * numel,)
        if not torch.isfinite(flat).all():
            return
        q = torch.quantile(flat, torch.tensor([0.05, 0.95], device=flat.device))
        span = q[1] - q[0]
        if not bool(self.initialised):
            self.range.copy_(span)
            self.initialised.fill_(True)
        else:
            self.range.mul_(self.decay).add_((1 - self.decay) * span)

    def scale(self) -> torch.Tensor:
        return torch.clamp(self.range, min=self.limit)
