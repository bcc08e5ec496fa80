"""The S4D layer (Gu et al. 2022, "On the Parameterization and Initialization of Diagonal State
Space Models"): parameters, ZOH discretisation, the convolution mode and the recurrent step.
Imagination's fast path (lazy start states, rollout windows) builds on it in
world_models/s4d_rollout.py.

One SISO SSM per channel h, N/2 complex modes n (conjugate pairs folded into 2*Re):
    x_t = dA * x_{t-1} + dB * u_t          x (B, H, N/2) complex
    y_t = 2 Re(sum_n C_n x_{t,n}) + D u_t
ZOH: dA = exp(dt A), dB = (exp(dt A) - 1) / A (the input matrix B is merged into C, as in S4D).
Convolution mode: y = K * u with K_t = 2 Re(sum_n C_n dB_n dA_n^t), plus the response to the
initial state x0: 2 Re(sum_n C_n dA_n^(t+1) x0_n). Episode resets (is_first) are exact: the input
is split into its episode segments and each is convolved on its own (batched), see `segment_conv`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from world_models.ssm_blocks import loop_reference


def next_fast_len(n: int) -> int:
    """Smallest m >= n with no prime factor above 5 (fast FFT sizes for pocketfft and cuFFT)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def s4d_init(d_state: int, init: str):
    """Re A, Im A (N/2,) of the S4D inits (Gu et al. 2022), N = d_state:
    S4D-Lin A_n = -1/2 + i pi n;  S4D-Inv A_n = -1/2 + i N/pi (N/(2n+1) - 1).
    """
    n = torch.arange(d_state // 2, dtype=torch.float64)
    if init == 'lin':
        imag = math.pi * n
    elif init == 'inv':
        imag = d_state / math.pi * (d_state / (2 * n + 1) - 1)
    else:
        raise ValueError(f"S4D init must be one of 'lin', 'inv'; got {init!r}")
    return torch.full_like(n, -0.5), imag


def segment_rows(seg: torch.Tensor):
    """The segment rows of a batch with episode resets, for exact convolutions across them.

    seg (B, T) long, non-decreasing segment id per row (0 for the first). Every (row, segment) pair
    that occurs becomes one row: returns owner (R,) the batch row of each, mask (R, T) bool the
    steps of its segment, and rows (B, T) the segment row of every step; None when no row has a
    reset after t=0 (R == B, the plain batch). One host sync (R) per call.
    """
    B, T = seg.shape
    n_seg = seg[:, -1] + 1  # (B,) segments per row
    R = int(n_seg.sum())
    if R == B:
        return None
    first = torch.cumsum(n_seg, 0) - n_seg  # (B,) row of each batch entry's segment 0
    owner = torch.repeat_interleave(torch.arange(B, device=seg.device), n_seg, output_size=R)
    which = torch.arange(R, device=seg.device) - first[owner]  # (R,) segment id within its row
    return owner, seg[owner] == which[:, None], first[:, None] + seg


def segment_conv(u: torch.Tensor, k: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Causal convolution y_t = sum_{s<=t, seg_s = seg_t} k_{t-s} u_s, exact across segment borders.

    u (B, H, T), k (H, T), seg (B, T) long, non-decreasing segment id per row (0 for the first).
    Every (row, segment) pair that occurs becomes one masked input row (`segment_rows`), convolved
    on its own; y_t is read from the row of its own segment. The kernel's spectrum is computed
    once; FFT length: a fast size >= 2T, so the circular convolution is linear.
    """
    B, H, T = u.shape
    n = next_fast_len(2 * T)
    k_f = torch.fft.rfft(k, n=n)  # (H, n//2+1)
    split = segment_rows(seg)
    if split is None:  # no reset after t=0 anywhere
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * k_f, n=n)[..., :T]  # (B, H, T)
    owner, mask, rows = split
    u_seg = u[owner] * mask[:, None].to(u.dtype)  # (R, H, T)
    y_seg = torch.fft.irfft(torch.fft.rfft(u_seg, n=n) * k_f, n=n)[..., :T]  # (R, H, T)
    y = y_seg.transpose(1, 2)[rows, torch.arange(T, device=u.device)]  # (B, T, H)
    return y.transpose(1, 2)  # (B, H, T)


def _cexp(z: torch.Tensor) -> torch.Tensor:
    """exp of a complex tensor as exp(Re z) (cos Im z + i sin Im z): the same values to rounding,
    about 4x faster on CPU than torch.exp's complex kernel (measured at (512, 32, 16))."""
    return torch.polar(torch.exp(z.real), z.imag)


def vandermonde(dtA: torch.Tensor, T: int) -> torch.Tensor:
    """[Re dA^t ; Im dA^t] for t in [0, T) as one real (H, 2*N2, T) tensor, real parts first.

    dA^t = exp(dtA t) is built from two short tables, exp(dtA r) for r < L and exp(dtA L q) for
    q < Q (L = ceil(sqrt T)), and one complex product: the slow complex exp runs on O(sqrt T) points.
    The real layout turns every contraction with it into a real matmul.
    """
    H, N2 = dtA.shape
    L = math.isqrt(T - 1) + 1
    Q = -(-T // L)
    steps = torch.arange(max(L, Q), device=dtA.device, dtype=dtA.real.dtype)
    lo = _cexp(dtA[..., None] * steps[:L])  # (H, N2, L)
    hi = _cexp(dtA[..., None] * (steps[:Q] * L))  # (H, N2, Q)
    V = torch.view_as_real(hi[..., :, None] * lo[..., None, :])  # (H, N2, Q, L, 2)
    return V.permute(0, 4, 1, 2, 3).reshape(H, 2 * N2, Q * L)[..., :T]  # (H, 2 N2, T)


def re_weights(w: torch.Tensor) -> torch.Tensor:
    """[Re w, -Im w] (..., 2 N2), so that Re(sum_n w_n v_n) = re_weights(w) . [Re v ; Im v]."""
    return torch.cat([w.real, -w.imag], -1)  # (..., 2 N2)


def _final_state(u, V, dA, dB, x0, is_first):
    """State after the chunk's last input, (B, H, N/2) complex:
        x_{T-1} = dB sum_r dA^r u_{T-1-r}  (r back to the row's last reset)
                  + [no reset in the chunk] dA^T x0.
    dB does not depend on r, so it is applied after the contraction: one real matmul of the
    reversed inputs with V as it is, no (H, T, N/2) weights (what `_states_at` builds for any
    positions; at T = 256 that cost more than the matmul). No host sync.
    u (B, H, T), V (H, 2 N2, T) from `vandermonde`, dA/dB (H, N2), x0 (B, H, N2), is_first (B, T).
    """
    N2 = dA.shape[1]
    n_reset = is_first.long().cumsum(1)  # (B, T)
    u = u * (n_reset == n_reset[:, -1:])[:, None].to(u.dtype)  # inputs of the last segment only
    u_rev = u.transpose(0, 1).contiguous().flip(-1)  # (H, B, T) u_{T-1-r}; bmm wants it dense
    acc = torch.bmm(u_rev, V.transpose(1, 2))  # (H, B, 2 N2) [Re; Im] of sum_r dA^r u_{T-1-r}
    x = dB[:, None] * torch.complex(acc[..., :N2], acc[..., N2:])  # (H, B, N2)
    dAT = dA * torch.complex(V[:, :N2, -1], V[:, N2:, -1])  # (H, N2) dA^T
    keep0 = (n_reset[:, -1] == 0).to(u.dtype)[:, None, None]  # (B, 1, 1) no reset in the chunk
    return x.transpose(0, 1) + keep0 * (dAT * x0)  # (B, H, N2)


def _states_at(u, V, dA, dB, x0, is_first, pos):
    """SSM states after consuming u_p for p in pos (K,): (B, K, H, N/2) complex.

    x_p = sum_{r=0}^{p-start_p} dB dA^r u_{p-r}  +  [no reset in [0, p]] dA^(p+1) x0
    where start_p is the last reset <= p. Per position the input window u_{p-T+1..p} is one row of
    an unfolded, left zero-padded u (slots before t=0 read the pad); slots before start_p are
    zeroed, and one real matmul per channel contracts the windows with the weights
    [Re, Im](dB dA^r), so the states come out of the matmul already in real layout (no complex
    arithmetic over the (B, K, H, N/2) result). Cost O(B H K T N) flops, O(B H K (T + N)) memory.
    The result is an H-major view (no copy); reshape(B*K, H, N/2) stays a view.
    Only rows with a reset after t=0 are masked and only rows with a nonzero x0 term add it (two
    nonzero() host syncs per call on GPU).
    u (B, H, T), V (H, 2 N2, T) from `vandermonde`, dA/dB (H, N2), x0 (B, H, N2), is_first (B, T).
    """
    B, H, T = u.shape
    K, N2 = len(pos), dA.shape[1]
    dAr = torch.complex(V[:, :N2], V[:, N2:])  # (H, N2, T) dA^r
    W = torch.view_as_real((dB[..., None] * dAr).flip(-1).transpose(1, 2))  # (H, T, N2, 2)
    W = W.reshape(H, T, 2 * N2)  # row j weighs window slot j = u_{p-T+1+j}: dB dA^(T-1-j)
    u_pad = nn.functional.pad(u.transpose(0, 1), (T - 1, 0))  # (H, B, 2T-1), T-1 zeros first
    win = u_pad.unfold(2, T, 1)[:, :, pos]  # (H, B, K, T): win[..., k, j] = u_{pos_k - T + 1 + j}
    cut = is_first[:, 1:].any(1).nonzero()[:, 0]  # (R,) rows with a reset after t=0
    if len(cut):  # zero their window slots before the segment start (in place: win is a copy)
        t = torch.arange(T, device=u.device)
        last_reset = torch.where(is_first[cut], t, 0).cummax(1).values[:, pos]  # (R, K)
        outside = t < (last_reset - pos + T - 1)[..., None]  # (R, K, T) slots before start_p
        win[:, cut] = win[:, cut].masked_fill(outside, 0.0)
    acc = torch.bmm(win.reshape(H, B * K, T), W)  # (H, B K, 2 N2) [Re, Im] interleaved per mode
    xs = torch.view_as_complex(acc.reshape(H, B, K, N2, 2)).permute(1, 2, 0, 3)  # (B, K, H, N2)
    keep0 = is_first.long().cumsum(1)[:, pos] == 0  # (B, K) no reset in [0, p]
    live = (keep0.any(1) & x0.flatten(1).ne(0).any(1)).nonzero()[:, 0]  # (R,) rows x0 reaches
    if len(live):
        Vp = V[:, :, pos].permute(2, 0, 1)  # (K, H, 2 N2)
        decay0 = dA * torch.complex(Vp[..., :N2], Vp[..., N2:])  # (K, H, N2) dA^(p+1)
        term = x0[live, None] * decay0 * keep0[live, :, None, None]  # (R, K, H, N2)
        xs.index_add_(0, live, term)  # in place into the matmul output (B, K, H, N2)
    return xs


class S4D(nn.Module):
    """Diagonal S4 layer on H = d_model channels with d_state = N real state dims (N/2 complex modes).

    Parameters: log_dt (H,) initialised uniform in [log dt_min, log dt_max]; A as log(-Re A) and Im A
    (H, N/2); C (H, N/2) complex stored as real pairs (so .double() works); D (H,) skip term.
    """

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 init: str = 'lin'):
        super().__init__()
        assert d_state % 2 == 0, f'd_state must be even (conjugate pairs), got {d_state}'
        H, N2 = d_model, d_state // 2
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        a_real, a_imag = s4d_init(d_state, init)
        self.log_dt = nn.Parameter(log_dt)
        self.log_A_real = nn.Parameter(torch.log(-a_real).float().repeat(H, 1))  # (H, N2)
        self.A_imag = nn.Parameter(a_imag.float().repeat(H, 1))  # (H, N2)
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, N2, dtype=torch.cfloat)))  # (H, N2, 2)
        self.D = nn.Parameter(torch.randn(H))

    def discrete(self):
        """ZOH: dt*A, dA = exp(dt A), dB = (exp(dt A) - 1) / A, and C; all (H, N/2) complex."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        dtA = torch.exp(self.log_dt)[:, None] * A
        return dtA, torch.exp(dtA), torch.expm1(dtA) / A, torch.view_as_complex(self.C)

    def initial_state(self, batch_size: int, device=None) -> torch.Tensor:
        dtype = torch.complex128 if self.D.dtype == torch.float64 else torch.complex64
        return torch.zeros(batch_size, *self.A_imag.shape, dtype=dtype,
                           device=device or self.D.device)  # (B, H, N2)

    def forward(self, u: torch.Tensor, is_first: torch.Tensor, x0: torch.Tensor, positions=None):
        """Convolution mode. u (B, T, H), is_first (B, T) bool, x0 (B, H, N/2) complex.

        Returns y (B, T, H), final state (B, H, N/2), and the states at positions (B*K rows,
        b-major; `start_states`) or None.
        """
        B, T, H = u.shape
        u = u.transpose(1, 2)  # (B, H, T)
        dtA, dA, dB, C = self.discrete()
        V = vandermonde(dtA, T)  # (H, 2 N2, T) [Re; Im] dA^t, once per call
        k = 2 * torch.einsum('hm,hmt->ht', re_weights(C * dB), V)  # (H, T) S4D kernel
        n_reset = is_first.long().cumsum(1)  # (B, T) resets in [0, t]
        y = segment_conv(u, k, n_reset - n_reset[:, :1])  # (B, H, T) segments after t=0 split
        w0 = re_weights(C * dA * x0).transpose(0, 1).contiguous()  # (H, B, 2 N2)
        free = 2 * torch.bmm(w0, V).transpose(0, 1)  # (B, H, T) x0 response
        y = y + free * (n_reset == 0)[:, None].to(u.dtype) + self.D[:, None] * u
        final = _final_state(u, V, dA, dB, x0, is_first)  # (B, H, N2)
        if positions is None:
            return y.transpose(1, 2), final, None
        with torch.no_grad():  # imagination starts are detached (core.py): keep no graph for them
            at = self.start_states(*(x.detach() for x in (u, is_first, positions.to(u.device), x0,
                                                          dA, dB, V)))
        return y.transpose(1, 2), final, at  # at: B*K states, b-major

    def start_states(self, u, is_first, pos, x0, dA, dB, V):
        """The states after consuming u_p for p in pos, (B*K, H, N/2) complex, b-major, from the
        convolution pass's detached inputs u (B, H, T), discretisation and Vandermonde table V
        (H, 2 N2, T). S4DRollout (world_models/s4d_rollout.py) keeps them lazy instead."""
        at = _states_at(u, V, dA, dB, x0, is_first, pos)  # (B, K, H, N2)
        return at.reshape(-1, *at.shape[2:])

    def step_params(self):
        """dA (H, N/2) complex, [Re, Im] of dB (H, N/2, 2) real and C (H, N/2) complex, for `step`;
        dt A (H, N/2) complex as well, for S4DRollout.rollout_begin."""
        dtA, dA, dB, C = self.discrete()
        return dA, torch.view_as_real(dB), C, dtA

    def step(self, u: torch.Tensor, x: torch.Tensor, is_first: torch.Tensor | None = None,
             params=None):
        """Recurrent mode. u (B, H), x (B, H, N/2) -> y (B, H), new x. params: step_params() or
        None."""
        if is_first is not None:
            x = torch.where(is_first[:, None, None], torch.zeros_like(x), x)
        dA, dB_re_im, C, _ = self.step_params() if params is None else params
        x = dA * x  # (B, H, N2)
        # + dB u as a real multiply-add on the [Re, Im] view, in place on the fresh product: about
        # 2x faster on CPU than complex dB * u (which promotes u to complex) and a complex add
        torch.view_as_real(x).addcmul_(u[..., None, None], dB_re_im)
        return 2 * (C * x).sum(-1).real + self.D * u, x

    def forward_reference(self, u, is_first, x0):
        """Slow reference for tests: y (B, T, H) and every state (B, T, H, N/2) from a loop of `step`."""
        return loop_reference(self, u, is_first, x0)
