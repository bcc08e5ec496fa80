"""Scripted collection policies for the memory benchmarks (paper Sec. 3: datasets are collected
offline by scripted policies; the scripts themselves are [ours], paper-notes 3.1-3.4).

Every policy reads the true state of the unwrapped env (not the image), draws from its own
generator, and `act()` returns a discrete action index; `memory.collect` one-hot encodes it.

    RoomsPolicy          (here) drive to waypoints, unvisited rooms first, with action noise
    DistractingPolicy    (grid_policies.py) look around the start room, walk the hallway, pick an
                         end square at random
    DoorsKeysPolicy      (grid_policies.py) pick up keys / open doors at random times spread over
                         the episode, wander and revisit doors in between, with action noise
    MazePolicy           (here) Memory Maze: drive to random free cells with action noise, as the
                         memory-maze authors' offline datasets were collected
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

TURN_LEFT, TURN_RIGHT, FORWARD = 0, 1, 2


CELL = 0.25  # planning grid resolution, MiniWorld units


class _WaypointDriver:
    """What RoomsPolicy and MazePolicy share: follow `plan` (waypoints, dropped within 0.3 units)
    with `_steer`, planning anew with `_new_plan` when it runs out; with probability `noise` a
    uniformly random action replaces the planned one; after three forward moves in a row that did
    not move the agent (`_stuck`), an escape (one turn held 3-8 steps, then ESCAPE_FORWARD forward
    steps) and a new plan. Subclasses set the action ids below and the three methods."""

    TURNS: tuple[int, int]      # (left, right)
    FORWARD: int                # straight ahead
    FORWARDS: tuple[int, ...]   # every action that moves forward
    N_ACTIONS: int
    ESCAPE_FORWARD: int

    def __init__(self, env, rng: np.random.Generator, noise: float = 0.2):
        self.env, self.rng, self.noise = env, rng, noise
        self.plan: list[np.ndarray] = []
        self.escape: list[int] = []
        self.last: np.ndarray | None = None  # position before the last forward move
        self.bumps = 0

    def replan(self) -> None:
        """Forget the waypoints (after a teleport)."""
        self.plan, self.escape, self.last = [], [], None

    def _drive(self, pos: np.ndarray) -> int:
        if self.last is not None:  # the last action moved forward: did it move us?
            self.bumps = self.bumps + 1 if self._stuck(pos, self.last) else 0
            if self.bumps >= 3:
                turn = self.TURNS[int(self.rng.integers(2))]
                self.escape = [turn] * int(self.rng.integers(3, 9)) + [self.FORWARD] * self.ESCAPE_FORWARD
                self.plan, self.bumps = [], 0
        self.last = None
        if self.escape:
            action = self.escape.pop(0)
        else:
            while self.plan and np.linalg.norm(self.plan[0] - pos) < 0.3:
                self.plan.pop(0)
            if not self.plan:
                self.plan = self._new_plan(pos)
            action = self._steer(pos, self.plan[0])
            if self.rng.random() < self.noise:
                action = int(self.rng.integers(self.N_ACTIONS))
        if action in self.FORWARDS:
            self.last = pos
        return action

    def _stuck(self, pos: np.ndarray, last: np.ndarray) -> bool:
        raise NotImplementedError

    def _steer(self, pos: np.ndarray, target: np.ndarray) -> int:
        raise NotImplementedError

    def _new_plan(self, pos: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError


class RoomsPolicy(_WaypointDriver):
    """Waypoint driver for envs/rooms.py (actions: 0 turn left, 1 turn right, 2 forward).

    Target: the nearest room not yet visited this episode (fewest doorways away), or a random
    room once all are, so the context visits every room early (paper Sec. 3.1 needs the whole
    world in the context); the goal is a random free point in it, dropped with probability 1/2
    on entering a new room while others remain unvisited. Path: breadth-first search on a
    CELL-sized occupancy grid of the floor (a cell is free when the agent, grown by 0.15, touches
    no wall or object there; nothing moves, so it is built once per episode), followed through a
    waypoint every unit. With probability `noise` a uniformly random action replaces the planned
    one; after three blocked forward moves in a row, a short random escape, then a new path.
    """

    TURNS, FORWARD, FORWARDS, N_ACTIONS, ESCAPE_FORWARD = (TURN_LEFT, TURN_RIGHT), FORWARD, (FORWARD,), 3, 4

    def __init__(self, env, rng: np.random.Generator, noise: float = 0.2):
        super().__init__(env, rng, noise)  # plan: (x, z) waypoints
        self.visited: set[int] = set()
        self.free: np.ndarray | None = None  # bool (nx, nz) occupancy grid, built on first act

    def act(self) -> int:
        env = self.env
        if self.free is None:
            self.free = self._free_cells()
        pos = np.array([env.agent.pos[0], env.agent.pos[2]])  # (x, z)
        room = env.room_of(env.agent.pos)
        if room not in self.visited:
            self.visited.add(room)
            if len(self.visited) < env.n_rooms and self.rng.random() < 0.5:
                self.plan = []  # half the time, head on to the next unvisited room at once
        return self._drive(pos)

    def _stuck(self, pos: np.ndarray, last: np.ndarray) -> bool:
        return np.allclose(pos, last)

    def _steer(self, pos: np.ndarray, target: np.ndarray) -> int:
        # MiniWorld heading: forward is (cos dir, -sin dir) in (x, z); turning left raises dir.
        delta = target - pos
        error = math.atan2(-delta[1], delta[0]) - self.env.agent.dir
        error = (error + math.pi) % (2 * math.pi) - math.pi
        if abs(error) > math.radians(12):  # half a turn step is 7.5 degrees: no dithering
            return TURN_LEFT if error > 0 else TURN_RIGHT
        return FORWARD

    def _free_cells(self) -> np.ndarray:
        """bool (nx, nz): cell (i, j), centre ((i + 0.5) * CELL, (j + 0.5) * CELL), is free."""
        env = self.env
        nx, nz = int(round(env.max_x / CELL)), int(round(env.max_z / CELL))
        free = np.zeros((nx, nz), bool)
        for i in range(nx):
            for j in range(nz):
                centre = np.array([(i + 0.5) * CELL, 0.0, (j + 0.5) * CELL])
                free[i, j] = not env.intersect(env.agent, centre, env.agent.radius + 0.15)
        return free

    def _new_plan(self, pos: np.ndarray) -> list[np.ndarray]:
        env = self.env
        hops = _room_hops(env, env.room_of(env.agent.pos))  # room -> doorways away
        unvisited = [r for r in hops if r not in self.visited]
        if unvisited:
            nearest = min(hops[r] for r in unvisited)
            choices = [r for r in unvisited if hops[r] == nearest]
        else:
            choices = list(hops)
        room = env.rooms[choices[int(self.rng.integers(len(choices)))]]
        i0, j0 = int(room.min_x / CELL), int(room.min_z / CELL)
        cells = np.argwhere(self.free[i0:int(room.max_x / CELL), j0:int(room.max_z / CELL)]) + [i0, j0]
        goal = tuple(cells[int(self.rng.integers(len(cells)))])
        path = _grid_path(self.free, (int(pos[0] / CELL), int(pos[1] / CELL)), goal)
        if path is None:  # we stand where the grid says we cannot (noise): step out first
            return [pos + self.rng.uniform(-1, 1, 2)]
        return [(np.array(c) + 0.5) * CELL for c in path[4::4] + [goal]]  # a waypoint every unit


def _room_hops(env, start: int) -> dict[int, int]:
    """Doorways between room `start` and every room (BFS over the doorway graph)."""
    neighbours: dict[int, list[int]] = {r: [] for r in range(env.n_rooms)}
    for a, b, _ in env.doors:
        neighbours[a].append(b)
        neighbours[b].append(a)
    hops, queue = {start: 0}, deque([start])
    while queue:
        r = queue.popleft()
        for n in neighbours[r]:
            if n not in hops:
                hops[n] = hops[r] + 1
                queue.append(n)
    return hops


def _grid_path(free: np.ndarray, start: tuple, goal: tuple) -> list[tuple] | None:
    """Shortest 8-connected path of free cells from `start` (which may be blocked) to `goal`,
    start excluded; None if unreachable. Diagonal steps need both side cells free."""
    previous, queue = {start: None}, deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            path = []
            while cell != start:
                path.append(cell)
                cell = previous[cell]
            return path[::-1]
        i, j = cell
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)):
            n = (i + di, j + dj)
            if n in previous or not (0 <= n[0] < free.shape[0] and 0 <= n[1] < free.shape[1]):
                continue
            if free[n] and (di == 0 or dj == 0 or (free[i + di, j] and free[i, j + dj])):
                previous[n] = cell
                queue.append(n)
    return None


MAZE_LEFT, MAZE_RIGHT, MAZE_FORWARD, MAZE_FORWARD_LEFT, MAZE_FORWARD_RIGHT = 2, 3, 1, 4, 5


class MazePolicy(_WaypointDriver):
    """Waypoint driver for envs/memorymaze.py built with global_obs (actions: 0 noop, 1 forward,
    2 left, 3 right, 4 forward+left, 5 forward+right; a left turn raises the heading angle).

    Goal: a random free cell other than the current one; path: breadth-first search over the
    maze layout's free cells (8-connected, no corner cutting), followed cell centre by cell centre.
    Steering: turn in place when the heading is more than 40 degrees off the next centre, forward
    with a turn beyond 12 degrees, else forward. With probability `noise` a uniformly random action
    replaces the planned one; after three forward moves that did not move the agent, a short
    random escape, then a new goal.
    """

    TURNS, FORWARD, N_ACTIONS, ESCAPE_FORWARD = (MAZE_LEFT, MAZE_RIGHT), MAZE_FORWARD, 6, 3
    FORWARDS = (MAZE_FORWARD, MAZE_FORWARD_LEFT, MAZE_FORWARD_RIGHT)

    def act(self) -> int:
        return self._drive(np.asarray(self.env.state["agent_pos"], float))

    def _stuck(self, pos: np.ndarray, last: np.ndarray) -> bool:
        return np.linalg.norm(pos - last) < 0.01

    def _steer(self, pos: np.ndarray, target: np.ndarray) -> int:
        heading = np.asarray(self.env.state["agent_dir"], float)
        delta = target - pos
        error = math.atan2(delta[1], delta[0]) - math.atan2(heading[1], heading[0])
        error = (error + math.pi) % (2 * math.pi) - math.pi
        if abs(error) > math.radians(40):
            return MAZE_LEFT if error > 0 else MAZE_RIGHT
        if abs(error) > math.radians(12):
            return MAZE_FORWARD_LEFT if error > 0 else MAZE_FORWARD_RIGHT
        return MAZE_FORWARD

    def _new_plan(self, pos: np.ndarray) -> list[np.ndarray]:
        free = np.asarray(self.env.state["maze_layout"], bool).T  # free[x, y]
        here = (int(pos[0]), int(pos[1]))
        cells = [tuple(c) for c in np.argwhere(free) if tuple(c) != here]
        goal = cells[int(self.rng.integers(len(cells)))]
        path = _grid_path(free, here, goal)
        if path is None:  # off the free cells (cannot happen in a connected maze): nudge
            return [pos + self.rng.uniform(-0.5, 0.5, 2)]
        return [np.array(c) + 0.5 for c in path]
