"""World-model backbones behind one interface (world_models/base.py), picked by one config word.

    backbone: s4wm | s5wm | rssm | tssm

Only `build_world_model` reads the config; every module receives its sizes as keyword arguments.
"""
from __future__ import annotations

from common.config import ConfigError
from common.dists import LatentSpace
from world_models.base import LatentSSMWorldModel, WorldModel


def _s4(c):
    from world_models.s4wm import S4Core
    return S4Core(d_model=c.wm.d_model, n_blocks=c.s4.n_blocks, d_state=c.s4.d_state,
                  dt_min=c.s4.dt_min, dt_max=c.s4.dt_max, init=c.s4.init,
                  mlp_ratio=c.s4.mlp_ratio, dropout=c.s4.dropout)


def _s5(c):
    from world_models.s5wm import S5Core
    return S5Core(d_model=c.wm.d_model, n_blocks=c.s5.n_blocks, d_state=c.s5.d_state,
                  dt_min=c.s5.dt_min, dt_max=c.s5.dt_max, mlp_ratio=c.s5.mlp_ratio,
                  dropout=c.s5.dropout)


def _tssm(c):
    from world_models.tssm import TransformerXLCore
    return TransformerXLCore(d_model=c.wm.d_model, n_layers=c.tssm.n_layers,
                             n_heads=c.tssm.n_heads, mem_len=c.tssm.mem_len,
                             ff_ratio=c.tssm.ff_ratio, dropout=c.tssm.dropout)


# backbone word -> core builder (None: the backbone is a WorldModel subclass of its own).
BACKBONES = {"s4wm": _s4, "s5wm": _s5, "tssm": _tssm, "rssm": None}


def build_world_model(config, act_dim: int, channels: int = 3) -> WorldModel:
    name = config.backbone
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}' (choices: {', '.join(BACKBONES)})")
    c = config
    kw = dict(act_dim=act_dim,
              latent=LatentSpace(c.wm.latent, c.wm.stoch, c.wm.classes, c.wm.unimix),
              d_model=c.wm.d_model, units=c.wm.units, layers=c.wm.layers,
              cnn_depth=c.wm.cnn_depth, reward_bins=c.wm.reward_bins,
              scales=c.loss.to_dict(), image_size=c.env.image_size, channels=channels)
    if name == "rssm":
        from world_models.rssm import RSSM
        return RSSM(tbtt_length=c.rssm.tbtt_length, **kw)
    return LatentSSMWorldModel(core=BACKBONES[name](c), **kw)
