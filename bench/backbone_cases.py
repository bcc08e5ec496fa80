"""The cases of the backbone benchmark (bench/backbones.py): each builds a world model (or an agent)
at a configs.yaml size and yields (label, step function, items per step, world model); the timing
harness (bench/timing.py) runs the step function. The case kinds are described in
bench/backbones.py's docstring.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from common.config import load_blocks, merge
from common.health import adamw
from common.tree import detach
from world_models import build_world_model, losses

SIZES = {"cpu": ["cpu"], "debug": ["debug"], "paper": []}  # --size word -> configs.yaml blocks
NOT_SEQ = ("encoder.", "decoder.", "reward_head.", "cont_head.")  # outside the sequence model
DEPTH_WORDS = ("n_blocks", "n_layers")  # a backbone section's depth key, for --match-params
# The agent case's action modes: how the actor acts and gets its gradient (configs.yaml `ac`).
# onehot: discrete actions, REINFORCE (DreamerV3's default, the miniworld block); continuous:
# bounded normal actions in [-1, 1] (tanh mean), dynamics backprop through imagination (the dmc block).
ACTION_MODES = {"onehot": {"discrete": True, "ac.actor_grad": "reinforce",
                           "label": "one-hot, REINFORCE"},
                "continuous": {"discrete": False, "ac.actor_grad": "straight_through",
                               "label": "continuous, dynamics backprop"}}


# ---- config, model, data ----------------------------------------------------------------------
def config_for(size: str, backbone: str, overrides: dict):
    """tssm1 is tssm run without chunks; everything else is the backbone's own block."""
    return merge(load_blocks(), SIZES[size] + [backbone.rstrip("1")], overrides)


def param_counts(wm) -> dict:
    seq = sum(p.numel() for n, p in wm.named_parameters() if not n.startswith(NOT_SEQ))
    return {"seq_params": seq, "total_params": sum(p.numel() for p in wm.parameters())}


def matched_overrides(args) -> dict:
    """{backbone: overrides}. With --match-params the block/layer count of S4WM/S5WM/TSSM whose
    sequence-model parameters are closest (in ratio) to RSSM's; d_model/units stay the same."""
    base = dict(args.set)
    out = {b: dict(base) for b in args.backbones}
    if not args.match_params:
        return out

    def seq(b, over):
        wm = build_world_model(config_for(args.size, b, over), args.act_dim)
        return param_counts(wm)["seq_params"]

    target = seq("rssm", base)
    for b in args.backbones:
        key = depth_key(b)
        if key:
            depth = min(range(1, 9), key=lambda d: abs(math.log(seq(b, {**base, key: d}) / target)))
            out[b][key] = depth
    return out


def depth_key(backbone: str) -> str | None:
    """The backbone's block/layer count key ('s4wm.n_blocks', 'tssm.n_layers'), or None."""
    section = load_blocks()["defaults"].get(backbone) or {}
    return next((f"{backbone}.{k}" for k in DEPTH_WORDS if k in section), None)


def make_batch(B: int, T: int, act_dim: int, image_size: int, seed: int, device,
               discrete: bool = True) -> dict:
    """Seeded replay-like batch (B, T, ...): random pixels and actions (one-hot, or uniform in
    [-1, 1] when not discrete), an episode start at t=0."""
    g = torch.Generator().manual_seed(seed)
    if discrete:
        action = F.one_hot(torch.randint(0, act_dim, (B, T), generator=g), act_dim).float()
    else:
        action = 2 * torch.rand(B, T, act_dim, generator=g) - 1
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    action[:, 0] = 0
    data = {"image": torch.randint(0, 256, (B, T, image_size, image_size, 3), generator=g,
                                   dtype=torch.uint8),
            "action": action, "reward": torch.randn(B, T, generator=g), "is_first": is_first,
            "is_last": torch.zeros(B, T, dtype=torch.bool),
            "is_terminal": torch.zeros(B, T, dtype=torch.bool)}
    return {k: v.to(device) for k, v in data.items()}


