"""Tiny helpers for nested states (dicts / lists / tuples of tensors, batch dimension first)."""
from __future__ import annotations

import torch


def tree_map(fn, tree):
    """Apply fn to every tensor leaf of a nested dict/list/tuple; other leaves (None, a core's
    LazyStart: world_models/core.py) pass through."""
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v) for v in tree)
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    return tree


def tree_map2(fn, a, b):
    """Apply fn(x, y) to matching tensor leaves of two trees of identical structure."""
    if isinstance(a, dict):
        return {k: tree_map2(fn, a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)):
        return type(a)(tree_map2(fn, x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return fn(a, b)
    return a


def detach(tree):
    return tree_map(lambda x: x.detach(), tree)


def where_reset(mask, initial, state):
    """Per batch row, take `initial` where mask (B,) is True, else `state` (trees share structure)."""
    def pick(init, cur):
        m = mask.reshape(mask.shape + (1,) * (cur.dim() - 1))
        return torch.where(m, init.to(cur.dtype), cur)
    return tree_map2(pick, initial, state)
