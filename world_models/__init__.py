"""World-model backbones behind one interface (world_models/base.py), picked by one config word.

    backbone: s4wm | s5wm | rssm | tssm        (BACKBONES below)

Only `build_world_model` (and `observation_keys`, which the collector shares) reads the config;
every module receives its sizes as keyword arguments: the backbone its own config section.

Observation keys (DreamerV3's convention): `wm.cnn_keys` and `wm.mlp_keys` are regular expressions
matched against the whole key (re.fullmatch; '' matches no key). The CNN takes the one uint8
(H, W, C) observation cnn_keys matches, the MLP every float vector (n,) mlp_keys matches; a key of
the other kind is passed over, so `--wm.mlp_keys '.*'` means "every vector".
"""
from __future__ import annotations

import re

import numpy as np

from common.config import ConfigError, register_choices
from common.distributions import LatentSpace
from world_models.base import LatentSSMWorldModel, WorldModel
from world_models.rssm import RSSM
from world_models.s4wm import S4Core
from world_models.s5wm import S5Core
from world_models.tssm import TransformerXLCore


# The registry: backbone word -> its class, either a SequenceCore (world_models/core.py; it runs
# inside LatentSSMWorldModel) or a WorldModel of its own (RSSM). The config section of the same word
# (`s4wm:`, `rssm:`, ...; none for a backbone without settings) holds the class's keyword arguments;
# a core also gets d_model. Config validation (register_choices below), the benchmarks and the tests
# read this dict: a backbone is one file, one line here and one section in configs.yaml.
BACKBONES = {"s4wm": S4Core, "s5wm": S5Core, "rssm": RSSM, "tssm": TransformerXLCore}
register_choices("backbone", BACKBONES)


# Keys of a replay step that are not observations (replay/buffer.py), never model inputs.
NOT_OBSERVATIONS = ("action", "reward", "is_first", "is_last", "is_terminal")


def observation_keys(config, spaces: dict) -> tuple[str | None, dict[str, int]]:
    """(image key or None, {vector key: size}) that the world model reads, chosen from the env's
    observations `spaces` {key: (shape, dtype)} by wm.cnn_keys / wm.mlp_keys (module docstring).
    Raises ConfigError (one line, naming the observations) if nothing or several images match."""
    cnn, mlp = re.compile(config.wm.cnn_keys), re.compile(config.wm.mlp_keys)
    spaces = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in spaces.items()
              if k not in NOT_OBSERVATIONS}
    images = [k for k, (shape, dtype) in spaces.items()
              if len(shape) == 3 and dtype == np.uint8 and cnn.fullmatch(k)]
    vectors = {k: shape[0] for k, (shape, dtype) in spaces.items()
               if len(shape) == 1 and np.issubdtype(dtype, np.floating) and mlp.fullmatch(k)}
    have = ", ".join(f"{k} {shape}" for k, (shape, _) in spaces.items())
    if len(images) > 1:
        raise ConfigError(f"wm.cnn_keys={config.wm.cnn_keys!r} matches several images "
                          f"({', '.join(images)}); the world model takes one "
                          f"(observations: {have})")
    if not images and not vectors:
        raise ConfigError(f"wm.cnn_keys={config.wm.cnn_keys!r} and wm.mlp_keys="
                          f"{config.wm.mlp_keys!r} match no image (H, W, C) uint8 or vector (n,) "
                          f"float observation of task {config.task} (observations: {have})")
    return (images[0] if images else None), vectors


def build_world_model(config, act_dim: int, channels: int = 3,
                      spaces: dict | None = None) -> WorldModel:
    """The configured backbone's world model. spaces: the env's observations {key: (shape,
    dtype)}, from which `observation_keys` picks the inputs; None: one RGB image 'image'
    (env.image_size square, `channels` channels), as every memory dataset holds."""
    name = config.backbone
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}' (choices: {', '.join(BACKBONES)})")
    c = config
    if spaces is None:
        spaces = {"image": ((c.env.image_size, c.env.image_size, channels), np.uint8)}
    image_key, vectors = observation_keys(c, spaces)
    image_shape = dict(spaces)[image_key][0] if image_key else (c.env.image_size,) * 2 + (channels,)
    if image_shape[0] != image_shape[1]:
        raise ConfigError(f"observation '{image_key}' is {image_shape}: the CNN takes square "
                          "images")
    kw = dict(act_dim=act_dim,
              latent=LatentSpace(c.wm.latent, c.wm.stoch, c.wm.classes, c.wm.unimix),
              d_model=c.wm.d_model, units=c.wm.units, layers=c.wm.layers,
              cnn_depth=c.wm.cnn_depth, reward_bins=c.wm.reward_bins,
              scales=c.loss.to_dict(), image_size=image_shape[0], channels=image_shape[2],
              image_key=image_key, vectors=vectors)
    backbone = BACKBONES[name]
    section = c.to_dict().get(name, {})  # the backbone's own keyword arguments
    if issubclass(backbone, WorldModel):
        return backbone(**section, **kw)
    return LatentSSMWorldModel(core=backbone(d_model=c.wm.d_model, **section), **kw)
