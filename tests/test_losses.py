"""Hand-computed checks of the pure loss and return functions."""
import math

import pytest
import torch

from agent.returns import ReturnNorm, lambda_returns, trajectory_weight
from common.distributions import LatentSpace, TwoHot, symexp, symlog, twohot_bins, twohot_encode
from world_models import losses
from world_models.nets import image_to_unit


def test_symlog_symexp():
    x = torch.tensor([-100.0, -1.0, 0.0, 0.5, 1000.0])
    assert torch.allclose(symlog(x), torch.sign(x) * torch.log(1 + x.abs()))
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-5)
    assert symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)


def test_twohot_encode_splits_between_neighbours():
    bins = torch.tensor([-1.0, 0.0, 1.0, 2.0])
    w = twohot_encode(torch.tensor([0.25, 2.0, -5.0, 1.0]), bins)
    expected = torch.tensor([[0, 0.75, 0.25, 0], [0, 0, 0, 1.0], [1.0, 0, 0, 0], [0, 0, 1.0, 0]])
    assert torch.allclose(w, expected)


def test_twohot_mean_and_logprob():
    bins = twohot_bins(255)
    target = torch.tensor([3.7, -0.2, 0.0])
    logits = torch.log(twohot_encode(symlog(target), bins) + 1e-12)
    assert torch.allclose(TwoHot(logits, bins).mean(), target, atol=1e-4)
    # uniform logits: NLL = log(K) whatever the target
    nll = -TwoHot(torch.zeros(3, 255), bins).log_prob(target)
    assert torch.allclose(nll, torch.full((3,), math.log(255)), atol=1e-5)


def test_kl_balance_with_free_nats():
    lat = LatentSpace("categorical", stoch=1, classes=2, unimix=0.0)
    post = torch.log(torch.tensor([[[0.9, 0.1]]]))
    prior = torch.log(torch.tensor([[[0.5, 0.5]]]))
    kl = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # 0.368 nats
    dyn, rep, raw = losses.kl_balance(lat, post, prior, free_nats=0.0)
    assert dyn.item() == pytest.approx(kl, rel=1e-5) and rep.item() == pytest.approx(kl, rel=1e-5)
    dyn, rep, raw = losses.kl_balance(lat, post, prior, free_nats=1.0)
    assert dyn.item() == 1.0 and rep.item() == 1.0 and raw.item() == pytest.approx(kl, rel=1e-5)
    # gradients: dyn reaches only the prior, rep only the posterior
    post.requires_grad_(True), prior.requires_grad_(True)
    dyn, rep, _ = losses.kl_balance(lat, post, prior, free_nats=0.0)
    g_post, g_prior = torch.autograd.grad(dyn.sum(), [post, prior], allow_unused=True)
    assert g_post is None and g_prior.abs().sum() > 0


def test_unimix_floor():
    lat = LatentSpace("categorical", stoch=1, classes=4, unimix=0.01)
    probs = lat.dist(torch.tensor([[100.0, 0.0, 0.0, 0.0]])).base_dist.probs
    assert torch.allclose(probs[0, 0, 1:], torch.full((3,), 0.0025), atol=1e-6)


def test_image_loss_sums_squared_error_over_pixels():
    image = torch.full((1, 1, 2, 2, 3), 255, dtype=torch.uint8)
    pred = torch.zeros(1, 1, 2, 2, 3)  # target is 0.5 everywhere in [-0.5, 0.5] units
    assert losses.image_loss(pred, image_to_unit(image)).item() == pytest.approx(12 * 0.25)


def test_vector_loss_is_symlog_squared_error_summed_over_dims():
    e = math.e
    # targets symlog to [1, 0, -2] and [ln 11, 0, 0]; predictions live in symlog space
    target = torch.tensor([[[e - 1, 0.0, -(e ** 2 - 1)], [10.0, 0.0, 0.0]]])  # (B=1, T=2, N=3)
    pred = torch.tensor([[[0.5, 1.0, -2.0], [0.0, 0.0, 0.0]]])
    loss = losses.vector_loss(pred, target)
    assert loss.shape == (1, 2)
    torch.testing.assert_close(loss, torch.tensor([[0.25 + 1.0 + 0.0, math.log(11) ** 2]]))
    # a perfect prediction of a large value costs nothing (a plain MSE on symexp would not be 0
    # for a prediction off by one symlog unit: symlog keeps large targets on a unit scale)
    big = torch.tensor([[[1000.0]]])
    assert losses.vector_loss(symlog(big), big).item() == pytest.approx(0.0, abs=1e-8)
    assert losses.vector_loss(symlog(big) + 1, big).item() == pytest.approx(1.0)


def test_combine_requires_a_scale_per_term():
    terms = {"a": torch.ones(2, 3), "b": torch.full((2, 3), 2.0)}
    loss, metrics = losses.combine(terms, {"a": 1.0, "b": 0.5})
    assert loss.item() == pytest.approx(2.0) and metrics["loss/b"].item() == 2.0
    with pytest.raises(KeyError):
        losses.combine(terms, {"a": 1.0})


