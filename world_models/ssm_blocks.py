"""Block and stack shared by the SSM cores (S4WM in s4wm.py, S5WM in s5wm.py).

Deng et al. 2023, "Facing Off World Model Backbones" (arXiv 2307.02064): the sequence model of
S4WM is a stack of pre-norm residual S4 blocks; S5WM swaps the S4 layer for an S5 layer and keeps the
block. Only the SSM *layer* differs between the two backbones, so the block, the stack and the
SequenceCore plumbing live here once.

An SSM layer used here implements (u (B, T, H) with H = d_model; `state` is one complex tensor):
    initial_state(batch_size, device) -> state (B, ...)
    forward(u, is_first, state, positions=None) -> (y (B, T, H), final_state, states_at or None)
        states_at: (B*K, ...) b-major, the state after consuming u_t for t in positions (K,);
        a layer may return it in a lazy form that only its step / rollout_begin / rollout_end
        read (S4DRollout: S4DStart, a core.LazyStart; rollout_end gives the tensor)
    step_params() -> parameter-only tensors that step needs (its discretisation), computed once
    step(u (B, H), state, is_first=None, params=None) -> (y (B, H), new_state)

Core state: a list with one layer state per SSM layer, ordered block 0 layer 0, block 0 layer 1,
block 1 layer 0, ...; every entry is batch first.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from world_models.core import SequenceCore


def loop_reference(layer, u: torch.Tensor, is_first: torch.Tensor, x0: torch.Tensor):
    """Slow reference of a layer's parallel mode: a plain loop of `layer.step` over time.

    u (B, T, H), is_first (B, T) bool, x0 layer state -> y (B, T, H), every state (B, T, ...).
    """
    ys, xs, x = [], [], x0
    for t in range(u.shape[1]):
        y, x = layer.step(u[:, t], x, is_first[:, t])
        ys.append(y)
        xs.append(x)
    return torch.stack(ys, 1), torch.stack(xs, 1)  # (B, T, H), (B, T, ...)


class SSMBlock(nn.Module):
    """Pre-norm residual block [paper, Deng et al. 2023, S4WM architecture]:
        y   = x + Linear(GELU(SSM(LN(x))))
        y   = y + Linear(GELU(SSM(LN(y))))
        out = y + MLP(LN(y))          ("adding the final MLP improves generation quality")
    [ours] GELU between the SSM and the Linear; MLP = Linear(D, mlp_ratio*D) -> GELU ->
    Linear(mlp_ratio*D, D); dropout on each residual branch (before it is added).
    """

    def __init__(self, layer_factory, d_model: int, mlp_ratio: float = 2.0, dropout: float = 0.0):
        super().__init__()
        hidden = int(round(mlp_ratio * d_model))
        self.ssm_norms = nn.ModuleList([nn.LayerNorm(d_model) for _ in range(2)])
        self.ssms = nn.ModuleList([layer_factory() for _ in range(2)])
        self.ssm_outs = nn.ModuleList([nn.Linear(d_model, d_model) for _ in range(2)])
        self.mlp_norm = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))
        self.drop = nn.Dropout(dropout)

    def run(self, x: torch.Tensor, call) -> torch.Tensor:
        """x (..., D). call(layer, u) runs one SSM layer on u (same shape as x) and returns y.

        The same code serves parallel mode (x (B, T, D)) and step mode (x (B, D)); only `call` differs.
        """
        for norm, ssm, out in zip(self.ssm_norms, self.ssms, self.ssm_outs):
            x = x + self.drop(out(F.gelu(call(ssm, norm(x)))))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class SSMStack(SequenceCore):
    """`n_blocks` SSMBlocks over d_model channels, then a final LayerNorm; a SequenceCore.

    layer_factory() builds one SSM layer (see the module docstring for its interface).
    """

    def __init__(self, layer_factory, *, d_model: int, n_blocks: int, mlp_ratio: float = 2.0,
                 dropout: float = 0.0):
        super().__init__()
        self.d_model = d_model
        self.blocks = nn.ModuleList(
            [SSMBlock(layer_factory, d_model, mlp_ratio, dropout) for _ in range(n_blocks)])
        self.norm = nn.LayerNorm(d_model)

    @property
    def layers(self) -> list:
        return [ssm for block in self.blocks for ssm in block.ssms]

    def initial_state(self, batch_size: int, device=None) -> list:
        return [layer.initial_state(batch_size, device) for layer in self.layers]

    def forward(self, g: torch.Tensor, is_first: torch.Tensor, state, positions=None):
        B, T, D = g.shape
        assert D == self.d_model and is_first.shape == (B, T), (g.shape, is_first.shape)
        assert len(state) == len(self.layers), (len(state), len(self.layers))
        if positions is not None and len(positions):
            assert positions.dim() == 1 and 0 <= int(positions.min()) and int(positions.max()) < T
        is_first = is_first.bool()
        states, finals, at = iter(state), [], []

        def call(layer, u):
            y, final, xs = layer(u, is_first, next(states), positions)
            finals.append(final)
            at.append(xs)
            return y

        x = g
        for block in self.blocks:
            x = block.run(x, call)
        return self.norm(x), finals, (at if positions is not None else None)  # h (B, T, D)

    def step_params(self) -> list:
        return [layer.step_params() for layer in self.layers]

    def rollout_begin(self, state, params=None):
        params = params if params is not None else [None] * len(self.layers)
        return [layer.rollout_begin(x, p) if hasattr(layer, "rollout_begin") else x
                for layer, x, p in zip(self.layers, state, params)]

    def rollout_end(self, state):
        return [layer.rollout_end(x) if hasattr(layer, "rollout_end") else x
                for layer, x in zip(self.layers, state)]

    def step(self, g: torch.Tensor, state, is_first: torch.Tensor | None = None, params=None):
        B, D = g.shape
        assert D == self.d_model, g.shape
        is_first = None if is_first is None else is_first.bool()
        states, new = iter(state), []
        params = iter(params if params is not None else [None] * len(self.layers))

        def call(layer, u):
            y, s = layer.step(u, next(states), is_first, next(params))
            new.append(s)
            return y

        x = g
        for block in self.blocks:
            x = block.run(x, call)
        return self.norm(x), new  # h (B, D)
