"""S4Core and S5Core against the SequenceCore contract: parallel == step, chunks with the state
handed over == one pass, resets == separate episodes, states_at == stepped states, gradients."""
import copy

import pytest
import torch

from common.tree import detach, tree_map, where_reset
from tests.core_helpers import TOL, assert_close, resets, step_core
from world_models.s4d_rollout import S4DStart, S4DWindow
from world_models.s4wm import S4Core
from world_models.s5wm import S5Core

B, T, H, N = 3, 37, 8, 12
# Large dt (0.05..0.5): an off-by-one power, a leak across a reset or a dropped initial state
# changes outputs by O(0.1), far above the tolerances.
CORES = {
    "s4": lambda: S4Core(d_model=H, n_blocks=2, d_state=N, dt_min=0.05, dt_max=0.5, init="lin"),
    "s5": lambda: S5Core(d_model=H, n_blocks=2, d_state=N, dt_min=0.05, dt_max=0.5, init="hippo"),
}


# Cores with a rollout form of their own (rollout_begin/rollout_end not the identity): S4's
# convolution windows. S5 steps its plain state in imagination, so a rollout test of S5 would run
# the same code on both sides of the comparison.
ROLLOUT_CORES = ["s4"]


def core(name, dtype):
    torch.manual_seed(0)
    return CORES[name]().to(dtype)


def noisy_state(m):
    return tree_map(lambda s: torch.randn_like(s), m.initial_state(B))


@pytest.mark.parametrize("name", CORES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_parallel_equals_step(name, dtype):
    m = core(name, dtype)
    g, f = torch.randn(B, T, H, dtype=dtype), resets(B, T)
    s0 = noisy_state(m)
    h, sT, _ = m(g, f, s0)
    h_step, s_step = step_core(m, g, f, s0)
    assert_close(h, h_step, TOL[dtype])
    assert_close(sT, s_step, TOL[dtype])


@pytest.mark.parametrize("name", CORES)
def test_chunks_with_state_handover_equal_one_pass(name):
    m = core(name, torch.float64)
    g, f = torch.randn(B, T, H, dtype=torch.float64), resets(B, T)
    h, sT, _ = m(g, f, m.initial_state(B))
    state, hs = m.initial_state(B), []
    for lo, hi in [(0, 9), (9, 10), (10, 26), (26, T)]:  # a chunk border right at the t=9 reset
        hc, state, _ = m(g[:, lo:hi], f[:, lo:hi], state)
        hs.append(hc)
    assert_close(h, torch.cat(hs, 1), 1e-8)
    assert_close(sT, state, 1e-8)


@pytest.mark.parametrize("name", CORES)
def test_resets_equal_separate_episodes(name):
    m = core(name, torch.float64)
    g = torch.randn(B, T, H, dtype=torch.float64)
    f = torch.zeros(B, T, dtype=torch.bool)
    f[:, 0] = f[:, 15] = True
    junk = tree_map(lambda s: 5 * torch.randn_like(s), m.initial_state(B))  # must be ignored
    h, sT, _ = m(g, f, junk)
    h1, _, _ = m(g[:, :15], f[:, :15], m.initial_state(B))
    h2, s2, _ = m(g[:, 15:], torch.zeros(B, T - 15, dtype=torch.bool), m.initial_state(B))
    assert_close(h, torch.cat([h1, h2], 1), 1e-8)
    assert_close(sT, s2, 1e-8)


@pytest.mark.parametrize("name", CORES)
def test_states_at_equal_stepped_states_and_continue(name):
    m = core(name, torch.float64)
    g, f = torch.randn(B, T, H, dtype=torch.float64), resets(B, T)
    s0 = noisy_state(m)
    pos = torch.tensor([0, 8, 9, 20, T - 1, 3])
    h, _, at = m(g, f, s0, pos)
    at = m.rollout_end(at)  # S4: the lazy S4DStart's states
    state, stepped = s0, []
    for t in range(T):
        _, state = m.step(g[:, t], state, f[:, t])
        stepped.append(state)
    for k, p in enumerate(pos.tolist()):
        start = tree_map(lambda s: s.reshape(B, len(pos), *s.shape[1:])[:, k], at)  # b-major rows
        assert_close(start, stepped[p], 1e-8)
        if p < T - 1:  # imagination from states_at(p) continues exactly like the full sequence
            h_cont, _ = step_core(m, g[:, p + 1:], f[:, p + 1:], start)
            assert_close(h_cont, h[:, p + 1:], 1e-8)


@pytest.mark.parametrize("name", CORES)
def test_gradients_reach_every_parameter(name):
    m = core(name, torch.float32)
    g, f = torch.randn(B, T, H, requires_grad=True), resets(B, T)
    h, sT, _ = m(g, f, noisy_state(m))
    (h.square().mean() + sum(s.abs().mean() for s in sT)).backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert g.grad.abs().sum() > 0


@pytest.mark.parametrize("name", CORES)
def test_step_with_cached_params_equals_plain_step(name):
    """step_params() once per rollout (imagination) gives exactly what step recomputes per call."""
    m = core(name, torch.float64)
    g, f = torch.randn(B, T, H, dtype=torch.float64), resets(B, T)
    s0 = noisy_state(m)
    params = m.step_params()
    plain, cached = s0, s0
    for t in range(T):
        h_plain, plain = m.step(g[:, t], plain, f[:, t])
        h_cached, cached = m.step(g[:, t], cached, f[:, t], params=params)
        assert torch.equal(h_plain, h_cached)
        assert all(torch.equal(a, b) for a, b in zip(plain, cached))


@pytest.mark.parametrize("name", ROLLOUT_CORES)
def test_rollout_form_equals_plain_steps(name):
    """Imagination steps the core from rollout_begin's form (S4: the convolution form with windows
    of 16 steps folded back into the complex state); outputs, the final state after rollout_end and
    the gradients to the inputs, the start state and every parameter equal the plain step loop
    (float64, 40 steps: two folds and a partial window)."""
    m = core(name, torch.float64)
    steps = 40
    g = torch.randn(B, steps, H, dtype=torch.float64, requires_grad=True)
    s0 = [s.clone().requires_grad_(True) for s in noisy_state(m)]
    outs = {}
    for form in ("plain", "rollout"):
        params = m.step_params()
        state, hs = (s0 if form == "plain" else m.rollout_begin(s0, params)), []
        if form == "rollout":  # the fast path is really taken
            assert all(isinstance(x, S4DWindow) for x in state)
        for t in range(steps):
            h, state = m.step(g[:, t], state, params=params)
            hs.append(h)
        final = state if form == "plain" else m.rollout_end(state)
        h = torch.stack(hs, 1)
        loss = h.square().sum() + sum(s.abs().square().sum() for s in final)
        outs[form] = (h, final, torch.autograd.grad(loss, [g, *s0, *m.parameters()]))
    (h_p, f_p, g_p), (h_r, f_r, g_r) = outs["plain"], outs["rollout"]
    torch.testing.assert_close(h_r, h_p, rtol=1e-10, atol=1e-10)
    for a, b in zip(f_r, f_p):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_r, g_p):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ROLLOUT_CORES)
