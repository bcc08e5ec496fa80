"""S5WM sequence core: the S4WM block stack with the S4 layer replaced by an S5 layer.

Deng et al. 2023, "Facing Off World Model Backbones" (arXiv 2307.02064): "the S4 layer can be
replaced with other parallelisable SSMs such as S5"; S5WM was their best model on Memory Maze probing.

S5 layer (Smith et al. 2023, "Simplified State Space Layers for Sequence Modeling"): one MIMO
diagonal SSM whose P complex states are shared by all H channels. With conjugate symmetry (as in S5)
only P/2 modes are stored and the output is 2 Re(.):
    x_t = dA * x_{t-1} + dB u_t            x (B, P/2) complex, dB (P/2, H)
    y_t = 2 Re(C x_t) + D * u_t            C (H, P/2) complex, D (H,)
ZOH per state: dA = exp(dt Lambda), dB = ((exp(dt Lambda) - 1) / Lambda) B, learned log dt (P/2,).
Parallel mode: an associative scan over time in ceil(log2 T) vectorised steps (Hillis-Steele). At an
episode start the scan element's decay is set to 0 so x_t = dB u_t: nothing crosses a reset (as in
R2I, Samsami et al. 2024).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from world_models.ssm_blocks import SSMStack, loop_reference


def hippo_n_diag(d_state: int):
    """Lambda (P/2,) and eigenvectors V (P, P/2) of the HiPPO-N matrix (normal part of HiPPO-LegS).

    S5 init (Smith et al. 2023): S = A_LegS + p p^T with p_n = sqrt(n + 1/2) equals
    -1/2 I + (skew-symmetric); its eigenvalues are -1/2 + i w. Conjugate pairs: keep the first half
    of the sorted w, as the S5 code does.
    """
    n = torch.arange(d_state, dtype=torch.float64)
    q = torch.sqrt(2 * n + 1)
    A = -(torch.tril(q[:, None] * q[None, :]) - torch.diag(n))  # HiPPO-LegS
    p = torch.sqrt(n + 0.5)
    S = A + p[:, None] * p[None, :]
    skew = S - torch.diag(torch.diagonal(S))  # skew-symmetric part
    w, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))  # eig(skew) = i w
    lam = torch.complex(torch.diagonal(S).mean().expand(d_state // 2), w[: d_state // 2])
    return lam, V[:, : d_state // 2]


def associative_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """All x_t of x_t = a_t x_{t-1} + b_t (x_{-1} = 0) along dim 1, in ceil(log2 T) steps.

    Hillis-Steele doubling on the associative operator (a1, b1) o (a2, b2) = (a2 a1, a2 b1 + b2):
    after the step with offset d each element holds the composition of the last 2d inputs. Built with
    slicing and cat (no in-place writes) so autograd works. a, b (B, T, ...).
    """
    T, d = a.shape[1], 1
    while d < T:
        b = torch.cat([b[:, :d], a[:, d:] * b[:, :-d] + b[:, d:]], 1)  # (B, T, ...)
        a = torch.cat([a[:, :d], a[:, d:] * a[:, :-d]], 1)  # (B, T, ...)
        d *= 2
    return b


class S5(nn.Module):
    """S5 layer on H = d_model channels with d_state = P (P/2 complex modes stored).

    init 'hippo' (S5): Lambda from HiPPO-N, B = V^-1 B0 with B0 ~ N(0, 1/H) real (lecun normal);
    [ours] C = C0 V with C0 complex normal (unit variance; S5 offers several C inits).
    init 'lin' [ours, simpler]: S4D-Lin Lambda_n = -1/2 + i pi n, B complex normal with variance
    1/H, C complex normal.
    Parameters: Lambda as log(-Re) and Im (P/2,), B (P/2, H) and C (H, P/2) complex stored as real
    pairs, D (H,), log_dt (P/2,) uniform in [log dt_min, log dt_max].
    """

    def __init__(self, d_model: int, d_state: int = 64, dt_min: float = 1e-3, dt_max: float = 1e-1,
                 init: str = 'hippo'):
        super().__init__()
        assert d_state % 2 == 0, f'd_state must be even (conjugate pairs), got {d_state}'
        H, P2 = d_model, d_state // 2
        if init == 'hippo':
            lam, V = hippo_n_diag(d_state)
            B0 = torch.randn(d_state, H, dtype=torch.float64) / math.sqrt(H)  # (P, H)
            B = V.conj().T @ B0.to(V.dtype)  # (P2, H)
            C = torch.randn(H, d_state, dtype=torch.complex128) @ V  # (H, P2)
        elif init == 'lin':
            n = torch.arange(P2, dtype=torch.float32)
            lam = torch.complex(torch.full((P2,), -0.5), math.pi * n)
            B = torch.randn(P2, H, dtype=torch.cfloat) / math.sqrt(H)
            C = torch.randn(H, P2, dtype=torch.cfloat)
        else:
            raise ValueError(f"S5 init must be one of 'hippo', 'lin'; got {init!r}")
        log_dt = torch.rand(P2) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_lambda_real = nn.Parameter(torch.log(-lam.real).float())  # (P2,)
        self.lambda_imag = nn.Parameter(lam.imag.float())  # (P2,)
        self.B = nn.Parameter(torch.view_as_real(B.to(torch.cfloat)).contiguous())  # (P2, H, 2)
        self.C = nn.Parameter(torch.view_as_real(C.to(torch.cfloat)).contiguous())  # (H, P2, 2)
        self.D = nn.Parameter(torch.randn(H))

    def discrete(self):
        """ZOH: dA (P/2,), dB (P/2, H), C (H, P/2), all complex."""
        lam = torch.complex(-torch.exp(self.log_lambda_real), self.lambda_imag)
        dtl = torch.exp(self.log_dt) * lam
        dB = (torch.expm1(dtl) / lam)[:, None] * torch.view_as_complex(self.B)
        return torch.exp(dtl), dB, torch.view_as_complex(self.C)

    def initial_state(self, batch_size: int, device=None) -> torch.Tensor:
        dtype = torch.complex128 if self.D.dtype == torch.float64 else torch.complex64
        return torch.zeros(batch_size, self.lambda_imag.shape[0], dtype=dtype,
                           device=device or self.D.device)  # (B, P2)

    @staticmethod
    def _in_weight(dB: torch.Tensor) -> torch.Tensor:
        """[Re, Im] of dB (P/2, H) as one real (H, P) matrix, modes interleaved (see _input)."""
        return torch.view_as_real(dB.T.contiguous()).reshape(dB.shape[1], -1)  # (H, 2 P2)

    @staticmethod
    def _out_weight(C: torch.Tensor) -> torch.Tensor:
        """[Re C, -Im C] of C (H, P/2) as one real (P, H) matrix, interleaved (see _output)."""
        return torch.stack([C.real, -C.imag], -1).reshape(C.shape[0], -1).T  # (2 P2, H)

    @staticmethod
    def _input(u: torch.Tensor, w_in: torch.Tensor) -> torch.Tensor:
        """dB u for real u (..., H): one real matmul with _in_weight(dB) -> (..., P/2) complex."""
        return torch.view_as_complex((u @ w_in).reshape(*u.shape[:-1], -1, 2))  # (..., P2)

    @staticmethod
    def _output(x: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
        """2 Re(C x) for x (..., P/2) -> (..., H): one real matmul, [Re x, Im x] . _out_weight(C)."""
        return 2 * torch.view_as_real(x).flatten(-2) @ w_out  # (..., H)

    def forward(self, u: torch.Tensor, is_first: torch.Tensor, x0: torch.Tensor, positions=None):
        """Parallel mode. u (B, T, H), is_first (B, T) bool, x0 (B, P/2) complex.

        Returns y (B, T, H), final state (B, P/2), states at positions (B*K, P/2) or None.
        """
        B, T, H = u.shape
        dA, dB, C = self.discrete()
        bu = self._input(u, self._in_weight(dB))  # (B, T, P2)
        a = dA * (~is_first)[..., None].to(dA.real.dtype)  # (B, T, P2) decay, 0 at a reset
        bu = torch.cat([bu[:, :1] + a[:, :1] * x0[:, None], bu[:, 1:]], 1)  # (B, T, P2) with x0
        xs = associative_scan(a, bu)  # (B, T, P2) every state
        y = self._output(xs, self._out_weight(C)) + self.D * u  # (B, T, H)
        at = None if positions is None else xs[:, positions].reshape(-1, xs.shape[-1])  # (B*K, P2)
        return y, xs[:, -1], at

    def step_params(self):
        """dA (P/2,) complex and the real input/output weights (H, P), (P, H) for `step`."""
        dA, dB, C = self.discrete()
        return dA, self._in_weight(dB), self._out_weight(C)

    def step(self, u: torch.Tensor, x: torch.Tensor, is_first: torch.Tensor | None = None,
             params=None):
        """Recurrent mode. u (B, H), x (B, P/2) -> y (B, H), new x. params: step_params() or None."""
        if is_first is not None:
            x = torch.where(is_first[:, None], torch.zeros_like(x), x)
        dA, w_in, w_out = self.step_params() if params is None else params
        x = dA * x + self._input(u, w_in)  # (B, P2)
        return self._output(x, w_out) + self.D * u, x

    def forward_reference(self, u, is_first, x0):
        """Slow reference for tests: y (B, T, H) and every state (B, T, P/2) from a loop of `step`."""
        return loop_reference(self, u, is_first, x0)


class S5Core(SSMStack):
    """S5WM core [paper]: the S4WM block stack (SSMBlock) with S5 layers, final LayerNorm.

    State: list of 2*n_blocks complex tensors (B, d_state/2), one per S5 layer.
    """

    def __init__(self, *, d_model: int, n_blocks: int = 2, d_state: int = 64, dropout: float = 0.0,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, init: str = 'hippo',
                 mlp_ratio: float = 2.0):
        if init not in ('hippo', 'lin'):
            raise ValueError(f"S5 init must be one of 'hippo', 'lin'; got {init!r}")

        def layer():
            return S5(d_model, d_state, dt_min, dt_max, init)

        super().__init__(layer, d_model=d_model, n_blocks=n_blocks, mlp_ratio=mlp_ratio,
                         dropout=dropout)
