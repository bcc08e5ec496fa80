"""Scripted collection policies for the 2D memory benchmarks (envs/gridmemory.py); [ours].

Both read the unwrapped env's true state (grid, agent cell and heading) and draw from their own
generator; `act()` returns an action index: 0 turn left, 1 turn right, 2 forward, 3 pick up, 4 open.

    DistractingPolicy   paper Sec. 3.3: see the cue (0-3 random turns in the start room, whose cue
                        is always in view), walk the hallway, then pick the upper or lower end
                        square with probability 1/2 each, so rewards are 1 in half the episodes.
    DoorsKeysPolicy     paper Sec. 3.4: the 2 * keys events (pick up a key, open a door whose key is
                        held) happen in random order at random times spread over the first 90% of
                        the episode, so doors keep changing during the query; in between the agent
                        wanders and revisits doors (looks at them, sometimes tries to open one
                        without its key). With probability `noise` a random move replaces the plan.
"""
from __future__ import annotations

from collections import deque

import numpy as np

TURN_LEFT, TURN_RIGHT, FORWARD, PICKUP, OPEN = range(5)


class DistractingPolicy:
    """See the module docstring. `side` (0 upper, 1 lower) is drawn at construction."""

    def __init__(self, env, rng: np.random.Generator):
        self.env, self.rng = env, rng
        self.looks = int(rng.integers(4))
        self.side = int(rng.integers(2))

    def act(self) -> int:
        env = self.env
        if self.looks:
            self.looks -= 1
            return int(self.rng.integers(2))
        junction = (env.junction, 2)
        cell = tuple(int(v) for v in env.agent_pos)
        if cell != junction:
            path = grid_path(env, {junction})
            return face(env, heading_to(cell, path[1]), self.rng)
        return face(env, 3 if self.side == 0 else 1, self.rng)  # forward once facing it


class DoorsKeysPolicy:
    """See the module docstring. `length`: frames in the episode (spreads the events)."""

    def __init__(self, env, rng: np.random.Generator, length: int, noise: float = 0.1):
        self.env, self.rng, self.noise = env, rng, noise
        events = 2 * env.keys
        span = max(int(0.9 * length), events)
        self.times = np.sort(rng.choice(span, events, replace=False))  # when each event is due
        self.done, self.t = 0, 0
        self.goal: dict | None = None

    def act(self) -> int:
        self.t += 1
        if self.rng.random() < self.noise:
            return int(self.rng.integers(3))
        for _ in range(3):  # a finished or unreachable goal is replaced at once
            if self.goal is None or self.goal["age"] > 80:
                self.goal = self._new_goal()
            self.goal["age"] += 1
            action = self._pursue()
            if action is not None:
                return action
            self.goal = None
        return int(self.rng.integers(3))

    def _pursue(self) -> int | None:
        """The next action towards the goal; None when it is finished or unreachable."""
        env, goal = self.env, self.goal
        cell = tuple(int(v) for v in env.agent_pos)
        if cell in goal["stand"]:
            heading = goal["stand"][cell]
            if heading is None:
                return None
            turn = face(env, heading, self.rng)
            if turn != FORWARD:
                return turn
            if goal["final"] is None:
                return None
            self.goal, self.done = None, self.done + goal["event"]  # act once: goal finished
            return goal["final"]
        path = grid_path(env, set(goal["stand"]))
        if path is None:
            return None
        return face(env, heading_to(cell, path[1]), self.rng)

    def _new_goal(self) -> dict:
        env, rng = self.env, self.rng
        keys = [(x, y) for x in range(env.width) for y in range(env.height)
                if getattr(env.grid.get(x, y), "type", None) == "key"]
        openable = [i for i, d in enumerate(env.doors) if d.is_locked and d.color in env.held]
        due = self.done < len(self.times) and self.t >= self.times[self.done]
        if due and keys + openable:
            pick = int(rng.integers(len(keys) + len(openable)))
            if pick < len(keys):
                return self._key_goal(keys[pick])
            return self._door_goal(openable[pick - len(keys)], OPEN, event=1)
        if rng.random() < 0.5:
            i = int(rng.integers(len(env.doors)))
            door = env.doors[i]
            tries = door.is_locked and door.color not in env.held and rng.random() < 0.3
            return self._door_goal(i, OPEN if tries else None, event=0)
        cells = [(x, y) for x in range(env.width) for y in range(env.height) if _walkable(env, (x, y))]
        return {"stand": {cells[int(rng.integers(len(cells)))]: None}, "final": None, "event": 0, "age": 0}

    def _key_goal(self, key: tuple[int, int]) -> dict:
        stand = {}
        for dx, dy in ((1, 0), (0, 1), (-1, 0), (0, -1)):
            cell = (key[0] + dx, key[1] + dy)
            if _walkable(self.env, cell):
                stand[cell] = heading_to(cell, key)
        return {"stand": stand, "final": PICKUP, "event": 1, "age": 0}

    def _door_goal(self, index: int, final: int | None, event: int) -> dict:
        x, y, front = self.env.slots[index]
        return {"stand": {(x, front): 3 if y < front else 1}, "final": final, "event": event, "age": 0}


def _walkable(env, cell: tuple[int, int]) -> bool:
    x, y = cell
    if not (0 <= x < env.width and 0 <= y < env.height):
        return False
    obj = env.grid.get(x, y)
    return obj is None or obj.can_overlap()


def grid_path(env, goal_cells: set[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """Shortest list of cells from the agent's cell to any of `goal_cells` (agent cell first),
    moving through empty or walkable cells; None if none can be reached."""
    start = tuple(int(v) for v in env.agent_pos)
    previous, queue = {start: None}, deque([start])
    while queue:
        cell = queue.popleft()
        if cell in goal_cells:
            path = []
            while cell is not None:
                path.append(cell)
                cell = previous[cell]
            return path[::-1]
        for dx, dy in ((1, 0), (0, 1), (-1, 0), (0, -1)):
            nxt = (cell[0] + dx, cell[1] + dy)
            if nxt not in previous and _walkable(env, nxt):
                previous[nxt] = cell
                queue.append(nxt)
    return None


def face(env, heading: int, rng: np.random.Generator) -> int:
    """The turn towards MiniGrid `heading` (0 right, 1 down, 2 left, 3 up), or FORWARD if facing it."""
    turn = (heading - env.agent_dir) % 4
    if turn == 0:
        return FORWARD
    if turn == 2:
        return int(rng.integers(2))
    return TURN_RIGHT if turn == 1 else TURN_LEFT


def heading_to(a: tuple[int, int], b: tuple[int, int]) -> int:
    """MiniGrid heading from cell a to the neighbouring cell b."""
    return {(1, 0): 0, (0, 1): 1, (-1, 0): 2, (0, -1): 3}[(b[0] - a[0], b[1] - a[1])]
