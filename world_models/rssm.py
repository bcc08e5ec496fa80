"""RSSM-TBTT: DreamerV3's recurrent state-space model trained with truncated backprop through time.

h_t = GRU(h_{t-1}, MLP([z_{t-1}, a_t]));  prior p(z_t | h_t);  posterior q(z_t | h_t, x_t).
The posterior reads h_t, so observation is sequential. Long sequences are cut into chunks of
`tbtt_length` steps; the state at the end of a chunk starts the next one *detached* (the paper's
RSSM-TBTT baseline, as in the Memory Maze paper's Dreamer (TBTT)).
"""
from __future__ import annotations

import torch
from torch import nn

from common.tree import detach
from world_models.base import WorldModel
from world_models.nets import MLP


class LayerNormGRUCell(nn.Module):
    """DreamerV3's GRU: one Linear over [x, h] with LayerNorm; update gate biased by -1 so the cell
    starts out remembering."""

    def __init__(self, inp: int, size: int):
        super().__init__()
        self.linear = nn.Linear(inp + size, 3 * size, bias=False)
        self.norm = nn.LayerNorm(3 * size)

    def forward(self, x, h):
        parts = self.norm(self.linear(torch.cat([x, h], -1)))  # (B, 3D)
        reset, cand, update = parts.chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1)
        return update * cand + (1 - update) * h


class RSSM(WorldModel):
    def __init__(self, *, tbtt_length: int, **kw):
        super().__init__(**kw)
        lat, units, D = self.latent, kw["units"], self.d_model
        self.tbtt_length = tbtt_length
        self.img_in = MLP(lat.size + self.act_dim, units, 1)
        self.gru = LayerNormGRUCell(units, D)
        self.prior_net = MLP(D, units, 1, lat.stats_size)
        # The posterior's first layer on [h, e] is split so the embedding part runs once per chunk.
        self.post_h = nn.Linear(D, units, bias=False)
        self.post_e = nn.Linear(self.embed_size, units, bias=False)
        self.post_out = nn.Sequential(nn.LayerNorm(units), nn.SiLU(), nn.Linear(units, lat.stats_size))

    def initial_state(self, batch_size: int) -> dict:
        dev = self.device
        return {"h": torch.zeros(batch_size, self.d_model, device=dev),
                "z": torch.zeros(batch_size, self.latent.size, device=dev)}

    def _recur(self, state, action):
        return self.gru(self.img_in(torch.cat([state["z"], action], -1)), state["h"])  # (B, D)

    def observe(self, embed, action, is_first, state, positions=None):
        B, T, _ = embed.shape
        e_proj = self.post_e(embed)  # (B, T, U)
        hs, zs, posts = [], [], []
        for t in range(T):
            if t > 0 and t % self.tbtt_length == 0:
                state = detach(state)  # TBTT: the next chunk starts from a detached state
            keep = (~is_first[:, t]).unsqueeze(-1).to(embed.dtype)  # (B, 1)
            state = {"h": state["h"] * keep, "z": state["z"] * keep}
            h = self._recur(state, action[:, t] * keep)
            post = self.post_out(self.post_h(h) + e_proj[:, t])  # (B, S)
            z = self.latent.sample(post)
            state = {"h": h, "z": z}
            hs.append(h), zs.append(z), posts.append(post)
        h, z, post = torch.stack(hs, 1), torch.stack(zs, 1), torch.stack(posts, 1)  # (B, T, .)
        prior = self.prior_net(h)  # (B, T, S): batched after the loop
        starts = None
        if positions is not None:
            K = len(positions)
            starts = {"h": h[:, positions].reshape(B * K, -1), "z": z[:, positions].reshape(B * K, -1)}
        return {"post": post, "prior": prior, "z": z, "h": h}, state, starts

    def img_step(self, state, action, params=None):  # params: RSSM caches nothing
        h = self._recur(state, action)
        return {"h": h, "z": self.latent.sample(self.prior_net(h))}
