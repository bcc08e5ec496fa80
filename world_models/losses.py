"""World-model loss terms as pure functions. Each returns a (B, T) tensor named like its scale in the
`loss` config section (image, vector, reward, cont, dyn, rep); `combine` applies the scales in one
place."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from common.distributions import LatentSpace, TwoHot, symlog


def image_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gaussian NLL with unit variance up to a constant: squared error summed over pixels.
    pred, target (B, T, H, W, C) in [-0.5, 0.5] units (target = nets.image_to_unit(uint8 image))
    -> (B, T). One fused kernel each way (mse_loss): the images are the update's largest tensors."""
    return F.mse_loss(pred, target, reduction="none").sum((-3, -2, -1))


def vector_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Symlog squared error (DreamerV3's vector decoder): pred (B, T, N) in symlog space, target
    (B, T, N) in observation units -> sum over N of (pred - symlog(target))^2, (B, T)."""
    return (pred - symlog(target)).square().sum(-1)


def reward_loss(logits: torch.Tensor, reward: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Symlog twohot NLL: logits (B, T, K), reward (B, T) -> (B, T)."""
    return -TwoHot(logits, bins).log_prob(reward)


def cont_loss(logits: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """Bernoulli NLL of the continue flag (1 - is_terminal): logits (B, T), cont (B, T) -> (B, T)."""
    return F.binary_cross_entropy_with_logits(logits, cont, reduction="none")


def kl_balance(latent: LatentSpace, post: torch.Tensor, prior: torch.Tensor, free_nats: float):
    """DreamerV3 KL balancing with free nats.

    dyn = max(free, KL(sg(post) || prior)) trains the prior; rep = max(free, KL(post || sg(prior)))
    trains the posterior (DreamerV3, Hafner et al. 2023, eq. 5). post/prior stats (B, T, S) ->
    (dyn (B, T), rep (B, T), raw KL (B, T) for logging).
    """
    dyn = latent.kl(post.detach(), prior)
    rep = latent.kl(post, prior.detach())
    return dyn.clamp(min=free_nats), rep.clamp(min=free_nats), dyn.detach()


def combine(terms: dict, scales: dict) -> tuple[torch.Tensor, dict]:
    """Weighted sum of the (B, T) terms averaged over batch and time; scales keyed by term name."""
    missing = set(terms) - set(scales)
    if missing:
        raise KeyError(f"loss terms without a scale: {sorted(missing)}")
    loss = sum(scales[k] * v.mean() for k, v in terms.items())
    metrics = {f"loss/{k}": v.detach().mean() for k, v in terms.items()}
    return loss, metrics
