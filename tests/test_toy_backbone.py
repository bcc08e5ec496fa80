"""A fifth backbone, added in this file alone: a causal running-mean core. One registry line and one
config section (both added here for the test's duration) make it a choice of `--backbone`; a debug
run of main.py trains it (world model and actor-critic, which imagines) and the trained world model
imagines from observed context. Nothing outside this file names it."""
import json

import pytest
import torch
from torch import nn

import main
from agent.agent import build_agent
from common import checkpoint, cli
from common.config import ConfigError, load_blocks, merge
from world_models import BACKBONES
from world_models.core import SequenceCore


class CausalMeanCore(SequenceCore):
    """h_t = MLP(mean of g over the episode so far); state {'sum': (B, D), 'count': (B, 1)}.
    Parallel mode is a plain loop of `step`: a toy, not a fast path."""

    def __init__(self, *, d_model: int, mlp_ratio: float = 1.0):
        super().__init__()
        self.d_model = d_model
        hidden = int(mlp_ratio * d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden), nn.GELU(), nn.Linear(hidden, d_model))

    def initial_state(self, batch_size: int, device=None) -> dict:
        return {"sum": torch.zeros(batch_size, self.d_model, device=device),
                "count": torch.zeros(batch_size, 1, device=device)}

    def step(self, g, state, is_first=None, params=None):
        keep = 1.0 if is_first is None else (~is_first).to(g.dtype)[:, None]  # (B, 1)
        total = state["sum"] * keep + g  # (B, D)
        count = state["count"] * keep + 1  # (B, 1)
        return self.mlp(total / count), {"sum": total, "count": count}

    def forward(self, g, is_first, state, positions=None):
        hs, states = [], []
        for t in range(g.shape[1]):
            h, state = self.step(g[:, t], state, is_first[:, t])
            hs.append(h)
            states.append(state)
        at = None
        if positions is not None:  # (B*K, ...) b-major
            at = {k: torch.stack([states[p][k] for p in positions.tolist()], 1).flatten(0, 1)
                  for k in state}
        return torch.stack(hs, 1), state, at  # h (B, T, D)


@pytest.fixture
def mean_backbone(monkeypatch):
    """Registers 'mean' (one registry line) with its config section and block (configs.yaml's
    part), for this test only."""
    blocks = load_blocks()
    blocks["defaults"]["mean"] = {"mlp_ratio": 1.0}
    blocks["mean"] = {"backbone": "mean"}
    monkeypatch.setitem(BACKBONES, "mean", CausalMeanCore)
    monkeypatch.setattr(cli, "load_blocks", lambda: blocks)
    return blocks


def test_a_fifth_backbone_trains_and_imagines(mean_backbone, tmp_path):
    logdir = tmp_path / "run"
    main.main(["--configs", "debug", "dmc", "mean", "--mean.mlp_ratio", "2", "--logdir",
               str(logdir), "--steps", "150"])
    rows = [json.loads(l) for l in (logdir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    assert {"train/loss/image", "train/loss/actor", "eval/return"} <= keys, keys
    saved = (logdir / "config.yaml").read_text()
    assert "backbone: mean" in saved and "mlp_ratio: 2" in saved
    # the trained world model (its builder got the section: mlp_ratio 2) imagines from a context
    config = merge(mean_backbone, ["debug", "dmc", "mean"], {"mean.mlp_ratio": "2"})
    agent = build_agent(config, act_dim=6, discrete=False, device="cpu")  # walker: 6 joints
    agent.restore(checkpoint.load(logdir / "checkpoint.pt", main.FIELDS)["agent"])
    wm = agent.wm
    assert isinstance(wm.core, CausalMeanCore) and wm.core.mlp[0].out_features == 2 * wm.d_model
    actions = torch.zeros(2, 6, 6)  # (N, horizon, A)
    with torch.no_grad():
        im = wm.imagine(wm.initial_state(2), actions, horizon=6)
    assert im["feat"].shape == (2, 7, wm.feat_size) and torch.isfinite(im["feat"]).all()


def test_a_fifth_backbone_is_a_config_choice(mean_backbone):
    assert merge(mean_backbone, ["debug", "mean"]).backbone == "mean"
    with pytest.raises(ConfigError, match="choices: s4wm, s5wm, rssm, tssm, mean"):
        merge(mean_backbone, ["debug"], {"backbone": "median"})
