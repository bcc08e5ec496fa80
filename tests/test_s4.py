"""S4D layer and S4Core: convolution mode == step mode == slow reference, chunks, resets, states_at.

Sizes are tiny and dt is large (0.05..0.5) so decays and phases differ visibly from 1 per step: an
off-by-one power of dA, a leak across a reset or a dropped initial state changes outputs by O(0.1).
"""
import pytest
import torch

from common.tree import tree_map
from world_models.s4wm import S4D, S4Core, next_fast_len, segment_conv

TOL = {torch.float64: 1e-8, torch.float32: 1e-4}
CPLX = {torch.float64: torch.complex128, torch.float32: torch.complex64}
B, T, H, N = 3, 37, 8, 12


def resets(B, T):
    """is_first with a reset at t=0 (row 1), mid-chunk, consecutive (row 2) and at the last step."""
    f = torch.zeros(B, T, dtype=torch.bool)
    f[0, 9] = True
    f[1, 0] = f[1, 20] = f[1, T - 1] = True
    f[2, 5] = f[2, 6] = f[2, 30] = True
    return f


def layer(dtype, init='lin'):
    torch.manual_seed(0)
    return S4D(H, N, dt_min=0.05, dt_max=0.5, init=init).to(dtype)


def core(dtype, init='lin'):
    torch.manual_seed(0)
    return S4Core(d_model=H, n_blocks=2, d_state=N, dt_min=0.05, dt_max=0.5, init=init).to(dtype)


def step_core(model, g, is_first, state):
    hs = []
    for t in range(g.shape[1]):
        h, state = model.step(g[:, t], state, is_first[:, t])
        hs.append(h)
    return torch.stack(hs, 1), state


def assert_close(a, b, tol):
    for x, y in zip(a, b) if isinstance(a, list) else [(a, b)]:
        assert (x - y).abs().max().item() < tol, (x - y).abs().max().item()


def test_next_fast_len():
    assert [next_fast_len(n) for n in (1, 7, 14, 74, 128, 2002)] == [1, 8, 15, 75, 128, 2025]


def test_zoh_discretisation_and_init():
    m = S4D(4, 6, dt_min=1e-3, dt_max=1e-1, init='lin').double()
    dt = m.log_dt.exp()
    assert ((dt >= 1e-3) & (dt <= 1e-1)).all()
    assert torch.allclose(m.A_imag[0], torch.pi * torch.arange(3, dtype=torch.float64))
    with torch.no_grad():
        dtA, dA, dB, _ = m.discrete()
    A, dt = dtA / dt[:, None].detach(), dt.detach()
    for h in range(4):  # ZOH: exp(dt [[A, 1], [0, 0]]) = [[dA, dB], [0, 1]]
        for n in range(3):
            M = torch.tensor([[A[h, n], 1], [0, 0]], dtype=torch.complex128) * dt[h]
            E = torch.linalg.matrix_exp(M)
            assert torch.allclose(E[0, 0], dA[h, n]) and torch.allclose(E[0, 1], dB[h, n])


def test_segment_conv_matches_direct_sum():
    torch.manual_seed(1)
    u, k = torch.randn(3, 3, 11, dtype=torch.float64), torch.randn(3, 11, dtype=torch.float64)
    seg = torch.tensor([[0] * 4 + [1] * 7, [0] * 11, [0, 0, 1, 2, 2, 2, 3, 3, 3, 3, 3]])
    y = segment_conv(u, k, seg)
    for b in range(3):
        for t in range(11):
            ref = sum(k[:, t - s] * u[b, :, s] for s in range(t + 1) if seg[b, s] == seg[b, t])
            assert torch.allclose(y[b, :, t], ref, atol=1e-12)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('init', ['lin', 'inv'])
