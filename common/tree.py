"""Tiny helpers for nested states (dicts / lists / tuples of tensors, batch dimension first).

Leaves are tensors or None. A third kind exists only in imagination's start states: a LazyStart
(below; its contract is part of world_models/core.py's), which is not a tensor yet. The helpers
refuse it (TypeError) unless the caller says what a LazyStart means for its operation: `detach`
keeps it (a LazyStart is detached by construction); indexing, moving, saving or resetting one is an
error until the core's `rollout_end` (or `LazyStart.states()`) has made it a tensor. Any other
leaf is an error too.
"""
from __future__ import annotations

import torch


class LazyStart:
    """A leaf of imagination start states (SequenceCore.forward's states_at, world_models/core.py)
    that is not built yet: it holds what the states are computed from, so a rollout that needs
    less than the states themselves never builds them (S4WM: S4DStart in
    world_models/s4d_rollout.py). Only its own core's step / rollout_begin / rollout_end read it;
    `states()` builds the (B*K, ...) tensor once. It is detached (built under no_grad): `detach`
    below keeps it, every other helper here refuses it."""

    __slots__ = ()

    def states(self) -> torch.Tensor:
        raise NotImplementedError


def _leaf(x, fn, lazy: str):
    if isinstance(x, torch.Tensor):
        return fn(x)
    if x is None:
        return None
    if isinstance(x, LazyStart):
        if lazy == "keep":
            return x
        raise TypeError(f"a {type(x).__name__} (a lazy imagination start) reached a tree helper "
                        f"that needs tensors: call the core's rollout_end (or .states()) first")
    raise TypeError(f"state trees hold tensors or None, not {type(x).__name__}")


def tree_map(fn, tree, lazy: str = "refuse"):
    """Apply fn to every tensor leaf of a nested dict/list/tuple; None stays None. lazy='keep'
    passes LazyStart leaves through unchanged (only for an fn they already satisfy), 'refuse'
    raises TypeError on them."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, v, lazy) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v, lazy) for v in tree)
    return _leaf(tree, fn, lazy)


def tree_map2(fn, a, b):
    """Apply fn(x, y) to matching tensor leaves of two trees of identical structure (no
    LazyStart)."""
    if isinstance(a, dict):
        return {k: tree_map2(fn, a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)):
        return type(a)(tree_map2(fn, x, y) for x, y in zip(a, b))
    _leaf(b, lambda y: y, "refuse")
    return _leaf(a, lambda x: fn(x, b), "refuse")


def detach(tree):
    """The tree without gradient history; LazyStart leaves are detached already and stay lazy."""
    return tree_map(lambda x: x.detach(), tree, lazy="keep")


def where_reset(mask, initial, state):
    """Per batch row, take `initial` where mask (B,) is True, else `state` (trees share structure)."""
    def pick(init, cur):
        m = mask.reshape(mask.shape + (1,) * (cur.dim() - 1))
        return torch.where(m, init.to(cur.dtype), cur)
    return tree_map2(pick, initial, state)
