"""S4D layer: convolution mode == step mode == slow reference (outputs and gradients), FFT pieces,
init. The S4Core contract (chunks, resets, states_at) is tested in test_ssm_cores.py.

Sizes are tiny and dt is large (0.05..0.5) so decays and phases differ visibly from 1 per step: an
off-by-one power of dA, a leak across a reset or a dropped initial state changes outputs by O(0.1).
"""
import pytest
import torch

from world_models import s4d_rollout
from world_models.s4d import S4D, next_fast_len, segment_conv, segment_rows
from world_models.s4d_rollout import S4DRollout, S4DStart, _real_pairs
from world_models.s4wm import S4Core

from tests.core_helpers import CPLX, TOL, assert_close, resets

B, T, H, N = 3, 37, 8, 12


def layer(dtype, init='lin', cls=S4DRollout):
    """The layer S4Core uses (S4D with the fast path); cls=S4D: the plain layer."""
    torch.manual_seed(0)
    return cls(H, N, dt_min=0.05, dt_max=0.5, init=init).to(dtype)


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


@pytest.mark.parametrize('inner_resets', [True, False])
def test_segment_conv_matches_direct_sum(inner_resets):
    """With resets after t=0 every segment is its own FFT row; without, one convolution per row."""
    torch.manual_seed(1)
    u, k = torch.randn(3, 3, 11, dtype=torch.float64), torch.randn(3, 11, dtype=torch.float64)
    seg = torch.tensor([[0] * 4 + [1] * 7, [0] * 11, [0, 0, 1, 2, 2, 2, 3, 3, 3, 3, 3]])
    seg = seg if inner_resets else torch.zeros_like(seg)
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


