"""Action spaces shared by all env families.

Discrete actions travel through the whole framework as one-hot float vectors (n,), so the actor's
output, replay and the world model see one format for every env; the env wrappers take the argmax.
"""
from __future__ import annotations

import gymnasium
import numpy as np


class OneHot(gymnasium.spaces.Box):
    """n discrete choices encoded as a one-hot float32 vector of shape (n,).

    It is a Box(0, 1, (n,), float32) so that gymnasium's vector envs batch it to (B, n) and share
    memory for it; `sample()` returns a one-hot (a plain Box would sample uniform floats).
    """

    def __init__(self, n: int, seed: int | np.random.Generator | None = None):
        if n < 1:
            raise ValueError(f"OneHot needs n >= 1 choices, got {n}")
        super().__init__(low=0.0, high=1.0, shape=(n,), dtype=np.float32, seed=seed)
        self.n = int(n)

    def sample(self, mask=None, probability=None) -> np.ndarray:
        """A uniformly random one-hot vector (n,) float32 (mask/probability: optional weights (n,))."""
        weights = probability if probability is not None else mask
        if weights is None:
            index = self.np_random.integers(self.n)
        else:
            weights = np.asarray(weights, np.float64)
            index = self.np_random.choice(self.n, p=weights / weights.sum())
        return self.from_index(index)

    def from_index(self, index: int) -> np.ndarray:
        """The one-hot vector (n,) float32 for choice `index`."""
        vector = np.zeros(self.n, np.float32)
        vector[index] = 1.0
        return vector

    def contains(self, x) -> bool:
        x = np.asarray(x)
        return bool(super().contains(x.astype(np.float32)) and np.sum(x == 1) == 1 and np.sum(x == 0) == self.n - 1)

    def __repr__(self) -> str:
        return f"OneHot({self.n})"
