"""TSSM-XL core: a pre-LN causal Transformer-XL over g_{1:T} (TransDreamer's Transformer State-Space
Model, Chen et al. 2022, with the Transformer-XL memory used in "Facing Off World Model Backbones",
Deng et al. 2023).

Attention is a sliding window: the query at time t sees the keys at times t-M .. t (M = mem_len) of
its own episode. Relative positions as in Transformer-XL (Dai et al. 2019, Sec. 3.3):

    score(i, j) = (q_i + u) . k_j  +  (q_i + v) . W_r R_{i-j},     R = sinusoid, u/v per head

State (all tensors batch-first, see SequenceCore):
    k, v   (B, n_layers, M, D)   projected keys/values of the last M layer inputs, oldest first,
                                 detached (no gradient into the cache, Transformer-XL Sec. 3.2);
                                 caching projections, not hidden states, keeps a step at one query
                                 vs M keys instead of re-projecting the whole window every layer.
                                 `step` without grad returns views into a buffer with spare slots
                                 (see `slide`): one cache copy per M imagined steps, not per step.
    valid  (B, M) bool           False for empty slots and for slots from before an episode reset;
                                 the k, v contents of invalid slots are never read (unspecified).

Because attention is windowed, a chunk processed with the memory of the previous chunk equals one
pass over the concatenated sequence, and `step` with the cache equals the parallel forward.
`forward_reference` below is the slow explicit-mask version the tests compare against.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from world_models.core import SequenceCore


def sinusoid(dist: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-XL relative position embedding R_d: distances (...) -> (..., dim) [sin, cos]."""
    inv_freq = 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=dist.dtype, device=dist.device) / dim)
    angle = dist[..., None] * inv_freq  # (..., dim/2)
    return torch.cat([angle.sin(), angle.cos()], -1)  # (..., dim)


def rel_shift(bd: torch.Tensor, keys: int) -> torch.Tensor:
    """Place per-distance scores on the key axis (the Transformer-XL "rel shift", exact).

    bd (..., T, M+1): column e holds distance M-e. Query i sits at key position M+i (the M memory
    slots come first), so out[..., i, j] = bd[..., i, j-i] for 0 <= j-i <= M and 0 elsewhere
    (outside the window, masked by the caller). keys = M+T.
    """
    *lead, T, E = bd.shape
    padded = nn.functional.pad(bd, (0, T))  # (..., T, M+1+T) = (..., T, S+1)
    flat = padded.reshape(*lead, T * (keys + 1))[..., : T * keys]  # row i starts i slots later
    return flat.reshape(*lead, T, keys)  # (..., T, S)


class SlidingBuffer:
    """Key or value slots (B, L, 2M, D) of which a cache is a view of M consecutive slots; the
    spare slots after the newest view let `slide` append without copying the cache. filled: slots
    written; frozen: no more in-place writes (a view may be saved by autograd)."""

    def __init__(self, cache: torch.Tensor, new: torch.Tensor):
        B, L, M = cache.shape[:3]
        self.buf = cache.new_empty(B, L, 2 * M, *cache.shape[3:])
        self.buf[:, :, :M - 1] = cache[:, :, 1:]
        self.buf[:, :, M - 1] = new
        self.filled, self.frozen = M, False

    def append(self, new: torch.Tensor) -> None:
        self.buf[:, :, self.filled] = new
        self.filled += 1

    def newest(self, M: int) -> torch.Tensor:
        """The last M written slots (a view), tagged so that `slide` can extend it in place."""
        view = self.buf[:, :, self.filled - M:self.filled]  # (B, L, M, D)
        view._sliding = (self, self.filled)
        return view


