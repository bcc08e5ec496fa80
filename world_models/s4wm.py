"""S4WM sequence core: a stack of S4 blocks with diagonal S4 (S4D) layers.

Deng et al. 2023, "Facing Off World Model Backbones" (arXiv 2307.02064): the S4 blocks map
g_t = MLP([z_{t-1}, a_t]) to h_t; training runs them in convolution mode over whole sequences,
imagination runs them over the context in parallel and then one step at a time (recurrent mode).
The layer: world_models/s4d.py; its imagination fast path: world_models/s4d_rollout.py; the block
and stack shared with S5WM: world_models/ssm_blocks.py.
"""
from __future__ import annotations

from world_models.s4d import s4d_init
from world_models.s4d_rollout import S4DRollout
from world_models.ssm_blocks import SSMStack


class S4Core(SSMStack):
    """S4WM core [paper]: n_blocks S4 blocks (see SSMBlock) over d_model channels, final LayerNorm.

    State: list of 2*n_blocks complex tensors (B, d_model, d_state/2), one per S4D layer.
    """

    def __init__(self, *, d_model: int, n_blocks: int = 2, d_state: int = 64, dropout: float = 0.0,
                 dt_min: float = 1e-3, dt_max: float = 1e-1, init: str = 'lin',
                 mlp_ratio: float = 2.0):
        s4d_init(d_state, init)  # fail early on an unknown init

        def layer():
            return S4DRollout(d_model, d_state, dt_min, dt_max, init)

        super().__init__(layer, d_model=d_model, n_blocks=n_blocks, mlp_ratio=mlp_ratio,
                         dropout=dropout)