# ---- cases: each yields (label, step function, items per step, world model) --------------------
def chunked_step(wm, opt, B: int, T: int, chunk: int, loss_fn):
    """One training step over (B, T) in chunks of `chunk`: per chunk loss, backward, AdamW; the
    state crosses chunk borders detached. loss_fn(start, end, state) -> (loss, new_state)."""
    def step(length=None):
        state, end = wm.initial_state(B), min(length or T, T)
        for s in range(0, end, chunk):
            loss, state = loss_fn(s, min(s + chunk, end), state)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state = detach(state)
    return step


def _chunk(cfg, backbone: str, T: int) -> int:
    return {"rssm": cfg.rssm.tbtt_length, "tssm": cfg.tssm.mem_len}.get(backbone, T)


def case_train(cfg, spec, device):
    B, T = spec["batch"], spec["length"]
    wm = build_world_model(cfg, spec["act_dim"]).to(device)
    data = make_batch(B, T, spec["act_dim"], cfg.env.image_size, spec["seed"], device)
    opt = adamw(wm.parameters(), lr=1e-4)

    def loss_fn(s, e, state):
        loss, _, _, state, _ = wm.loss({k: v[:, s:e] for k, v in data.items()}, state)
        return loss, state
    yield {}, chunked_step(wm, opt, B, T, _chunk(cfg, spec["backbone"], T), loss_fn), B * T, wm


def case_seq(cfg, spec, device):
    B, T = spec["batch"], spec["length"]
    wm = build_world_model(cfg, spec["act_dim"]).to(device)
    data = make_batch(B, T, spec["act_dim"], 4, spec["seed"], device)  # 4x4 images: only actions
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    embed = torch.randn(B, T, wm.encoder.out_size, generator=g).to(device)  # (B, T, E)
    opt = adamw([p for n, p in wm.named_parameters() if not n.startswith(NOT_SEQ)], lr=1e-4)

    def loss_fn(s, e, state):
        out, state, _ = wm.observe(embed[:, s:e], data["action"][:, s:e],
                                   data["is_first"][:, s:e], state)
        dyn, rep, _ = losses.kl_balance(wm.latent, out["post"], out["prior"], 0.0)  # (B, t) each
        return dyn.mean() + rep.mean() + out["h"].square().mean(), state
    yield {}, chunked_step(wm, opt, B, T, _chunk(cfg, spec["backbone"], T), loss_fn), B * T, wm


def case_imagine(cfg, spec, device):
    wm = build_world_model(cfg, spec["act_dim"]).to(device)
    A = spec["act_dim"]
    for N in spec["imag_batches"]:
        for Hz in spec["horizons"]:
            g = torch.Generator().manual_seed(spec["seed"])
            actions = F.one_hot(torch.randint(0, A, (N, Hz), generator=g), A).float().to(device)
            for decode in (False, True):
                def step(length=None, N=N, Hz=Hz, actions=actions, decode=decode):
                    hz = min(length or Hz, Hz)
                    with torch.no_grad():
                        feat = wm.imagine(wm.initial_state(N), actions, hz)["feat"]  # (N, hz+1, F)
                        if decode:
                            for t in range(1, hz + 1):
                                wm.decoder(feat[:, t])  # (N, H, W, C)
                yield {"imag_batch": N, "horizon": Hz, "decode": decode}, step, N * Hz, wm


def case_agent(cfg, spec, device):
    """One Agent.update in the spec's action mode (ACTION_MODES; its ac.actor_grad is in the
    spec's overrides, so cfg has it)."""
    from agent.agent import build_agent
    B, T, mode = spec["batch"], spec["length"], ACTION_MODES[spec["action_mode"]]
    assert cfg.ac.actor_grad == mode["ac.actor_grad"], (cfg.ac.actor_grad, mode)
    agent = build_agent(cfg, spec["act_dim"], discrete=mode["discrete"], device=device)
    batch = {k: v.numpy() for k, v in make_batch(B, T, spec["act_dim"], cfg.env.image_size,
                                                 spec["seed"], "cpu", mode["discrete"]).items()}
    label = {"action_mode": spec["action_mode"], "actor_grad": cfg.ac.actor_grad}
    yield label, (lambda length=None: agent.update(batch)), B * T, agent.wm


CASES = {"train": case_train, "seq": case_seq, "imagine": case_imagine, "agent": case_agent}
