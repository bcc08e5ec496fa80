"""Contract tests over every backbone: shapes, state hand-over, gradients, learning a tiny task."""
import numpy as np
import pytest
import torch

from common.config import ConfigError, load_blocks, merge
from common.distributions import symlog
from world_models import BACKBONES, build_world_model, observation_keys
from world_models.base import WorldModel

BACKBONE_NAMES = list(BACKBONES)


def make(backbone, **over):
    config = merge(load_blocks(), ["debug", backbone], over)
    torch.manual_seed(0)
    return build_world_model(config, act_dim=3), config


def batch(B=3, T=12, seed=0, first_at=(0,)):
    g = torch.Generator().manual_seed(seed)
    data = {
        "image": torch.randint(0, 256, (B, T, 64, 64, 3), generator=g, dtype=torch.uint8),
        "action": torch.nn.functional.one_hot(torch.randint(0, 3, (B, T), generator=g), 3).float(),
        "reward": torch.randn(B, T, generator=g),
        "is_first": torch.zeros(B, T, dtype=torch.bool),
        "is_terminal": torch.zeros(B, T, dtype=torch.bool),
    }
    for t in first_at:
        data["is_first"][:, t] = True
        data["action"][:, t] = 0
    return data


def deterministic(wm):
    """Latents from the mode instead of a sample, so different code paths can be compared."""
    wm.latent.sample = wm.latent.mode
    return wm


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_shapes_and_gradients_reach_every_parameter(backbone):
    wm, config = make(backbone, **{"loss.free_nats": "0.0"})  # free nats would mute the KL at init
    B, T = 3, 12
    data = batch(B, T)
    positions = torch.arange(1, T, 4)
    loss, metrics, out, state, starts = wm.loss(data, wm.initial_state(B), positions)
    Z, D = wm.latent.size, config.wm.d_model
    assert out["z"].shape == (B, T, Z) and out["h"].shape == (B, T, D)
    assert out["post"].shape == out["prior"].shape == (B, T, wm.latent.stats_size)
    assert state["h"].shape == (B, D) and starts["h"].shape == (B * len(positions), D)
    assert set(metrics) >= {"loss/image", "loss/reward", "loss/cont", "loss/dyn", "loss/rep"}
    _every_parameter_learns_and_imagines(wm, loss, starts)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_chunked_observation_equals_one_pass(backbone):
    """Observing a sequence in two chunks with the state handed over gives the same posterior and
    prior as one pass (forward values; for RSSM the TBTT detach changes gradients only)."""
    wm = deterministic(make(backbone, **{"tssm.mem_len": "16"})[0])
    data = batch(2, 12, first_at=(0, 7))
    embed = wm.encoder(data["image"])
    args = lambda sl: (embed[:, sl], data["action"][:, sl], data["is_first"][:, sl])
    with torch.no_grad():
        full, _, _ = wm.observe(*args(slice(0, 12)), wm.initial_state(2))
        a, state, _ = wm.observe(*args(slice(0, 5)), wm.initial_state(2))
        b, _, _ = wm.observe(*args(slice(5, 12)), state)
    for key in ("prior", "h", "z"):
        torch.testing.assert_close(torch.cat([a[key], b[key]], 1), full[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_imagination_from_parallel_context_equals_stepwise_context(backbone):
    """Parallel context then recurrent generation == step-by-step context then generation."""
    wm = deterministic(make(backbone, **{"tssm.mem_len": "16"})[0])
    data = batch(2, 10)
    embed = wm.encoder(data["image"])
    actions = data["action"][:, 1:6]
    with torch.no_grad():
        _, par_state, _ = wm.observe(embed, data["action"], data["is_first"], wm.initial_state(2))
        state = wm.initial_state(2)
        for t in range(10):
            sl = slice(t, t + 1)
            _, state, _ = wm.observe(embed[:, sl], data["action"][:, sl], data["is_first"][:, sl],
                                     state)
        par = wm.imagine(par_state, actions, 5)["feat"]
        rec = wm.imagine(state, actions, 5)["feat"]
    torch.testing.assert_close(par, rec, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_start_states_continue_like_the_sequence(backbone):
    """Imagining from the start state at position t with the recorded action a_{t+1} gives the same
    prior at t+1 as observing the sequence (latents from modes, so both paths are deterministic)."""
    wm = deterministic(make(backbone, **{"tssm.mem_len": "16"})[0])
    data = batch(2, 10, first_at=(0, 4))
    positions = torch.tensor([2, 5, 8])
    with torch.no_grad():
        out, _, starts = wm.observe(wm.encoder(data["image"]), data["action"], data["is_first"],
                                    wm.initial_state(2), positions)
        # the start state holds z_t of the posterior: one imagined step with a_{t+1} reproduces h_{t+1}
        nxt = wm.img_step(starts, data["action"][:, positions + 1].reshape(6, 3))
    torch.testing.assert_close(nxt["h"], out["h"][:, positions + 1].reshape(6, -1),
                               atol=1e-4, rtol=1e-4)


def caches_for_imagination(backbone) -> bool:
    """Whether the backbone's imagination differs from plain img_steps: it caches img_params()
    or steps a rollout form of its own (img_begin). RSSM does neither, so comparing its imagine
    with plain steps would run the same code on both sides."""
    wm = make(backbone)[0]
    own_begin = type(wm).img_begin is not WorldModel.img_begin
    return own_begin or wm.img_params() is not None


@pytest.mark.parametrize("backbone", [b for b in BACKBONE_NAMES if caches_for_imagination(b)])
def test_imagine_with_cached_params_equals_plain_steps(backbone):
    """imagine computes img_params() once per rollout; it equals img_step recomputing them, with
    sampled latents (same seed) and gradients to the start state and the parameters."""
    wm = make(backbone)[0]
    data = batch(2, 8)
    with torch.no_grad():
        _, _, starts = wm.observe(wm.encoder(data["image"]), data["action"], data["is_first"],
                                  wm.initial_state(2), torch.tensor([3, 7]))
    starts["h"].requires_grad_(True)
    actions = torch.nn.functional.one_hot(torch.arange(4 * 5) % 3, 3).float().reshape(4, 5, 3)
    torch.manual_seed(1)
    fast = wm.imagine(starts, actions, 5)["feat"]
    torch.manual_seed(1)
    state, feats = starts, [wm.feat(starts)]
    for t in range(5):
        state = wm.img_step(state, actions[:, t])
        feats.append(wm.feat(state))
    plain = torch.stack(feats, 1)
    if backbone != "s4wm":
        assert torch.equal(fast, plain)
    # S4WM imagines in the convolution form (S4DRollout.rollout_begin): equal to float32 rounding
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    grads = [torch.autograd.grad(f.square().sum(), [starts["h"], *wm.parameters()],
                                 allow_unused=True) for f in (fast, plain)]
    for a, b in zip(*grads):
        # float32 rounding relative to the tensor's scale (the float64 identity is test_ssm_cores)
        assert (a is None and b is None) or (a - b).abs().max() <= 1e-4 * a.abs().max() + 1e-7


def moving_square(B, T, seed):
    """A white square moving right by 4 px per step on black, from a random start row/column."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(B, T, 64, 64, 3, dtype=torch.uint8)
    rows = torch.randint(0, 48, (B,), generator=g)
    cols = torch.randint(0, 16, (B,), generator=g)
    for b in range(B):
        for t in range(T):
            c = int(cols[b]) + 4 * t
            images[b, t, rows[b]:rows[b] + 12, c:c + 12] = 255
    data = batch(B, T, seed)
    data["image"], data["reward"] = images, torch.zeros(B, T)
    return data


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_learns_a_tiny_sequence_task(backbone):
    """Reconstruction of a moving square must beat the best constant image by 2x within 150 steps.
    The per-pixel mean image already explains the black background, so only a model whose latent
    carries the square's position gets below half of its error."""
    torch.manual_seed(0)
    wm, _ = make(backbone, **{"wm.stoch": "8", "wm.classes": "8"})  # 4x4 latents learn too slowly
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)
    data = moving_square(8, 12, seed=0)
    target = data["image"].float() / 255
    baseline = (target - target.mean((0, 1), keepdim=True)).pow(2).sum((-3, -2, -1)).mean().item()
    for _ in range(150):
        loss, metrics, *_ = wm.loss(data, wm.initial_state(8))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert metrics["loss/image"].item() < 0.5 * baseline, (metrics["loss/image"].item(), baseline)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_gaussian_latents_work_for_every_backbone(backbone):
    wm, _ = make(backbone, **{"wm.latent": "gaussian", "loss.free_nats": "0.0"})
    data = batch(2, 8)
    loss, metrics, out, _, starts = wm.loss(data, wm.initial_state(2), torch.tensor([3, 7]))
    assert out["z"].shape == (2, 8, wm.latent.size) and torch.isfinite(loss)
    loss.backward()
    assert wm.prior_net.net[-1].weight.grad.abs().sum() > 0
    im = wm.imagine(starts, lambda f: torch.zeros(f.shape[0], 3), horizon=3)
    assert torch.isfinite(im["feat"]).all()


def test_entropy_metrics_without_graph_equal_entropies():
    """The entropy metrics carry no graph and equal -sum p log p over the classes (with unimix),
    summed over the latent variables: computed here from the probabilities, not by the
    distribution object the metrics use."""
    wm = make("s5wm")[0]
    torch.manual_seed(0)
    _, metrics, out, _, _ = wm.loss(batch(2, 6), wm.initial_state(2))
    for key, stats in (("post_entropy", out["post"]), ("prior_entropy", out["prior"])):
        assert not metrics[key].requires_grad
        p = wm.latent.probs(stats.detach())  # (B, T, S, C)
        expected = -(p * p.log()).sum((-2, -1)).mean()
        torch.testing.assert_close(metrics[key], expected, rtol=1e-5, atol=1e-5)


# ---- vector observations (wm.cnn_keys / wm.mlp_keys) -------------------------------------------

VECTORS = {"position": ((3,), np.float32), "velocity": ((2,), np.float32)}
IMAGE = {"image": ((64, 64, 3), np.uint8)}


def make_vector_model(backbone, image=False, **over):
    """A world model on the vectors of VECTORS (and the image when `image`), chosen by regex."""
    over = {"wm.cnn_keys": "image" if image else "", "wm.mlp_keys": ".*", **over}
    config = merge(load_blocks(), ["debug", backbone], over)
    torch.manual_seed(0)
    spaces = {**VECTORS, **(IMAGE if image else {})}
    return build_world_model(config, act_dim=3, spaces=spaces), config


def with_vectors(data, seed=0, scale=10.0):
    """`data` plus position (B, T, 3) and velocity (B, T, 2) float32 of scale ~`scale`."""
    B, T = data["is_first"].shape
    g = torch.Generator().manual_seed(seed)
    return {**data, "position": scale * torch.randn(B, T, 3, generator=g),
            "velocity": scale * torch.randn(B, T, 2, generator=g)}


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
def test_vector_observations_alone_shapes_and_gradients(backbone):
    """Vectors only: no CNN at all, the MLP embedding feeds this backbone's posterior, the vector
    decoder's symlog error is the reconstruction term, and every parameter gets gradient."""
    wm, config = make_vector_model(backbone, **{"loss.free_nats": "0.0"})
    assert wm.encoder is None and wm.decoder is None
    assert wm.obs_keys == ("position", "velocity") and wm.embed_size == config.wm.units
    B, T = 3, 12
    data = with_vectors(batch(B, T))
    del data["image"]
    assert wm.embed(data).shape == (B, T, config.wm.units)
    positions = torch.arange(1, T, 4)
    loss, metrics, out, _, starts = wm.loss(data, wm.initial_state(B), positions)
    assert "loss/vector" in metrics and "loss/image" not in metrics
    pred = wm.vector_decoder.split(wm.vector_decoder(wm.feat(out)))
    assert pred["position"].shape == (B, T, 3) and pred["velocity"].shape == (B, T, 2)
    _every_parameter_learns_and_imagines(wm, loss, starts)


def test_image_and_vectors_are_both_encoded_and_decoded():
    wm, config = make_vector_model("s5wm", image=True)
    assert wm.obs_keys == ("image", "position", "velocity")
    data = with_vectors(batch(2, 6))
    E = wm.encoder.out_size
    assert wm.embed_size == E + config.wm.units
    embed = wm.embed(data)  # (B, T, E + units): CNN part, then vector part
    moved = wm.embed({**data, "position": data["position"] + 5.0})
    assert torch.equal(moved[..., :E], embed[..., :E])  # the CNN part does not see the vectors
    assert not torch.equal(moved[..., E:], embed[..., E:])
    _, metrics, *_ = wm.loss(data, wm.initial_state(2))
    assert {"loss/image", "loss/vector"} <= set(metrics)
    assert metrics["loss/vector"] > 0 and torch.isfinite(metrics["loss/vector"])


def test_learns_vector_observations_of_a_large_scale():
    """A vectors-only model must reconstruct 100 sin(w t + phase) (a random phase per sequence)
    to below 15% of the best constant prediction's symlog error within 80 steps (it reaches ~6%);
    a model that does not infer the phase stays near 100%, whatever it learns about t."""
    torch.manual_seed(0)
    wm, _ = make_vector_model("rssm", **{"wm.stoch": "8", "wm.classes": "8"})
    B, T = 8, 12
    phase = torch.rand(B, 1, 1) * 6.28
    t = torch.arange(T).float().reshape(1, T, 1)
    data = batch(B, T)
    del data["image"]
    data.update(position=100 * torch.sin(0.5 * t + phase + torch.tensor([0.0, 1.0, 2.0])),
                velocity=100 * torch.cos(0.5 * t + phase + torch.tensor([0.0, 1.0])),
                reward=torch.zeros(B, T))
    target = torch.cat([symlog(data["position"]), symlog(data["velocity"])], -1)  # (B, T, 5)
    baseline = (target - target.mean((0, 1))).square().sum(-1).mean().item()
    opt = torch.optim.Adam(wm.parameters(), lr=3e-3)
    for _ in range(80):
        loss, metrics, *_ = wm.loss(data, wm.initial_state(B))
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = metrics["loss/vector"].item()
    assert final < 0.15 * baseline, (final, baseline)


SPACES = {"image": ((64, 64, 3), np.uint8), "position": ((3,), np.float32),
          "velocity": ((2,), np.float64), "goal": ((), np.int64), "is_first": ((), bool),
          "action": ((3,), np.float32)}


@pytest.mark.parametrize("cnn, mlp, image, vectors", [
    ("image", "", "image", {}),                                   # the default: pixels only
    ("", ".*", None, {"position": 3, "velocity": 2}),             # every vector, no image
    (".*", ".*", "image", {"position": 3, "velocity": 2}),        # each key goes by its kind
    ("image", "pos.*", "image", {"position": 3}),                 # full match of the regex
    ("", "pos", None, {}),                                        # 'pos' is not 'position'
])
def test_observation_keys_are_chosen_by_regex_and_kind(cnn, mlp, image, vectors):
    config = merge(load_blocks(), ["debug"], {"wm.cnn_keys": cnn, "wm.mlp_keys": mlp})
    if image is None and not vectors:
        with pytest.raises(ConfigError) as err:
            observation_keys(config, SPACES)
        message = str(err.value)
        assert "match no image" in message and "position (3,)" in message and "\n" not in message
        assert "is_first" not in message and "action" not in message  # not observations
        return
    assert observation_keys(config, SPACES) == (image, vectors)


def test_observation_key_errors_are_one_line():
    config = merge(load_blocks(), ["debug"], {"wm.cnn_keys": ".*"})
    two = {**SPACES, "depth": ((64, 64, 1), np.uint8)}
    with pytest.raises(ConfigError, match=r"matches several images \(image, depth\)"):
        observation_keys(config, two)
    with pytest.raises(ConfigError, match="'wm.mlp_keys' has '\\[', not a regular expression"):
        merge(load_blocks(), ["debug"], {"wm.mlp_keys": "["})


def _every_parameter_learns_and_imagines(wm, loss, starts):
    """Every parameter gets gradient from `loss` (the reward head's zero-initialised output layer
    passes none to the layers below it on the first step), and a rollout from `starts` works."""
    loss.backward()
    dead = [n for n, p in wm.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    dead = [n for n in dead if not n.startswith("reward_head.net.") or n.endswith("net.3.weight")]
    assert not dead, dead
    N = starts["h"].shape[0]
    im = wm.imagine(starts, lambda f: torch.zeros(f.shape[0], 3), horizon=4)
    assert im["feat"].shape == (N, 5, wm.feat_size)