def test_conv_matches_reference_outputs_and_gradients():
    m = layer(torch.float64)
    u = torch.randn(B, T, H, dtype=torch.float64, requires_grad=True)
    x0 = torch.randn(B, H, N // 2, dtype=torch.complex128, requires_grad=True)
    f, w = resets(B, T), torch.randn(B, T, H, dtype=torch.float64)
    pos = torch.tensor([0, 9, 20, 5, T - 1, 9])
    y, xT, at = m(u, f, x0, pos)
    at = at.states()  # lazy S4DStart -> (B*K, H, N2)
    y_ref, xs_ref = m.forward_reference(u, f, x0)
    at_ref = xs_ref[:, pos].reshape(B * len(pos), H, N // 2)
    assert_close([y, xT, at], [y_ref, xs_ref[:, -1], at_ref], 1e-8)
    grads = []
    for out, last, states in [(y, xT, at), (y_ref, xs_ref[:, -1], at_ref)]:
        loss = (out * w).sum() + (last * last.conj()).real.sum()  # states_at: no gradient
        grads.append(torch.autograd.grad(loss, [u, x0, *m.parameters()]))
    for g_fast, g_ref in zip(*grads):
        assert_close(g_fast, g_ref, 1e-8)


def test_bad_init_fails_in_one_line():
    with pytest.raises(ValueError, match="'lin', 'inv'"):
        S4Core(d_model=H, d_state=N, init='legs')


def branch_inputs(x0_kind, inner_resets):
    """Layer and inputs that take one branch of the start-state code: x0 zero, nonzero in row 0
    only ('some_rows') or in every row; resets after t=0 or not (row 2 resets at t=0, so x0 never
    reaches it); unsorted, repeated positions. Returns (m, u, f, x0, pos), float64."""
    m = layer(torch.float64)
    u = torch.randn(B, T, H, dtype=torch.float64)
    f = resets(B, T) if inner_resets else torch.zeros(B, T, dtype=torch.bool)
    f[2, 0] = True
    x0 = torch.randn(B, H, N // 2, dtype=torch.complex128)
    if x0_kind == 'zero':
        x0.zero_()
    elif x0_kind == 'some_rows':
        x0[1:].zero_()
    return m, u, f, x0, torch.tensor([T - 1, 0, 9, 9, 20, 5, 30])


@pytest.mark.parametrize('x0_kind', ['zero', 'some_rows', 'all_rows'])
@pytest.mark.parametrize('inner_resets', [False, True])
def test_states_at_every_branch_equals_stepped_states(x0_kind, inner_resets):
    """_states_at skips the window mask without resets after t=0 and the x0 term for rows it does
    not reach (x0 zero, or a reset at or before every position); each branch == the step loop."""
    m, u, f, x0, pos = branch_inputs(x0_kind, inner_resets)
    with torch.no_grad():
        _, xT, at = m(u, f, x0, pos)
        at = at.states()
        _, xs_ref = m.forward_reference(u, f, x0)
    assert_close([xT, at], [xs_ref[:, -1], xs_ref[:, pos].reshape(B * len(pos), H, N // 2)], 1e-10)


@pytest.mark.parametrize('x0_kind', ['zero', 'some_rows'])
@pytest.mark.parametrize('inner_resets', [False, True])
@pytest.mark.parametrize('chunk_rows', [None, 1, 3])
def test_lazy_start_free_response_equals_readout_of_its_states(x0_kind, inner_resets, chunk_rows,
                                                              monkeypatch):
    """S4DStart.free (a convolution of the inputs, no states built) == the plain readout
    bmm(_real_pairs(states), w_free), values and gradient to the readout weights, in every branch
    (x0 term for some rows or none; segments split by resets after t=0 or not; the convolution in
    one piece, or 1 or 3 of its 16 kernel rows per chunk)."""
    m, u, f, x0, pos = branch_inputs(x0_kind, inner_resets)
    if chunk_rows:  # budget for chunk_rows kernel rows of the (rows, n//2+1, H) spectrum
        n_reset = f.long().cumsum(1)
        split = segment_rows(n_reset - n_reset[:, :1])
        rows = B if split is None else len(split[0])
        row_bytes = rows * (next_fast_len(2 * T) // 2 + 1) * H * 16  # complex128
        monkeypatch.setattr(s4d_rollout, 'FREE_CHUNK_BYTES', chunk_rows * row_bytes)
    _, _, start = m(u, f, x0, pos)
    assert isinstance(start, S4DStart) and start._states is None
    w_free = torch.randn(H, N, 16, dtype=torch.float64, requires_grad=True)
    fast = start.free(w_free)
    assert start._states is None  # the states were not built
    plain = torch.bmm(_real_pairs(start.states()), w_free).permute(2, 1, 0)
    fast = torch.stack(fast)  # 16 slots (B*K, H)
    assert fast.shape == plain.shape == (16, B * len(pos), H)
    assert_close(fast, plain, 1e-10)
    probe = torch.randn_like(fast)
    g_fast, g_plain = (torch.autograd.grad((x * probe).sum(), w_free)[0] for x in (fast, plain))
    assert_close(g_fast, g_plain, 1e-9)


def test_plain_layer_equals_the_fast_path_layer():
    """S4D alone (no fast path) builds its start states as tensors at once; same parameters, the
    same outputs, final state and start states as S4DRollout's (the lazy S4DStart built)."""
    u, f = torch.randn(B, T, H, dtype=torch.float64), resets(B, T)
    x0 = torch.randn(B, H, N // 2, dtype=torch.complex128)
    pos = torch.tensor([0, 9, 20, T - 1])
    plain, fast = layer(torch.float64, cls=S4D), layer(torch.float64)
    y_p, xT_p, at_p = plain(u, f, x0, pos)
    y_f, xT_f, at_f = fast(u, f, x0, pos)
    assert isinstance(at_p, torch.Tensor) and isinstance(at_f, S4DStart)
    assert torch.equal(y_p, y_f) and torch.equal(xT_p, xT_f) and torch.equal(at_p, at_f.states())