def test_rollout_from_states_at_after_a_parameter_update(name):
    """Imagination from the parallel pass's start states (S4: lazy S4DStart, whose first window
    reads the inputs, not the states, checked) after the parameters changed (the agent steps the
    world model before it imagines) == plain steps with the new parameters from the states the
    old parameters built: outputs over 40 steps (two folds) and every parameter's gradient,
    float64."""
    m = core(name, torch.float64)
    g, f = torch.randn(B, T, H, dtype=torch.float64), resets(B, T)
    pos = torch.tensor([T - 1, 0, 9, 20, 5])
    _, _, at = m(g, f, noisy_state(m), pos)
    at = detach(at)  # as the agent does (S4DStart: already detached, kept lazy)
    with torch.no_grad():  # an optimiser step between the world-model pass and imagination
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    lazy = [copy.copy(s) for s in at]  # S4: S4DStarts whose states are never built
    plain_start = [s.clone() for s in m.rollout_end(at)]  # built from the other copies
    g_img = torch.randn(B * len(pos), 40, H, dtype=torch.float64)
    outs = {}
    for form in ("plain", "rollout"):
        params = m.step_params()
        state = plain_start if form == "plain" else m.rollout_begin(lazy, params)
        if form == "rollout":  # the first window read the inputs, not states
            assert all(isinstance(s, S4DStart) and s._states is None for s in lazy)
        hs = []
        for t in range(40):
            h, state = m.step(g_img[:, t], state, params=params)
            hs.append(h)
        h = torch.stack(hs, 1)
        final = m.rollout_end(state)
        loss = h.square().sum() + sum(s.abs().square().sum() for s in final)
        outs[form] = (h, final, torch.autograd.grad(loss, list(m.parameters())))
    assert all(s._states is not None for s in lazy)  # the first fold (step 16) built them
    (h_p, f_p, g_p), (h_r, f_r, g_r) = outs["plain"], outs["rollout"]
    torch.testing.assert_close(h_r, h_p, rtol=1e-10, atol=1e-10)
    for a, b in zip([*f_r, *g_r], [*f_p, *g_p]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_tree_helpers_refuse_a_lazy_start_except_detach():
    """A LazyStart (S4WM's imagination starts) is not a tensor: `detach` keeps it lazy (it is
    detached by construction) and leaves its states unbuilt, while mapping, resetting or any other
    non-tensor leaf raise TypeError instead of passing it through silently."""
    m = core("s4", torch.float64)
    g, f = torch.randn(B, T, H, dtype=torch.float64), resets(B, T)
    _, final, at = m(g, f, m.initial_state(B), torch.tensor([3, 7]))
    assert all(isinstance(s, S4DStart) for s in at)
    kept = detach(at)
    assert all(k is s and s._states is None for k, s in zip(kept, at))
    with pytest.raises(TypeError, match="rollout_end"):
        tree_map(lambda x: x[:1], at)
    with pytest.raises(TypeError, match="rollout_end"):
        where_reset(torch.ones(B, dtype=torch.bool), final, at)
    with pytest.raises(TypeError, match="not int"):
        tree_map(lambda x: x, {"a": torch.zeros(1), "b": 3})
    built = m.rollout_end(at)  # tensors now: every helper takes them
    moved = tree_map(lambda x: x[:1], built)
    assert all(isinstance(x, torch.Tensor) and len(x) == 1 for x in moved)
