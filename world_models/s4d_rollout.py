"""Imagination's fast path for the S4D layer (world_models/s4d.py): the start states a convolution
pass hands to imagination kept lazy (S4DStart), and a rollout stepped in the convolution form
(S4DWindow: windows of L steps whose outputs come from the window start's free response plus the
inputs' share of the kernel, folded back into the complex state when full). S4DRollout is the S4D layer
with both; its outputs equal the plain step loop's to rounding (tests/test_ssm_cores.py).
"""
from __future__ import annotations

import torch

from world_models.core import LazyStart
from world_models.s4d import S4D, _states_at, next_fast_len, segment_rows, vandermonde

# S4DStart.free: bytes of spectrum product per chunk of its convolution (see there)
FREE_CHUNK_BYTES = 1 << 24


class S4DStart(LazyStart):
    """Start states of imagination, kept lazy: the S4D states x_p after consuming u_p for p in pos
    (B*K rows, b-major), from the detached inputs and discretisation of the convolution pass that
    saw them. A rollout needs only their free response over its first window, `free`, which is a
    convolution of the inputs (no (B*K, H, N/2) complex state is built); the states themselves
    are built once on demand (`states`) by `step`, by a window's fold and by
    `S4DRollout.rollout_end`. A LazyStart (common/tree.py, part of world_models/core.py's
    contract): not a tensor, so the tree helpers refuse it (but `detach`); index, move or save
    start states only after `rollout_end` (or `states()`) has made them tensors.

    Built under no_grad (imagination starts carry no gradient, core.py); `free` runs in the grad
    mode of `rollout_begin`, so the rollout parameters' readout weights get their gradient as with
    a plain state. u (B, H, T), is_first (B, T) bool, pos (K,), x0 (B, H, N2) complex, dA and dB
    (H, N2) complex, V (H, 2 N2, T) from `vandermonde`."""

    __slots__ = ("u", "is_first", "pos", "x0", "dA", "dB", "V", "_states")

    def __init__(self, u, is_first, pos, x0, dA, dB, V):
        self.u, self.is_first, self.pos, self.x0 = u, is_first, pos, x0
        self.dA, self.dB, self.V, self._states = dA, dB, V, None

    def states(self) -> torch.Tensor:
        """The complex states (B*K, H, N2), b-major; computed on the first call, then kept."""
        if self._states is None:
            with torch.no_grad():
                at = _states_at(self.u, self.V, self.dA, self.dB, self.x0, self.is_first, self.pos)
            self._states = at.reshape(-1, *at.shape[2:])  # a view of the H-major matmul output
        return self._states

    def free(self, w_free: torch.Tensor) -> tuple:
        """The first window's `ahead` of the states without building the states: L tensors
        (B*K, H), equal to bmm(_real_pairs(states()), w_free).permute(2, 1, 0).unbind(0).

        w_free (H, 2 N2, L): readout weights [Re w, -Im w] interleaved per mode, one column per
        window step j (S4DRollout.rollout_begin). With x_p = sum_r dB dA^r u_{p-r} (r up to the last
        reset) + [no reset in [0, p]] dA^(p+1) x0, output j at position p is
            sum_r M[j, r] u_{p-r} + [no reset] Re(sum_n w_nj dA_n^(p+1) x0_n),
        M[j, r] = Re(sum_n w_nj dB_n dA_n^r): an (L, T, H) kernel from one small matmul with the
        Vandermonde table (dB joins the readout weights, so no (H, T, N/2) tensor), applied as
        an FFT convolution over time per episode segment (`segment_rows`, exact at resets). The x0
        term is one real matmul for the rows x0 reaches.
        """
        u, V, dA, dB, x0, pos = self.u, self.V, self.dA, self.dB, self.x0, self.pos
        B, H, T = u.shape
        L, K = w_free.shape[-1], len(pos)
        w = torch.complex(w_free[:, 0::2], -w_free[:, 1::2])  # (H, N2, L)
        wB = w * dB[..., None]  # (H, N2, L): M[j, r] = Re(sum_n wB_nj dA_n^r), V's [Re; Im] rows
        kern = torch.bmm(torch.cat([wB.real, -wB.imag], 1).transpose(1, 2), V)  # (H, L, T)
        kern = kern.permute(1, 2, 0)  # (L, T, H) M[j, r], channels last
        n_reset = self.is_first.long().cumsum(1)  # (B, T)
        # the convolution runs over dim T of (.., T, H) tensors, so its output is already laid out
        # as the window's (L, rows, H); chunks of kernel rows keep each temporary near
        # FREE_CHUNK_BYTES (one row when a row alone is larger): on CPU a larger one is a fresh
        # mmap that page-faults in full on every call
        split = segment_rows(n_reset - n_reset[:, :1])
        x = u.transpose(1, 2)  # (B, T, H)
        if split is None:
            rows = torch.arange(B, device=u.device)[:, None]  # (B, 1)
        else:  # one input row per episode segment, each step read from its own segment's row
            owner, mask, rows = split
            x, rows = x[owner] * mask[..., None].to(x.dtype), rows[:, pos]  # (R, T, H), (B, K)
        keep0 = n_reset[:, pos] == 0  # (B, K) no reset in [0, p]
        live = (keep0.any(1) & x0.flatten(1).ne(0).any(1)).nonzero()[:, 0]  # (R,) rows x0 reaches
        if len(live):  # x0 term Re(sum_n w_nj dA_n^(p+1) x0_n), per chunk below
            dAx0 = (dA * x0[live])[..., None]  # (R, H, N2, 1)
            Vp, keep = V[:, :, pos], keep0[live, :, None].to(u.dtype)  # (H, 2 N2, K), (R, K, 1)
        n = next_fast_len(2 * T)
        x_f = torch.fft.rfft(x, n=n, dim=1)  # (R, n//2+1, H)
        k_f = torch.fft.rfft(kern, n=n, dim=1)  # (L, n//2+1, H)
        c = max(1, FREE_CHUNK_BYTES // x_f.nbytes)  # kernel rows per chunk
        slots = []
        for i in range(0, L, c):
            y = torch.fft.irfft(k_f[i:i + c, None] * x_f, n=n, dim=2)[:, rows, pos]  # (c, B, K, H)
            if len(live):  # z = w_nj dA_n x0_n (R, H, 2 N2, c) against [Re; Im] dA^p
                z = dAx0 * w[..., i:i + c]
                z = torch.cat([z.real, -z.imag], 2)  # Re(z v) = Re z Re v - Im z Im v
                term = torch.einsum('rhnl,hnk->lrkh', z, Vp) * keep  # (c, R, K, H)
                y = y.index_add(1, live, term)
            slots += y.reshape(-1, B * K, H).unbind(0)  # b-major rows
        return tuple(slots)


def _readout(x: torch.Tensor, w_free: torch.Tensor) -> tuple:
    """A window's `ahead` from its complex start state x (B, H, N2): L tensors (B, H),
    Re(sum_n w_nj x_n) for the readout weights w_free (H, 2 N2, L) of S4DRollout.rollout_begin."""
    return torch.bmm(_real_pairs(x), w_free).permute(2, 1, 0).contiguous().unbind(0)


class S4DWindow:
    """An S4D layer's state during a rollout (see S4DRollout.rollout_begin): the complex state x0 at
    the window start (or the lazy S4DStart it comes from, built only if the window folds), the inputs
    consumed since, and `ahead`: L - j tensors (B, H), the part of the outputs y_j..y_{L-1} that
    is already known after j inputs (the free response of x0 plus every consumed input's share of
    the convolution). From a plain state it is None until the window's first step computes it (a
    rollout may end on a fold, which does not need it); from an S4DStart, rollout_begin fills it
    (`S4DStart.free`). One tensor per output step keeps every temporary at (B, H)
    (on CPU one (L, B, H) tensor of tens of MB would be a fresh page-faulting mmap at every step).
    Immutable: `step` returns a new window, so autograd sees an ordinary graph. A window's steps
    and its rollout_begin share one grad mode (an `ahead` filled under no_grad would carry no
    gradient to x0 or the readout); rollouts never mix them."""

    __slots__ = ("x0", "consts", "ahead", "us")

    def __init__(self, x0, consts, ahead=None, us=()):
        self.x0, self.consts, self.ahead, self.us = x0, consts, ahead, us

    def step(self, u: torch.Tensor):
        """u (B, H) -> (y (B, H), next window state)."""
        k, w_free = self.consts[0], self.consts[1]  # (L, H) K_0..K_{L-1} (D in K_0), (H, 2 N2, L)
        ahead = self.ahead
        if ahead is None:  # 2 Re(sum_n C_n dA_n^(j+1) x0_n), one matmul per channel
            ahead = _readout(self.x0, w_free)
        y = torch.addcmul(ahead[0], k[0], u)  # (B, H)
        us = self.us + (u,)
        if len(ahead) == 1:  # window full: fold it into the complex state that starts the next
            return y, S4DWindow(S4DWindow(self.x0, self.consts, None, us).folded(), self.consts)
        # u's share of the later outputs: y_{j+i} += K_i u_j, i = 1..m-1 (O(L) per step)
        ahead = tuple(torch.addcmul(a, k[i], u) for i, a in enumerate(ahead[1:], 1))
        return y, S4DWindow(self.x0, self.consts, ahead, us)

    def folded(self) -> torch.Tensor:
        """Complex state after the inputs consumed so far: dA^m x0 + sum_s dB dA^(m-1-s) u_s."""
        m = len(self.us)
        x0 = self.x0.states() if isinstance(self.x0, S4DStart) else self.x0
        if m == 0:
            return x0
        _, _, w_fold, dAt = self.consts
        H, L, _ = w_fold.shape
        hist = torch.stack(self.us, -1).transpose(0, 1)  # (H, B, m)
        acc = torch.bmm(hist, w_fold[:, L - m:])  # (H, B, 2 N2) [Re, Im] interleaved
        driven = torch.view_as_complex(acc.reshape(H, hist.shape[1], -1, 2)).transpose(0, 1)
        return dAt[..., m] * x0 + driven  # (B, H, N2)


def _real_pairs(x: torch.Tensor) -> torch.Tensor:
    """Complex (B, H, N2) -> real (H, B, 2 N2) with [Re, Im] interleaved per mode; a view (no copy)
    when x is H-major, as the states from `_states_at` and `folded` are."""
    B, H, N2 = x.shape
    return torch.view_as_real(x).reshape(B, H, 2 * N2).transpose(0, 1)


class S4DRollout(S4D):
    """The S4D layer with imagination's fast path: `forward` returns its start states as a lazy
    S4DStart, `rollout_begin` turns a state into an S4DWindow and `step` steps either form (a
    plain state as S4D does). The same parameters and values as S4D (tested)."""

    def start_states(self, u, is_first, pos, x0, dA, dB, V):
        """The states after u_p for p in pos, kept lazy: an S4DStart of B*K rows, b-major."""
        return S4DStart(u, is_first, pos, x0, dA, dB, V)

    def step(self, u: torch.Tensor, x, is_first: torch.Tensor | None = None, params=None):
        """S4D.step, where x may also be an S4DWindow (rollout form: returns the next window) or
        an S4DStart (its states are built)."""
        if isinstance(x, S4DWindow):
            if is_first is not None:
                raise ValueError("an S4D rollout window does not reset: imagination only")
            return x.step(u)
        if isinstance(x, S4DStart):
            x = x.states()
        return super().step(u, x, is_first, params)

    def rollout_begin(self, x0, params=None, window: int = 16) -> "S4DWindow":
        """Imagination state that replaces the (B, H, N/2) complex state by its convolution form.
        x0: that state, or an S4DStart (start states from `forward`, never built here).

        Inside a window of L steps that starts from state x0, with u_0..u_j the inputs so far:
            y_j = 2 Re(sum_n C_n dA_n^(j+1) x0_n) + sum_{s<=j} K_{j-s} u_s + D u_j
        (K as in convolution mode). The first term (the "free" response, L tensors (B, H)) is one
        matmul per window (from an S4DStart: a convolution of its inputs, `S4DStart.free`); the
        second is accumulated step by step into the window's `ahead`. A full window is folded back
        into a complex state (one matmul), which starts the next window. A rollout then never
        reads, writes or backpropagates through the big (B, H, N/2) complex state at every step;
        its outputs equal `step`'s to rounding (the powers dA^t come from exp(t dt A)). Short
        rollouts (the actor-critic's 15 steps) fit in one window. params: step_params() or None.
        """
        dA, dB_re_im, C, dtA = self.step_params() if params is None else params
        dB = torch.view_as_complex(dB_re_im)
        L, N2 = window, dA.shape[1]
        V = vandermonde(dtA, L + 1)  # (H, 2 N2, L+1) [Re; Im] dA^t, t = 0..L
        dAt = torch.complex(V[:, :N2], V[:, N2:])  # (H, N2, L+1)
        k = 2 * (C[..., None] * dB[..., None] * dAt[..., :L]).sum(1).real  # (H, L) K_0..K_{L-1}
        k = torch.cat([k[:, :1] + self.D[:, None], k[:, 1:]], 1).t().contiguous()  # (L, H)
        # D u_j joins lag 0; k[i] is the (H,) row the window multiplies u by for y_{j+i}
        # free response: Re(w x) = Re w Re x - Im w Im x, rows [Re, Im] interleaved like _real_pairs
        w = 2 * C[..., None] * dAt[..., 1:]  # (H, N2, L) weights of x0 for y_0..y_{L-1}
        w_free = torch.stack([w.real, -w.imag], 2).reshape(dA.shape[0], 2 * N2, L)
        # fold: x_L = dA^L x0 + sum_s dB dA^(L-1-s) u_s; row s of w_fold weighs u_s, [Re, Im] pairs
        w_fold = torch.view_as_real((dB[..., None] * dAt[..., :L]).flip(-1).transpose(1, 2))
        consts = (k, w_free, w_fold.reshape(dA.shape[0], L, 2 * N2), dAt)
        if isinstance(x0, S4DStart):  # free response straight from the inputs (no states built)
            return S4DWindow(x0, consts, x0.free(w_free))
        return S4DWindow(x0, consts)

    @staticmethod
    def rollout_end(state) -> torch.Tensor:
        """The plain complex state (B, H, N/2) after a rollout's last step; also of a lazy S4DStart
        (its states) and of a plain state (itself)."""
        if isinstance(state, S4DWindow):
            return state.folded()
        return state.states() if isinstance(state, S4DStart) else state
