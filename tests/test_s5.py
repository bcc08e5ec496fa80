"""S5 layer and S5Core: parallel scan == sequential loop, chunks, resets, states_at, gradients.

Tiny sizes, large dt (0.05..0.5) so an off-by-one, a leak across a reset or a dropped initial state
shows up as an O(0.1) difference.
"""
import pytest
import torch

from common.tree import tree_map
from world_models.s5wm import S5, S5Core, associative_scan, hippo_n_diag

TOL = {torch.float64: 1e-8, torch.float32: 1e-4}
CPLX = {torch.float64: torch.complex128, torch.float32: torch.complex64}
B, T, H, P = 3, 41, 8, 12


def resets(B, T):
    """is_first with a reset at t=0 (row 1), mid-chunk, consecutive (row 2) and at the last step."""
    f = torch.zeros(B, T, dtype=torch.bool)
    f[0, 9] = True
    f[1, 0] = f[1, 20] = f[1, T - 1] = True
    f[2, 5] = f[2, 6] = f[2, 32] = True
    return f


def layer(dtype, init='hippo'):
    torch.manual_seed(0)
    return S5(H, P, dt_min=0.05, dt_max=0.5, init=init).to(dtype)


def core(dtype, init='hippo'):
    torch.manual_seed(0)
    return S5Core(d_model=H, n_blocks=2, d_state=P, dt_min=0.05, dt_max=0.5, init=init).to(dtype)


def step_core(model, g, is_first, state):
    hs = []
    for t in range(g.shape[1]):
        h, state = model.step(g[:, t], state, is_first[:, t])
        hs.append(h)
    return torch.stack(hs, 1), state


def assert_close(a, b, tol):
    for x, y in zip(a, b) if isinstance(a, list) else [(a, b)]:
        assert (x - y).abs().max().item() < tol, (x - y).abs().max().item()


@pytest.mark.parametrize('T_scan', [1, 2, 7, 16, 33])
def test_associative_scan_equals_loop(T_scan):
    torch.manual_seed(T_scan)
    a = torch.randn(2, T_scan, 3, dtype=torch.complex128) * (torch.rand(2, T_scan, 1) > 0.2)
    b = torch.randn(2, T_scan, 3, dtype=torch.complex128)
    x, ref = torch.zeros(2, 3, dtype=torch.complex128), []
    for t in range(T_scan):
        x = a[:, t] * x + b[:, t]
        ref.append(x)
    assert_close(associative_scan(a, b), torch.stack(ref, 1), 1e-10)


def test_hippo_n_init_and_zoh():
    lam, V = hippo_n_diag(8)
    n = torch.arange(8, dtype=torch.float64)
    q = torch.sqrt(2 * n + 1)
    S = -(torch.tril(q[:, None] * q[None, :]) - torch.diag(n)) + torch.sqrt(n + .5)[:, None] * torch.sqrt(n + .5)
    S = S.to(torch.complex128)
    assert torch.allclose(S @ V, V * lam, atol=1e-10)  # eigenpairs of HiPPO-N
    assert torch.allclose(lam.real, torch.full((4,), -0.5, dtype=torch.float64))
    m = layer(torch.float64)
    with torch.no_grad():
        dA, dB, _ = m.discrete()
        dt, Bc = m.log_dt.exp(), torch.view_as_complex(m.B)
        lam = torch.complex(-m.log_lambda_real.exp(), m.lambda_imag)
    for p in range(P // 2):  # ZOH: exp(dt [[lambda, 1], [0, 0]]) = [[dA, dB / B], [0, 1]]
        E = torch.linalg.matrix_exp(torch.tensor([[lam[p], 1], [0, 0]]) * dt[p])
        assert torch.allclose(E[0, 0], dA[p]) and torch.allclose(E[0, 1] * Bc[p], dB[p])


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('init', ['hippo', 'lin'])
def test_layer_scan_equals_loop(dtype, init):
    m = layer(dtype, init)
    u, f = torch.randn(B, T, H, dtype=dtype), resets(B, T)
    x0 = torch.randn(B, P // 2, dtype=CPLX[dtype])
    pos = torch.tensor([0, 9, 20, 5, T - 1])
    y, xT, at = m(u, f, x0, pos)
    y_ref, xs_ref = m.forward_reference(u, f, x0)
    assert_close([y, xT, at], [y_ref, xs_ref[:, -1], xs_ref[:, pos].reshape(-1, P // 2)], TOL[dtype])


def test_scan_matches_loop_gradients():
    m = layer(torch.float64)
    u = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(B, P // 2, dtype=torch.complex128, requires_grad=True)
    f, w = resets(B, T), torch.randn(B, T, H, dtype=torch.float64)
    y, xT, _ = m(u, f, x0)
    y_ref, xs_ref = m.forward_reference(u, f, x0)
    grads = []
    for out, last in [(y, xT), (y_ref, xs_ref[:, -1])]:
        loss = (out * w).sum() + (last * last.conj()).real.sum()
        grads.append(torch.autograd.grad(loss, [u, x0, *m.parameters()]))
    for g_fast, g_ref in zip(*grads):
        assert_close(g_fast, g_ref, 1e-8)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_core_scan_equals_step(dtype):
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
    with pytest.raises(ValueError, match="'hippo', 'lin'"):
        S5Core(d_model=H, d_state=P, init='legs')