def slide(cache: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Drop the oldest slot, append `new`: cache (B, L, M, D) oldest first, new (B, L, D).

    Plain (under grad): one copy of the cache per call (cat). Without grad: the result is a view into
    a SlidingBuffer with M spare slots, and a call on the buffer's newest view writes `new` into the
    next spare slot in place, so a rollout copies the cache once per M steps. Every returned cache
    stays valid: a call on an older view (a branching rollout) copies into a new buffer, and a
    buffer read under grad is frozen (autograd may have saved a view of it, and an in-place write
    would break its backward)."""
    M = cache.shape[2]
    tag = getattr(cache, "_sliding", None)  # (buffer, filled when this view was made) or None
    if torch.is_grad_enabled():
        if tag is not None:
            tag[0].frozen = True
        return torch.cat([cache[:, :, 1:], new[:, :, None]], 2)
    if tag is not None:
        buffer, end = tag
        if not buffer.frozen and buffer.filled == end and end < buffer.buf.shape[2]:
            buffer.append(new)
            return buffer.newest(M)
    return SlidingBuffer(cache, new).newest(M)


class XLBlock(nn.Module):
    """One pre-LN layer: x + Attn(LN(x), memory) then x + FF(LN(x))."""

    def __init__(self, d_model: int, n_heads: int, ff_ratio: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.r_proj = nn.Linear(d_model, d_model, bias=False)  # W_r of Transformer-XL
        self.u = nn.Parameter(0.02 * torch.randn(n_heads, self.head_dim))  # global content bias
        self.v = nn.Parameter(0.02 * torch.randn(n_heads, self.head_dim))  # global position bias
        self.out = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, ff_ratio * d_model), nn.GELU(),
                                nn.Linear(ff_ratio * d_model, d_model))
        self.drop = nn.Dropout(dropout)
        self.register_buffer("head_mask", torch.eye(n_heads).repeat_interleave(self.head_dim, 1),
                             persistent=False)  # (H, D) 1 where dim d belongs to head h

    def project(self, x: torch.Tensor):
        """x (B, T, D) -> q, k, v each (B, T, D); k, v are what the memory caches."""
        return self.qkv(self.ln1(x)).chunk(3, -1)

    def forward(self, x, q, k, v, pos, mask):
        """x, q (B, T, D); k, v (B, S, D) with S = M+T (memory first); pos (M+1, D) embeddings of
        distances M..0; mask (B, T, S) bool, True where query i may attend key j."""
        B, T, D = x.shape
        S, H, Dh = k.shape[1], self.n_heads, self.head_dim
        v = v.reshape(B, S, H, Dh).transpose(1, 2)  # (B, H, S, Dh)
        att = self.drop(self.weights(q, k, pos, mask)) @ v  # (B, H, T, Dh)
        return self.finish(x, att.transpose(1, 2).reshape(B, T, D))  # (B, T, D)

    def weights(self, q, k, pos, mask):
        """The attention weights (B, H, T, S) of forward's queries over its keys (same arguments):
        each row sums to 1 over the keys its mask lets it attend and is 0 elsewhere."""
        B, T, D = q.shape
        S, H, Dh = k.shape[1], self.n_heads, self.head_dim
        q = q.reshape(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
        k = k.reshape(B, S, H, Dh).transpose(1, 2)  # (B, H, S, Dh)
        r = self.r_proj(pos).reshape(-1, H, Dh).transpose(0, 1)  # (H, M+1, Dh)
        ac = (q + self.u[:, None]) @ k.transpose(-1, -2)  # (B, H, T, S) content terms (a)+(c)
        bd = (q + self.v[:, None]) @ r.transpose(-1, -2)  # (B, H, T, M+1) position terms (b)+(d)
        scores = (ac + rel_shift(bd, S)) / math.sqrt(Dh)  # (B, H, T, S)
        return scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)

    def step(self, x, k_mem, v_mem, valid, r):
        """One query: x (B, D); k_mem, v_mem (B, M, D) the cache (no grad), valid (B, M+1) with
        the query itself last; r = r_proj(pos) (M+1, D), distances M..0 (batch-independent, so
        computed once per rollout). Returns the new x and this step's k, v (B, D).

        Against the cache, the large tensor, the query is spread into a block-diagonal (H, D)
        matrix (row h = head h's dims), so all heads score against it in one bmm over its stored
        layout (never copied or transposed); the weighted sum of its values comes out as (H, D)
        per row, of which each head's own block (the block diagonal) is the attention output.
        Everything else (the query's own key and value, the position terms) is per head."""
        B, M, D = k_mem.shape
        H, Dh = self.n_heads, self.head_dim
        q, k, v = self.project(x)  # (B, D) each
        qu = q + self.u.flatten()  # (B, D)
        qv = (q + self.v.flatten()).view(B, H, Dh)
        ac_mem = (qu[:, None] * self.head_mask) @ k_mem.transpose(1, 2)  # (B, H, M)
        ac_self = (qu * k).view(B, H, Dh).sum(-1, keepdim=True)  # (B, H, 1)
        r_heads = r.view(M + 1, H, Dh).permute(1, 2, 0)  # (H, Dh, M+1)
        bd = torch.bmm(qv.transpose(0, 1), r_heads).transpose(0, 1)  # (B, H, M+1)
        scores = (torch.cat([ac_mem, ac_self], -1) + bd) / math.sqrt(Dh)  # (B, H, M+1)
        scores = scores.masked_fill(~valid[:, None], float("-inf"))
        p = self.drop(scores.softmax(-1))  # (B, H, M+1)
        att_mem = (p[..., :M] @ v_mem).view(B, H, H, Dh).diagonal(0, 1, 2)  # (B, Dh, H)
        att = att_mem.transpose(1, 2) + p[..., M:] * v.view(B, H, Dh)  # (B, H, Dh)
        return self.finish(x, att.reshape(B, D)), k, v

    def finish(self, x, att):
        """Residual output projection and feed-forward; x, att (..., D)."""
        x = x + self.drop(self.out(att))
        return x + self.drop(self.ff(self.ln2(x)))


class TransformerXLCore(SequenceCore):
    """g (B, T, D) -> h (B, T, D) with a windowed Transformer-XL memory of `mem_len` steps."""

    def __init__(self, d_model: int, n_layers: int = 2, n_heads: int = 8, mem_len: int = 64,
                 ff_ratio: int = 2, dropout: float = 0.0):
        super().__init__()
        if d_model % n_heads or mem_len < 1:
            raise ValueError(f"need d_model % n_heads == 0 and mem_len >= 1, got "
                             f"d_model={d_model} n_heads={n_heads} mem_len={mem_len}")
        self.d_model, self.n_layers, self.n_heads = d_model, n_layers, n_heads
        self.mem_len = mem_len
        self.layers = nn.ModuleList(XLBlock(d_model, n_heads, ff_ratio, dropout)
                                    for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)

    def _pos(self, like: torch.Tensor) -> torch.Tensor:
        """R for distances M, M-1, .., 0 (column e of the position scores is distance M-e, see
        rel_shift), built in the input's dtype: cheap, and exact in float64. (M+1, D)"""
        dist = torch.arange(self.mem_len, -1, -1, dtype=like.dtype, device=like.device)
        return sinusoid(dist, self.d_model)

    def initial_state(self, batch_size: int, device=None) -> dict:
        B, L, M, D = batch_size, self.n_layers, self.mem_len, self.d_model
        dtype = self.norm.weight.dtype
        device = self.norm.weight.device if device is None else device
        return {"k": torch.zeros(B, L, M, D, dtype=dtype, device=device),
                "v": torch.zeros(B, L, M, D, dtype=dtype, device=device),
                "valid": torch.zeros(B, M, dtype=torch.bool, device=device)}

    def forward(self, g: torch.Tensor, is_first: torch.Tensor, state, positions=None):
        """See SequenceCore.forward. Scores are (B, H, T, M+T) per layer: feed long sequences in
        chunks (e.g. 64 steps) carrying the state, which gives the same h as one pass."""
        B, T, D = g.shape
        M = self.mem_len
        assert D == self.d_model and is_first.shape == (B, T), (g.shape, is_first.shape)
        seg = is_first.long().cumsum(1)  # (B, T) episode index within the chunk
        # Memory keys belong to episode 0; a key is visible to the query iff same episode.
        key_seg = torch.cat([seg.new_zeros(B, M), seg], 1)  # (B, S)
        key_ok = torch.cat([state["valid"], state["valid"].new_ones(B, T)], 1)  # (B, S)
        vis = key_ok[:, None] & (key_seg[:, None] == seg[:, :, None])  # (B, T, S)
        dist = (torch.arange(T, device=g.device)[:, None] + M
                - torch.arange(M + T, device=g.device))  # (T, S) query i at key slot M+i
        mask = vis & ((dist >= 0) & (dist <= M))  # (B, T, S) the sliding window
        x, ks, vs, pos = g, [], [], self._pos(g)
        for l, layer in enumerate(self.layers):
            q, k, v = layer.project(x)
            k = torch.cat([state["k"][:, l], k], 1)  # (B, M+T, D)
            v = torch.cat([state["v"][:, l], v], 1)  # (B, M+T, D)
            x = layer(x, q, k, v, pos, mask)
            ks.append(k.detach())
            vs.append(v.detach())
        h = self.norm(x)
        k_all, v_all = torch.stack(ks, 1), torch.stack(vs, 1)  # (B, L, M+T, D) each
        final = self._states_at(k_all, v_all, vis, torch.tensor([T - 1], device=g.device))
        states_at = None
        if positions is not None:
            states_at = self._states_at(k_all, v_all, vis, positions.to(g.device))
        return h, final, states_at

    def _states_at(self, k_all, v_all, vis, positions):
        """State after consuming g_t for t in positions (K,): slots t+1 .. t+M of the keys,
        visible to the next query iff in the episode of t. Batch B*K, b-major."""
        B, L, S, D = k_all.shape
        M, K = self.mem_len, positions.shape[0]
        idx = positions[:, None] + 1 + torch.arange(M, device=positions.device)  # (K, M)
        b = torch.arange(B, device=idx.device)[:, None, None, None]
        l = torch.arange(L, device=idx.device)[None, None, :, None]
        take = (b, l, idx[None, :, None, :])  # broadcast to (B, K, L, M): one copy, b-major
        k = k_all[take].reshape(B * K, L, M, D)  # (B*K, L, M, D)
        v = v_all[take].reshape(B * K, L, M, D)  # (B*K, L, M, D)
        rows = vis[:, positions]  # (B, K, S)
        valid = rows.gather(2, idx.expand(B, K, M)).reshape(B * K, M)  # (B*K, M)
        return {"k": k, "v": v, "valid": valid}

    def step_params(self) -> list:
        """Per layer r_proj(R) (M+1, D) of the position embeddings: what `step` needs from the
        parameters alone."""
        pos = self._pos(self.norm.weight)  # (M+1, D)
        return [layer.r_proj(pos) for layer in self.layers]

    def step(self, g: torch.Tensor, state, is_first: torch.Tensor | None = None, params=None):
        """One query against the M cached keys plus itself, then shift the cache by one."""
        B, D = g.shape
        valid = state["valid"]  # (B, M)
        if is_first is not None:  # reset = forget every slot (their contents are never read)
            valid = valid & ~is_first[:, None]
        valid = torch.cat([valid, valid.new_ones(B, 1)], 1)  # (B, M+1) the query sees itself
        rs = self.step_params() if params is None else params
        x, ks, vs = g, [], []
        for l, layer in enumerate(self.layers):
            x, k, v = layer.step(x, state["k"][:, l], state["v"][:, l], valid, rs[l])
            ks.append(k.detach())
            vs.append(v.detach())
        # Shift: drop the oldest slot, append this step (in place into spare slots without grad).
        new_state = {"k": slide(state["k"], torch.stack(ks, 1)),
                     "v": slide(state["v"], torch.stack(vs, 1)),
                     "valid": valid[:, 1:]}  # k, v (B, L, M, D), valid (B, M)
        return self.norm(x), new_state


def forward_reference(core: TransformerXLCore, g: torch.Tensor, is_first: torch.Tensor):
    """Slow reference: full causal attention over a whole sequence (B, T, D) from an empty memory,
    with an explicit (T x T) window/episode mask and R_{i-j} looked up for every pair."""
    B, T, D = g.shape
    M, H = core.mem_len, core.n_heads
    t = torch.arange(T, device=g.device)
    dist = t[:, None] - t[None]  # (T, T) i - j
    seg = is_first.long().cumsum(1)  # (B, T)
    allowed = (dist >= 0) & (dist <= M) & (seg[:, :, None] == seg[:, None, :])  # (B, T, T)
    emb = sinusoid(dist.clamp(0, M).to(g.dtype), D)  # (T, T, D)
    x = g
    for layer in core.layers:
        q, k, v = (y.reshape(B, T, H, D // H) for y in layer.project(x))  # (B, T, H, Dh) each
        r = layer.r_proj(emb).reshape(T, T, H, D // H)  # (T, T, H, Dh)
        scores = (torch.einsum("bihd,bjhd->bhij", q + layer.u, k)
                  + torch.einsum("bihd,ijhd->bhij", q + layer.v, r)) / math.sqrt(D // H)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))  # (B, H, T, T)
        att = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v).reshape(B, T, D)
        x = x + layer.out(att)
        x = x + layer.ff(layer.ln2(x))
    return core.norm(x)
