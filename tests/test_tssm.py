"""TSSM-XL core: parallel == slow reference == chunked with memory == step with cache, resets,
states_at continuation, and where gradients may (not) flow. Float64 unless stated."""
from __future__ import annotations

import pytest
import torch

from world_models.tssm import TransformerXLCore, forward_reference, rel_shift
from tests.core_helpers import step_core

B, D = 3, 16


def make_core(mem_len: int, dtype=torch.float64, seed: int = 0, **kw) -> TransformerXLCore:
    torch.manual_seed(seed)
    core = TransformerXLCore(d_model=D, n_layers=2, n_heads=4, mem_len=mem_len, ff_ratio=2, **kw)
    core = core.to(dtype)
    with torch.no_grad():  # move LayerNorm gains/biases and u, v away from their trivial init
        for p in core.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return core


def inputs(T: int, dtype=torch.float64, resets=(), seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(B, T, D, generator=gen, dtype=dtype)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    for b, t in resets:
        is_first[b, t] = True
    return g, is_first


def assert_same_state(a, b):
    """Equal validity masks and equal keys/values in valid slots (invalid slots are never read)."""
    assert torch.equal(a["valid"], b["valid"])
    m = a["valid"][:, None, :, None]  # (B, 1, M, 1)
    for key in ("k", "v"):
        torch.testing.assert_close(a[key] * m, b[key] * m, rtol=0, atol=1e-10)


def run_chunks(core, g, is_first, chunk: int, state=None):
    state = core.initial_state(g.shape[0]) if state is None else state
    hs = []
    for s in range(0, g.shape[1], chunk):
        h, state, _ = core(g[:, s:s + chunk], is_first[:, s:s + chunk], state)
        hs.append(h)
    return torch.cat(hs, 1), state


RESETS = ((0, 5), (1, 0), (1, 13), (2, 17), (2, 18))


def test_rel_shift_places_distances_on_the_window():
    T, M = 4, 3
    bd = torch.arange(1.0, T * (M + 1) + 1).reshape(T, M + 1)  # column e: distance M-e
    out = rel_shift(bd, M + T)  # (T, M+T)
    for i in range(T):
        for j in range(M + T):
            d = M + i - j
            assert out[i, j] == (bd[i, M - d] if 0 <= d <= M else 0)


def test_shapes_and_initial_state():
    core = make_core(mem_len=5)
    state = core.initial_state(B)
    assert state["k"].shape == state["v"].shape == (B, 2, 5, D)
    assert state["valid"].dtype == torch.bool and not state["valid"].any()
    g, is_first = inputs(7)
    h, final, at = core(g, is_first, state, positions=torch.tensor([0, 6]))
    assert h.shape == (B, 7, D)
    assert at["k"].shape == (2 * B, 2, 5, D) and at["valid"].shape == (2 * B, 5)
    for key in final:  # final state == state at the last position
        torch.testing.assert_close(final[key], at[key][1::2])


@pytest.mark.parametrize("mem_len", [4, 32])
def test_parallel_matches_reference_outputs_and_gradients(mem_len):
    core = make_core(mem_len)
    g, is_first = inputs(20, resets=RESETS)
    g.requires_grad_(True)
    weight = torch.randn(B, 20, D, dtype=torch.float64)

    def grads(fn):
        core.zero_grad()
        g.grad = None
        out = fn()
        (out * weight).sum().backward()
        return out.detach(), [g.grad.clone()] + [p.grad.clone() for p in core.parameters()]

    h_fast, gr_fast = grads(lambda: core(g, is_first, core.initial_state(B))[0])
    h_ref, gr_ref = grads(lambda: forward_reference(core, g, is_first))
    torch.testing.assert_close(h_fast, h_ref, rtol=0, atol=1e-10)
    for a, b in zip(gr_fast, gr_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-9)


def test_float32_matches_reference():
    core = make_core(6, dtype=torch.float32)
    g, is_first = inputs(20, dtype=torch.float32, resets=RESETS)
    with torch.no_grad():
        h, _ = run_chunks(core, g, is_first, chunk=7)
        torch.testing.assert_close(h, forward_reference(core, g, is_first), rtol=0, atol=1e-4)


@pytest.mark.parametrize("mem_len, chunk", [(32, 8), (5, 8), (5, 3), (6, 6)])
@pytest.mark.parametrize("resets", [(), RESETS])
def test_chunked_with_memory_equals_one_pass(mem_len, chunk, resets):
    # mem_len 32 covers the whole 24-step sequence; 5 and 6 exercise the sliding window.
    core = make_core(mem_len)
    g, is_first = inputs(24, resets=resets + ((0, 16),))  # (0, 16): reset on a chunk boundary
    with torch.no_grad():
        h_one, state_one, _ = core(g, is_first, core.initial_state(B))
        h_chunks, state_chunks = run_chunks(core, g, is_first, chunk)
        torch.testing.assert_close(h_chunks, h_one, rtol=0, atol=1e-10)
        torch.testing.assert_close(h_one, forward_reference(core, g, is_first), rtol=0, atol=1e-10)
    assert_same_state(state_chunks, state_one)


@pytest.mark.parametrize("mem_len", [6, 40])
def test_step_with_cache_equals_parallel(mem_len):
    core = make_core(mem_len)
    g, is_first = inputs(20, resets=RESETS)
    with torch.no_grad():
        h_par, state_par, _ = core(g, is_first, core.initial_state(B))
        h_step, state_step = step_core(core, g, is_first, core.initial_state(B))
    torch.testing.assert_close(h_step, h_par, rtol=0, atol=1e-10)
    assert_same_state(state_step, state_par)


def test_resets_equal_separate_episodes():
    core = make_core(mem_len=8)
    g, _ = inputs(20)
    is_first = torch.zeros(B, 20, dtype=torch.bool)
    is_first[:, 0] = is_first[:, 11] = True
    with torch.no_grad():
        # Chunks of 7: the reset at 11 lands inside a chunk, with pre-reset keys in the memory.
        h, _ = run_chunks(core, g, is_first, chunk=7)
        first, _, _ = core(g[:, :11], is_first[:, :11], core.initial_state(B))
        second, _, _ = core(g[:, 11:], is_first[:, 11:], core.initial_state(B))
    torch.testing.assert_close(h, torch.cat([first, second], 1), rtol=0, atol=1e-10)


def test_states_at_then_stepping_continues_the_sequence():
    core = make_core(mem_len=6)
    g, is_first = inputs(24, resets=RESETS)
    positions = torch.tensor([0, 4, 8, 9])  # chunk times 8, 12, 16, 17
    with torch.no_grad():
        h_full, _, _ = core(g, is_first, core.initial_state(B))
        # States taken in the second chunk, which starts with a carried memory.
        _, state, _ = core(g[:, :8], is_first[:, :8], core.initial_state(B))
        _, _, at = core(g[:, 8:18], is_first[:, 8:18], state, positions=positions)
        K = len(positions)
        for k, t in enumerate(positions.tolist()):
            start = {key: x[k::K] for key, x in at.items()}  # rows b*K + k, b-major
            t_abs = 8 + t
            h, _ = step_core(core, g[:, t_abs + 1:], is_first[:, t_abs + 1:], start)
            torch.testing.assert_close(h, h_full[:, t_abs + 1:], rtol=0, atol=1e-10)


def test_gradients_reach_every_parameter_but_not_the_memory():
    core = make_core(mem_len=5, dtype=torch.float32)
    g, is_first = inputs(16, dtype=torch.float32, resets=((0, 3),))
    g.requires_grad_(True)
    _, state, _ = core(g[:, :8], is_first[:, :8], core.initial_state(B))
    h, final, at = core(g[:, 8:], is_first[:, 8:], state, positions=torch.tensor([2, 7]))
    h.square().sum().backward()
    for name, p in core.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert g.grad[:, :8].abs().sum() == 0  # the first chunk reaches the second only via the cache
    assert g.grad[:, 8:].abs().sum() > 0
    for tree in (state, final, at):
        assert not any(x.requires_grad for x in tree.values())
    _, stepped = core.step(g[:, 0], final)
    assert not any(x.requires_grad for x in stepped.values())


def test_step_with_cached_params_equals_plain_step():
    core = make_core(mem_len=6)
    g, is_first = inputs(20, resets=RESETS)
    params = core.step_params()
    with torch.no_grad():
        plain = cached = core.initial_state(B)
        for t in range(20):
            h_plain, plain = core.step(g[:, t], plain, is_first[:, t])
            h_cached, cached = core.step(g[:, t], cached, is_first[:, t], params=params)
            assert torch.equal(h_plain, h_cached)
            assert all(torch.equal(plain[key], cached[key]) for key in plain)


def run_steps(core, g, is_first, state):
    """step_core that also returns every intermediate state."""
    hs, states = [], []
    for t in range(g.shape[1]):
        h, state = core.step(g[:, t], state, is_first[:, t])
        hs.append(h)
        states.append(state)
    return torch.stack(hs, 1), states


def test_sliding_cache_without_grad_equals_copying_cache():
    """Without grad the cache slides in place through spare slots (one copy per mem_len steps);
    with grad every step copies (cat). 3.5 x mem_len steps cross several buffer refills."""
    core = make_core(mem_len=6)
    g, is_first = inputs(21, resets=RESETS)
    with torch.no_grad():
        h_fast, fast = run_steps(core, g, is_first, core.initial_state(B))
    with torch.enable_grad():  # parameters require grad: the plain copying path
        h_plain, plain = run_steps(core, g, is_first, core.initial_state(B))
    assert hasattr(fast[-1]["k"], "_sliding") and not hasattr(plain[-1]["k"], "_sliding")
    torch.testing.assert_close(h_fast, h_plain.detach(), rtol=0, atol=1e-12)
    for a, b in zip(fast, plain):  # every intermediate state is still intact
        assert_same_state(a, b)


def test_sliding_cache_branches_and_grad_after_no_grad():
    """Stepping again from an older state (a branch) must not overwrite what newer states read, and
    a state from the no-grad buffer stepped under grad must still backpropagate."""
    core = make_core(mem_len=5)
    g, is_first = inputs(12)
    with torch.no_grad():
        _, states = run_steps(core, g[:, :8], is_first[:, :8], core.initial_state(B))
        _, states_ref = run_steps(core, g[:, :8], is_first[:, :8], core.initial_state(B))
        h_branch, _ = step_core(core, g[:, 8:], is_first[:, 8:], states[3])  # from an old view
        h_newest, _ = step_core(core, g[:, 8:], is_first[:, 8:], states[-1])  # from the newest
        for a, b in zip(states, states_ref):
            assert_same_state(a, b)
        h_branch_ref, _ = step_core(core, g[:, 8:], is_first[:, 8:], states_ref[3])
        h_newest_ref, _ = step_core(core, g[:, 8:], is_first[:, 8:], states_ref[-1])
    torch.testing.assert_close(h_branch, h_branch_ref, rtol=0, atol=0)
    torch.testing.assert_close(h_newest, h_newest_ref, rtol=0, atol=0)
    with torch.no_grad():
        _, states = run_steps(core, g[:, :8], is_first[:, :8], core.initial_state(B))
    x = g[:, 8].clone().requires_grad_(True)
    h, _ = core.step(x, states[-1])  # under grad: reads (saves) the newest view, freezes its buffer
    with torch.no_grad():
        step_core(core, g[:, 9:], is_first[:, 9:], states[-1])  # would append in place if not frozen
    h.sum().backward()  # fails if a tensor saved for backward was modified in place
    assert x.grad.abs().sum() > 0