def test_layer_conv_equals_step(dtype, init):
    m = layer(dtype, init)
    u, f = torch.randn(B, T, H, dtype=dtype), resets(B, T)
    x0 = torch.randn(B, H, N // 2, dtype=CPLX[dtype])
    y, xT, _ = m(u, f, x0)
    x, ys = x0, []
    for t in range(T):
        yt, x = m.step(u[:, t], x, f[:, t])
        ys.append(yt)
    assert_close(y, torch.stack(ys, 1), TOL[dtype])
    assert_close(xT, x, TOL[dtype])


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_core_conv_equals_step(dtype):
    m = core(dtype)
    g, f = torch.randn(B, T, H, dtype=dtype), resets(B, T)
    s0 = tree_map(lambda s: torch.randn_like(s), m.initial_state(B))
    h, sT, _ = m(g, f, s0)
    h_step, s_step = step_core(m, g, f, s0)
    assert_close(h, h_step, TOL[dtype])
    assert_close(sT, s_step, TOL[dtype])


def test_chunks_with_state_handover_equal_one_pass():
    m = core(torch.float64)
    g, f = torch.randn(B, T, H, dtype=torch.float64), resets(B, T)
    h, sT, _ = m(g, f, m.initial_state(B))
    state, hs = m.initial_state(B), []
    for lo, hi in [(0, 9), (9, 10), (10, 26), (26, T)]:  # a chunk border right at the t=9 reset
        hc, state, _ = m(g[:, lo:hi], f[:, lo:hi], state)
        hs.append(hc)
    assert_close(h, torch.cat(hs, 1), 1e-8)
    assert_close(sT, state, 1e-8)


def test_resets_equal_separate_episodes():
    m = core(torch.float64)
    g = torch.randn(B, T, H, dtype=torch.float64)
    f = torch.zeros(B, T, dtype=torch.bool)
    f[:, 0] = f[:, 15] = True
    junk = tree_map(lambda s: 5 * torch.randn_like(s), m.initial_state(B))  # must be ignored
    h, sT, _ = m(g, f, junk)
    h1, _, _ = m(g[:, :15], f[:, :15], m.initial_state(B))
    h2, s2, _ = m(g[:, 15:], torch.zeros(B, T - 15, dtype=torch.bool), m.initial_state(B))
    assert_close(h, torch.cat([h1, h2], 1), 1e-8)
    assert_close(sT, s2, 1e-8)


def test_conv_matches_reference_outputs_and_gradients():
    m = layer(torch.float64)
    u = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(B, H, N // 2, dtype=torch.complex128, requires_grad=True)
    f, w = resets(B, T), torch.randn(B, T, H, dtype=torch.float64)
    pos = torch.tensor([0, 9, 20, 5, T - 1, 9])
    y, xT, at = m(u, f, x0, pos)
    y_ref, xs_ref = m.forward_reference(u, f, x0)
    at_ref = xs_ref[:, pos].reshape(B * len(pos), H, N // 2)
    assert_close([y, xT, at], [y_ref, xs_ref[:, -1], at_ref], 1e-8)
    grads = []
    for out, last, states in [(y, xT, at), (y_ref, xs_ref[:, -1], at_ref)]:
        loss = (out * w).sum() + (last * last.conj()).real.sum() + states.abs().sum()
        grads.append(torch.autograd.grad(loss, [u, x0, *m.parameters()]))
    for g_fast, g_ref in zip(*grads):
        assert_close(g_fast, g_ref, 1e-8)


def test_states_at_equal_stepped_states_and_continue():
    m = core(torch.float64)
    g, f = torch.randn(B, T, H, dtype=torch.float64), resets(B, T)
    s0 = tree_map(lambda s: torch.randn_like(s), m.initial_state(B))
    pos = torch.tensor([0, 8, 9, 20, T - 1, 3])
    h, _, at = m(g, f, s0, pos)
    state, stepped = s0, []
    for t in range(T):
        _, state = m.step(g[:, t], state, f[:, t])
        stepped.append(state)
    for k, p in enumerate(pos.tolist()):
        start = tree_map(lambda s: s.reshape(B, len(pos), *s.shape[1:])[:, k], at)  # (B, ...) b-major rows
        assert_close(start, stepped[p], 1e-8)
        if p < T - 1:  # imagination from states_at(p) continues exactly like the full sequence
            h_cont, _ = step_core(m, g[:, p + 1:], f[:, p + 1:], start)
            assert_close(h_cont, h[:, p + 1:], 1e-8)


def test_gradients_reach_every_parameter():
    m = core(torch.float32)
    g, f = torch.randn(B, T, H, requires_grad=True), resets(B, T)
    s0 = tree_map(lambda s: torch.randn_like(s), m.initial_state(B))
    h, sT, _ = m(g, f, s0)
    (h.square().mean() + sum(s.abs().mean() for s in sT)).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert g.grad.abs().sum() > 0


def test_bad_init_fails_in_one_line():
    with pytest.raises(ValueError, match="'lin', 'inv'"):
        S4Core(d_model=H, d_state=N, init='legs')
