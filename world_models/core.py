"""The contract every sequence backbone core implements.

A *core* is the part of a world model that differs between S4WM, S5WM and TSSM-XL: it maps the
per-step inputs g_{1:T} = MLP([z_{t-1}, a_t]) to history embeddings h_{1:T}, carrying a state.
RSSM is not a core (its posterior reads h_t), it subclasses the world model directly.

Shapes (batch-major everywhere, see docs/shapes.md):
    g         (B, T, D)   float   inputs, D = d_model
    is_first  (B, T)      bool    True where an episode starts: the state is reset to
                                   initial_state *before* g_t is consumed, so nothing crosses it
    h         (B, T, D)   float   outputs; h_t depends on g_{<=t} of the same episode only
    state     pytree of tensors whose first dimension is B (dict / list / tuple); the start
              states of imagination (forward's states_at) may also hold LazyStart leaves
              (common/tree.py: detached, refused by every tree helper but `detach`)
"""
from __future__ import annotations

import torch
from torch import nn

# The third kind of state leaf, besides tensors and None: an imagination start not built yet.
# Defined beside the tree helpers (which refuse it except in `detach`), part of this contract.
from common.tree import LazyStart  # noqa: F401  (re-exported: cores subclass core.LazyStart)


class SequenceCore(nn.Module):
    d_model: int

    def initial_state(self, batch_size: int, device=None) -> dict:
        """State before any input: (B, ...) tensors, all zeros / empty memory."""
        raise NotImplementedError

    def forward(self, g: torch.Tensor, is_first: torch.Tensor, state, positions=None):
        """Parallel mode over a whole chunk.

        g (B, T, D), is_first (B, T) bool, state from initial_state or a previous call.
        positions: optional LongTensor (K,) of time indices in [0, T).
        Returns (h (B, T, D), final_state, states_at) where states_at is None when positions is None,
        else the state *after* consuming g_t for each t in positions, as a pytree whose batch
        dimension is B*K ordered b-major (row b*K + k is batch b at positions[k]). These are the
        start states of imagination; they need not carry gradient (the agent detaches them), so a
        core may compute them without building a graph. A leaf may be a LazyStart (common/tree.py) that only
        this core's step / rollout_begin / rollout_end read (S4WM: S4DStart, whose states are
        never built when a rollout does not need them); `rollout_end(states_at)` gives tensors.
        """
        raise NotImplementedError

    def step_params(self):
        """What `step` derives from the parameters alone (SSM discretisation, position projections),
        computed once for a rollout: pass it as step(..., params=) while the parameters do not change
        (one imagination, one sequence of acting steps). Recompute after every parameter update; it
        carries the graph to the parameters when built with grad enabled. None: nothing to cache."""
        return None

    def step(self, g: torch.Tensor, state, is_first: torch.Tensor | None = None, params=None):
        """Recurrent mode, one step: g (B, D) -> (h (B, D), new_state). is_first (B,) resets first.
        params: from step_params() (the same values `step` would recompute), or None."""
        raise NotImplementedError

    def rollout_begin(self, state, params=None):
        """The state a rollout (imagination) steps from, which may take a faster form than the
        stored state (S4: the convolution form, see S4DRollout.rollout_begin). params: step_params() of
        the same rollout, or None. Identity by default."""
        return state

    def rollout_end(self, state):
        """Back to the stored form after a rollout's last step (inverse of rollout_begin)."""
        return state
