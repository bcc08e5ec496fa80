"""The world-model interface and the parts every backbone shares.

Time alignment (replay and model, see docs/shapes.md):

    step t:   image_t   action_t (led to image_t; 0 when is_first_t)   reward_t (received on arrival)
    model:    h_t = f(z_{<t}, a_{<=t})     prior p(z_t | h_t)     posterior q(z_t | .)
              feat_t = [h_t, z_t] -> decoder (image_t), reward head (reward_t), continue head (1 - term_t)

A state is a dict {'h': (B, D), 'z': (B, Z), 'core': backbone-specific pytree}: everything needed to
continue from step t, so acting, training chunks and imagination all resume from the same thing.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.profiler import record_function

from common.distributions import LatentSpace, TwoHot, twohot_bins
from world_models import losses
from world_models.core import SequenceCore
from world_models.nets import (MLP, ConvDecoder, ConvEncoder, VectorDecoder, VectorEncoder,
                               concat_vectors, image_to_unit)


class WorldModel(nn.Module):
    """Encoder, decoder, reward and continue heads, the latent space and the loss; subclasses supply
    `initial_state`, `observe` and `img_step` (the backbone)."""

    def __init__(self, *, act_dim: int, latent: LatentSpace, d_model: int, units: int, layers: int,
                 cnn_depth: int, reward_bins: int, scales: dict, image_size: int = 64,
                 channels: int = 3, image_key: str | None = "image",
                 vectors: dict[str, int] | None = None):
        """image_key: the observation the CNN encodes and decodes (None: no image); vectors:
        {key: size} of the vector observations the MLPs encode and decode ({} or None: none)."""
        super().__init__()
        vectors = dict(vectors or {})
        if image_key is None and not vectors:
            raise ValueError("a world model needs an image key or at least one vector key")
        self.act_dim, self.latent, self.d_model = act_dim, latent, d_model
        self.image_key, self.vector_keys = image_key, tuple(vectors)
        self.scales = {k: float(v) for k, v in scales.items() if k != "free_nats"}
        self.free_nats = float(scales.get("free_nats", 0.0))
        self.feat_size = d_model + latent.size
        self.encoder = self.decoder = self.vector_encoder = self.vector_decoder = None
        if image_key is not None:
            self.encoder = ConvEncoder(image_size, channels, cnn_depth)
            self.decoder = ConvDecoder(self.feat_size, image_size, channels, cnn_depth)
        if vectors:
            self.vector_encoder = VectorEncoder(vectors, units, layers)
            self.vector_decoder = VectorDecoder(self.feat_size, vectors, units, layers)
        self.embed_size = sum(m.out_size for m in (self.encoder, self.vector_encoder) if m)
        self.reward_head = MLP(self.feat_size, units, layers, reward_bins)
        self.cont_head = MLP(self.feat_size, units, layers, 1)
        # DreamerV3: zero-initialised reward output so early predictions are exactly 0.
        nn.init.zeros_(self.reward_head.net[-1].weight)
        nn.init.zeros_(self.reward_head.net[-1].bias)
        self.register_buffer("bins", twohot_bins(reward_bins), persistent=False)

    # ---- backbone interface -----------------------------------------------------------------
    def initial_state(self, batch_size: int) -> dict:
        """State before the first step of every stream: {'h', 'z', 'core'} with batch B."""
        raise NotImplementedError

    def observe(self, embed, action, is_first, state, positions=None):
        """Posterior pass over a chunk. embed (B, T, E), action (B, T, A), is_first (B, T) bool.

        Returns (out, new_state, starts): out holds 'post', 'prior' stats (B, T, S), 'z' (B, T, Z)
        and 'h' (B, T, D); new_state continues after the chunk; starts is the state after each of
        the time indices `positions` (K,), flattened to batch B*K (b-major), or None.
        """
        raise NotImplementedError

    def img_step(self, state: dict, action: torch.Tensor, params=None) -> dict:
        """One imagined step: action (B, A) taken in `state` -> next state with z from the prior.
        params: from img_params() (computed once per rollout), or None to derive them here."""
        raise NotImplementedError

    def img_params(self):
        """Parameter-only values img_step would recompute every step (see SequenceCore.step_params);
        valid until the next parameter update. None: nothing to cache."""
        return None

    def img_begin(self, state: dict, params=None) -> dict:
        """The start state in the form img_step runs fastest on (see SequenceCore.rollout_begin);
        params: img_params() of the same rollout, or None."""
        return state

    def img_end(self, state: dict) -> dict:
        """Back to the ordinary state form after the last imagined step."""
        return state

    # ---- shared -------------------------------------------------------------------------------
    @property
    def device(self):
        return self.bins.device

    @property
    def obs_keys(self) -> tuple[str, ...]:
        """The observation keys the model reads: its image key (if any), then its vector keys."""
        return ((self.image_key,) if self.image_key else ()) + self.vector_keys

    def embed(self, data: dict) -> torch.Tensor:
        """Observations {key: (B, T, ...)} (uint8 image, float vectors; other keys are ignored)
        -> (B, T, E): the CNN embedding of the image and the MLP embedding of the vectors."""
        return self._embed(data)[0]

    def _embed(self, data: dict):
        """(embedding (B, T, E), image in [-0.5, 0.5] units (B, T, H, W, C) or None): the image is
        converted once, for the encoder and as the decoder's target."""
        parts, image = [], None
        if self.encoder is not None:
            image = image_to_unit(data[self.image_key])  # (B, T, H, W, C) float
            parts.append(self.encoder.embed(image))  # (B, T, E_cnn)
        if self.vector_encoder is not None:
            parts.append(self.vector_encoder(data))  # (B, T, units)
        return (parts[0] if len(parts) == 1 else torch.cat(parts, -1)), image  # (B, T, E)

    @staticmethod
    def feat(x: dict) -> torch.Tensor:
        """[h, z] of a state (B, F) or of an observe output (B, T, F)."""
        return torch.cat([x["h"], x["z"]], -1)

    def posterior(self, out: dict) -> torch.Tensor:
        """What the posterior of an observe output holds at each step, without sampling it:
        (B, T, S*C) class probabilities (categorical; unimix included) or the Gaussian's
        (B, T, 2*S) raw stats. At t = 0, feat's h holds nothing of frame 0 and z is one sample of
        this distribution, so a probe on feat measures perception plus sampling noise; a probe
        on this measures perception alone (memory/probe.py's cue probe)."""
        if self.latent.kind == "categorical":
            return self.latent.probs(out["post"]).flatten(-2)
        return out["post"].float()

    def reward(self, feat):
        return TwoHot(self.reward_head(feat), self.bins).mean()

    def cont(self, feat):
        return torch.sigmoid(self.cont_head(feat).squeeze(-1))

    def loss(self, data: dict, state: dict, positions=None):
        """World-model loss on a batch of sequences (data tensors (B, T, ...), see replay/).

        Returns (loss scalar, metrics dict, out, new_state, starts)."""
        with record_function("wm/encode"):
            embed, image = self._embed(data)  # (B, T, E); image (B, T, H, W, C) float or None
        with record_function("wm/observe"):
            out, new_state, starts = self.observe(embed, data["action"], data["is_first"], state,
                                                  positions)
        with record_function("wm/decode_heads_loss"):
            feat = self.feat(out)  # (B, T, F)
            dyn, rep, kl = losses.kl_balance(self.latent, out["post"], out["prior"],
                                             self.free_nats)
            terms = {}
            if image is not None:
                terms["image"] = losses.image_loss(self.decoder(feat), image)
            if self.vector_decoder is not None:
                target = concat_vectors(data, self.vector_keys)  # (B, T, N) observation units
                terms["vector"] = losses.vector_loss(self.vector_decoder(feat), target)
            terms.update({
                "reward": losses.reward_loss(self.reward_head(feat), data["reward"], self.bins),
                "cont": losses.cont_loss(self.cont_head(feat).squeeze(-1),
                                         1.0 - data["is_terminal"].float()),
                "dyn": dyn,
                "rep": rep,
            })
            loss, metrics = losses.combine(terms, self.scales)
            metrics["kl"] = kl.mean()
            with torch.no_grad():  # metrics only: no graph (1.5x cheaper than one to detach)
                metrics["post_entropy"] = self.latent.entropy(out["post"]).mean()
                metrics["prior_entropy"] = self.latent.entropy(out["prior"]).mean()
        return loss, metrics, out, new_state, starts

    def imagine(self, start: dict, policy, horizon: int, final_state: bool = True) -> dict:
        """Roll the prior forward `horizon` steps with actions from `policy(feat) -> action`
        (or from a tensor of actions (N, H, A)). Returns 'feat' (N, H+1, F), 'action' (N, H, A)
        where action_t is taken in state t and leads to state t+1, and the final 'state' (only with
        final_state: converting it back from the rollout form costs S4WM a fold of its window)."""
        params = self.img_params()  # once per rollout: the parameters do not change inside it
        state, feats, acts = self.img_begin(start, params), [self.feat(start)], []
        for t in range(horizon):
            action = policy[:, t] if torch.is_tensor(policy) else policy(feats[-1])
            state = self.img_step(state, action, params)
            feats.append(self.feat(state))
            acts.append(action)
        # stacked time-major and returned as (N, ...) views: .transpose(0, 1) gives contiguous
        # (H+1, N, F) memory whose per-step slices the actor-critic's heads read without a copy
        out = {"feat": torch.stack(feats, 0).transpose(0, 1),
               "action": torch.stack(acts, 0).transpose(0, 1)}
        if final_state:
            out["state"] = self.img_end(state)
        return out

    @torch.no_grad()
    def openloop(self, data: dict, context: int) -> torch.Tensor:
        """Observe `context` steps (every observation key the model reads), then imagine the rest
        from the recorded actions. Needs an image key. Returns predicted images (B, T, H, W, C) in
        [-0.5, 0.5] units: reconstructions for the context, open-loop predictions (prior means of
        the decoder) after it."""
        if self.decoder is None:
            raise ValueError("openloop predicts images: this world model has no image key")
        B, T = data["is_first"].shape
        embed = self.embed({k: data[k][:, :context] for k in self.obs_keys})  # (B, context, E)
        out, state, _ = self.observe(embed, data["action"][:, :context],
                                     data["is_first"][:, :context], self.initial_state(B))
        recon = self.decoder(self.feat(out))
        imag = self.imagine(state, data["action"][:, context:], T - context)
        return torch.cat([recon, self.decoder(imag["feat"][:, 1:])], 1)


