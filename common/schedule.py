"""Declarative cadence for the main loop."""
from __future__ import annotations


class Every:
    """True once each time `step` crosses a multiple of `every` (0 disables). Resumes correctly
    because it only looks at the step, never at wall-clock or call counts."""

    def __init__(self, every: int, start: int = 0):
        self.every, self.last = every, (start // every) * every if every else 0

    def __call__(self, step: int) -> bool:
        if not self.every or step < self.last + self.every:
            return False
        self.last = (step // self.every) * self.every
        return True


class Ratio:
    """How many updates are due so that updates * cost tracks `ratio` * steps (DreamerV3's
    train_ratio: replayed steps per env step, one update replays batch*length steps)."""

    def __init__(self, ratio: float, cost: int, done: int = 0):
        self.per_step, self.done = ratio / cost, done

    def __call__(self, steps: int) -> int:
        due = int(steps * self.per_step) - self.done
        self.done += max(due, 0)
        return max(due, 0)
