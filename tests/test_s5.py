"""S5 layer: parallel scan == sequential loop (outputs and gradients), HiPPO-N init. The S5Core
contract (chunks, resets, states_at) is tested in test_ssm_cores.py.

Tiny sizes, large dt (0.05..0.5) so an off-by-one, a leak across a reset or a dropped initial state
shows up as an O(0.1) difference.
"""
import pytest
import torch

from world_models.s5wm import S5, S5Core, associative_scan, hippo_n_diag

from tests.core_helpers import CPLX, TOL, assert_close, resets

B, T, H, P = 3, 41, 8, 12


def layer(dtype, init='hippo'):
    torch.manual_seed(0)
    return S5(H, P, dt_min=0.05, dt_max=0.5, init=init).to(dtype)


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


def test_bad_init_fails_in_one_line():
    with pytest.raises(ValueError, match="'hippo', 'lin'"):
        S5Core(d_model=H, d_state=P, init='legs')