class LatentSSMWorldModel(WorldModel):
    """World model whose posterior reads the frame alone, q(z_t | x_t), so the whole chunk's latents
    are sampled at once and the core runs in parallel over time (S4WM, S5WM, TSSM-XL; paper Sec. 3).
    g_t = MLP([z_{t-1}, a_t]) feeds the core; the prior p(z_t | h_t) reads its output."""

    def __init__(self, core: SequenceCore, **kw):
        super().__init__(**kw)
        lat, units = self.latent, kw["units"]
        self.core = core
        self.post_net = MLP(self.embed_size, units, 1, lat.stats_size)
        self.in_net = MLP(lat.size + self.act_dim, units, 1, self.d_model)
        self.prior_net = MLP(self.d_model, units, 1, lat.stats_size)

    def initial_state(self, batch_size: int) -> dict:
        dev = self.device
        return {"h": torch.zeros(batch_size, self.d_model, device=dev),
                "z": torch.zeros(batch_size, self.latent.size, device=dev),
                "core": self.core.initial_state(batch_size, device=dev)}

    def observe(self, embed, action, is_first, state, positions=None):
        B, T, _ = embed.shape
        post = self.post_net(embed)  # (B, T, S)
        z = self.latent.sample(post)  # (B, T, Z)
        keep = (~is_first).unsqueeze(-1).to(z.dtype)  # (B, T, 1): nothing crosses an episode start
        z_prev = torch.cat([state["z"].unsqueeze(1), z[:, :-1]], 1) * keep  # (B, T, Z)
        g = self.in_net(torch.cat([z_prev, action * keep], -1))  # (B, T, D)
        if T == 1 and positions is None:  # acting: one step in recurrent mode
            h, core = self.core.step(g[:, 0], state["core"], is_first[:, 0])
            h, core_starts = h.unsqueeze(1), None
        else:
            h, core, core_starts = self.core(g, is_first, state["core"], positions)
        prior = self.prior_net(h)  # (B, T, S)
        new_state = {"h": h[:, -1], "z": z[:, -1], "core": core}
        starts = None
        if positions is not None:
            K = len(positions)
            starts = {"h": h[:, positions].reshape(B * K, -1),  # (B*K, D), b-major
                      "z": z[:, positions].reshape(B * K, -1),
                      "core": core_starts}
        return {"post": post, "prior": prior, "z": z, "h": h}, new_state, starts

    def img_params(self):
        return self.core.step_params()

    def img_begin(self, state, params=None):
        return {**state, "core": self.core.rollout_begin(state["core"], params)}

    def img_end(self, state):
        return {**state, "core": self.core.rollout_end(state["core"])}

    def img_step(self, state, action, params=None):
        g = self.in_net(torch.cat([state["z"], action], -1))  # (B, D)
        h, core = self.core.step(g, state["core"], params=params)
        z = self.latent.sample(self.prior_net(h))
        return {"h": h, "z": z, "core": core}