def test_lambda_returns_hand_computed():
    reward = torch.tensor([[1.0, 2.0]])
    cont = torch.tensor([[1.0, 1.0]])
    value = torch.tensor([[0.0, 10.0, 20.0]])
    g, lam = 0.5, 0.5
    r1 = 2.0 + g * 20.0  # R_1 = r_2 + g v_2 = 12
    r0 = 1.0 + g * ((1 - lam) * 10.0 + lam * r1)  # 1 + 0.5 * (5 + 6) = 6.5
    out = lambda_returns(reward, cont, value, g, lam)
    assert torch.allclose(out, torch.tensor([[r0, r1]]))
    # a terminal step cuts the bootstrap: R_1 = r_2 only
    out = lambda_returns(reward, torch.tensor([[1.0, 0.0]]), value, g, lam)
    assert out[0, 1].item() == 2.0
    # lam = 0 is one-step TD, lam = 1 is the discounted Monte-Carlo sum with a final bootstrap
    assert torch.allclose(lambda_returns(reward, cont, value, g, 0.0), torch.tensor([[6.0, 12.0]]))
    assert torch.allclose(lambda_returns(reward, cont, value, g, 1.0),
                          torch.tensor([[1 + 0.5 * 2 + 0.25 * 20, 12.0]]))


def test_trajectory_weight():
    cont = torch.tensor([[1.0, 0.0, 1.0]])
    w = trajectory_weight(cont, 0.5, torch.tensor([1.0]))
    assert torch.allclose(w, torch.tensor([[1.0, 0.5, 0.0]]))


def test_nonfinite_returns_do_not_poison_the_normaliser():
    from agent.actor_critic import ActorCritic
    norm = ReturnNorm()
    norm.track(torch.arange(101.0))
    ac = ActorCritic(feat_size=4, act_dim=2, discrete=True, units=8, layers=1, bins=5)
    ac.retnorm = norm

    class BadModel:  # imagined rewards are NaN
        def imagine(self, start, policy, horizon, final_state=True):
            feat = torch.zeros(3, horizon + 1, 4)
            actions = torch.stack([policy(feat[:, t]) for t in range(horizon)], 1)
            return {"feat": feat, "action": actions}
        reward = staticmethod(lambda f: torch.full(f.shape[:-1], float("nan")))
        cont = staticmethod(lambda f: torch.ones(f.shape[:-1]))
    actor_loss, _, _ = ac.loss(BadModel(), {}, torch.ones(3))
    assert not torch.isfinite(actor_loss) and norm.range.item() == pytest.approx(90.0)


def test_return_norm_percentile_range():
    norm = ReturnNorm(decay=0.5, limit=1.0)
    x = torch.arange(101, dtype=torch.float32)  # 5th..95th percentile = 5..95, range 90
    norm.track(x)
    assert norm.range.item() == pytest.approx(90.0)
    norm.track(x * 0.0)  # range 0 -> EMA halves it
    assert norm.range.item() == pytest.approx(45.0)
    norm.track(torch.zeros(10)), norm.track(torch.zeros(10)), norm.track(torch.zeros(10))
    norm.track(torch.zeros(10)), norm.track(torch.zeros(10)), norm.track(torch.zeros(10))
    assert norm.scale().item() == 1.0  # small returns are not amplified


def test_onehot_sampler_draws_the_inverse_cdf_class():
    """The binary search picks the class the plain inverse CDF picks from the same uniform draws
    ((cdf < u) counted per row), ties and zero-probability classes included; without a gradient
    the sample is the bare one-hot."""
    from common.distributions import sample_onehot
    probs = torch.rand(300, 32, 16) ** 4
    probs[:, :, 3] = 0.0  # a zero-probability class between others
    torch.manual_seed(1)
    z = sample_onehot(probs)
    torch.manual_seed(1)
    u = torch.rand(300, 32, 1)
    cdf = probs.cumsum(-1)
    index = (cdf < u * cdf[..., -1:]).sum(-1).clamp(max=15)
    assert torch.equal(z, torch.nn.functional.one_hot(index, 16).float())
    assert not z.requires_grad and z[..., 3].sum() == 0


def test_latent_probs_equal_the_distribution_probs():
    lat = LatentSpace("categorical", 4, 8, unimix=0.01)
    stats = torch.randn(5, 32) * 3
    torch.testing.assert_close(lat.probs(stats), lat.dist(stats).base_dist.probs)


def test_onehot_sampler_matches_probabilities_and_passes_gradients():
    from common.distributions import sample_onehot
    torch.manual_seed(0)
    probs = torch.tensor([0.1, 0.6, 0.0, 0.3]).expand(200_000, 4).clone().requires_grad_(True)
    z = sample_onehot(probs)
    assert torch.allclose(z.detach().sum(-1), torch.ones(200_000))
    assert ((z.detach() - z.detach().round()).abs() < 1e-6).all()  # one-hot values
    freq = z.detach().mean(0)
    assert torch.allclose(freq, torch.tensor([0.1, 0.6, 0.0, 0.3]), atol=0.005)
    (z * torch.arange(4.0)).sum().backward()  # straight-through: d z / d probs = identity
    assert torch.allclose(probs.grad[0], torch.arange(4.0))
