"""Distracting Memory and Multi Doors Keys (Deng et al. 2023, Sec. 3.3 / 3.4), built on minigrid.

Tasks (registered by envs/distracting_memory.py and envs/multi_doors_keys.py, which import this
module on first use): distracting_memory_<width> with width 100, 200, 400 (the hallway length in
cells) and multi_doors_keys_<keys> with 3, 5, 7 keys. [paper]: top-down 2D grids in MiniGrid's look, seen
through a 5x5 window centred on the agent that does NOT rotate with its heading. The rest is [ours]
(paper-notes 3.3 / 3.4).

Observation {'image': uint8 (64, 64, 3)}, drawn with MiniGrid's tile renderer at 12 px per cell:

    rows 0-3     held-keys strip: slot i (8 px wide) shows COLOURS[i] while a key of that colour is
                 held, black otherwise. [ours]: the paper does not say whether what the agent holds
                 is drawn, we draw it, so the held keys are observed, and in imagination they must
                 be generated from memory of the pick-ups and door openings. Black in Distracting
                 Memory, where nothing is ever held.
    rows 4-63    the 5x5 window (cols 2-61; cols 0-1 and 62-63 black): cells outside the grid are
                 walls; the agent is MiniGrid's red triangle pointing along its heading.

Actions are MiniGrid's: 0 turn left, 1 turn right, 2 forward (+ 3 pick up, 4 open for Multi Doors
Keys), as OneHot(3) / OneHot(5). Every reset/step info holds ground truth for scoring and probing.

Distracting Memory (x right, y down; '#' wall, 'c' cue, 'h' distractors, 'a'/'b' end squares):

    #########         (width 3) start room 3x3 (y 1-3) with the cue square at its centre;
    #...###a#         the agent starts in the room at a random cell and heading and sees the
    #.c.hhh.#         cue from anywhere in it (the window covers the whole room).
    #...###b#         hallway: `width` cells at y=2 from x=4, each a random colour from COLOURS
    #########         (the cue's colour included: distractors), then the junction cell '.'

  The end squares above and below the junction have two different colours, one the cue's, in random
  order. Stepping on one ends the episode (terminated) with reward 1 if its colour is the cue's,
  else 0. info: 'cue' (colour index), 'reached' (True on the step onto an end square), 'cell' (x, y).

Multi Doors Keys: a room 5 cells high and 2 * ceil(keys / 2) + 1 wide; `keys` locked doors in its
top and bottom walls (every other cell), each opening onto a one-cell alcove; the doors have distinct
colours drawn from COLOURS, and a key of each door's colour lies in the room. Pick up takes the key in
front and adds it to what the agent holds (any number of keys); open, facing a locked door while
holding its key, opens the door for good and consumes the key (reward 1 [ours]); a door never
closes. info: 'held' (bool (8,) by colour), 'door_open' (bool (keys,)), 'door_color' (int (keys,)),
'cell' (x, y).
"""
from __future__ import annotations

import functools
import math

import gymnasium
import numpy as np
from minigrid.core import constants
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import Door, Floor, Key, Wall
from minigrid.minigrid_env import MiniGridEnv

from envs.wrappers import OneHotAction

TILE, VIEW, STRIP, MARGIN = 12, 5, 4, 2  # px per cell, cells per window side, strip rows, black columns left
# MiniGrid has six colours; 7 keys need 7 distinct ones, so three are added to minigrid's tables
# (additive: existing colours keep their indices). Grey is left out: it is the walls' colour.
_EXTRA = {"orange": (255, 128, 0), "cyan": (0, 220, 220), "pink": (255, 105, 180)}
for _name, _rgb in _EXTRA.items():
    if _name not in constants.COLOR_TO_IDX:
        constants.COLORS[_name] = np.array(_rgb)
        constants.COLOR_TO_IDX[_name] = len(constants.COLOR_TO_IDX)
        constants.IDX_TO_COLOR[constants.COLOR_TO_IDX[_name]] = _name
COLOURS = ("red", "green", "blue", "purple", "yellow", "orange", "cyan", "pink")
LEFT, RIGHT, FORWARD, PICKUP, OPEN = range(5)
DIRS = constants.DIR_TO_VEC  # heading 0 right, 1 down, 2 left, 3 up
CUE = (2, 2)  # Distracting Memory: the cue square, at the centre of the start room


def build_distracting(width: int, *, max_steps: int, image_size: int = 64) -> gymnasium.Env:
    """Distracting Memory with a `width`-cell hallway, OneHot(3) actions."""
    return _wrap(DistractingMemory(width, max_steps=max_steps), image_size)


def build_doors_keys(keys: int, *, max_steps: int, image_size: int = 64) -> gymnasium.Env:
    """Multi Doors Keys with `keys` keys and doors, OneHot(5) actions."""
    return _wrap(MultiDoorsKeys(keys, max_steps=max_steps), image_size)


def _wrap(env: "GridMemoryEnv", image_size: int) -> gymnasium.Env:
    env.image_size = image_size
    env.observation_space = gymnasium.spaces.Dict(
        {"image": gymnasium.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)})
    return OneHotAction(env)


class GridMemoryEnv(MiniGridEnv):
    """Shared parts: the 64x64 window rendering, MiniGrid moves, the held-keys set."""

    n_actions = 3

    def __init__(self, width: int, height: int, max_steps: int):
        super().__init__(mission_space=MissionSpace(mission_func=lambda: "remember"), width=width,
                         height=height, max_steps=max_steps, see_through_walls=True, agent_view_size=VIEW)
        self.action_space = gymnasium.spaces.Discrete(self.n_actions)
        self.image_size = 64
        self.observation_space = gymnasium.spaces.Dict({"image": gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)})
        self.held: set[str] = set()

    def reset(self, *, seed=None, options=None):
        self.held = set()
        super().reset(seed=seed, options=options)  # draws the world (_gen_grid)
        return {"image": self.render_view()}, self._info()

    def step(self, action):
        self.step_count += 1
        action = int(action)
        front = tuple(int(v) for v in self.front_pos)
        cell = self.grid.get(*front)
        reward, terminated = 0.0, False
        if action == LEFT:
            self.agent_dir = (self.agent_dir - 1) % 4
        elif action == RIGHT:
            self.agent_dir = (self.agent_dir + 1) % 4
        elif action == FORWARD and (cell is None or cell.can_overlap()):
            self.agent_pos = front
            reward, terminated = self._arrived(cell)
        elif action in (PICKUP, OPEN):
            reward = self._interact(action, front, cell)
        truncated = not terminated and self.step_count >= self.max_steps
        return {"image": self.render_view()}, reward, terminated, truncated, self._info()

    def _arrived(self, cell) -> tuple[float, bool]:
        """(reward, terminated) after moving onto `cell`."""
        return 0.0, False

    def _interact(self, action: int, front: tuple[int, int], cell) -> float:
        return 0.0

    def _info(self) -> dict:
        return {"cell": np.array(self.agent_pos, np.int64), "held": self.held_mask()}

    def held_mask(self) -> np.ndarray:
        """bool (8,): which COLOURS are held."""
        return np.array([c in self.held for c in COLOURS])

    def render_view(self) -> np.ndarray:
        """The observation: uint8 (image_size, image_size, 3); layout in the module docstring."""
        image = np.zeros((64, 64, 3), np.uint8)
        for i, colour in enumerate(COLOURS):
            if colour in self.held:
                image[:STRIP, 8 * i:8 * i + 8] = constants.COLORS[colour]
        ax, ay = self.agent_pos
        for dy in range(VIEW):
            for dx in range(VIEW):
                x, y = ax + dx - VIEW // 2, ay + dy - VIEW // 2
                inside = 0 <= x < self.width and 0 <= y < self.height
                obj = self.grid.get(x, y) if inside else _WALL
                centre = dx == dy == VIEW // 2
                tile = Grid.render_tile(obj, agent_dir=self.agent_dir if centre else None, tile_size=TILE)
                top, left = cell_box(dx, dy)
                image[top:top + TILE, left:left + TILE] = tile  # (12, 12, 3) tiles, cached by minigrid
        return _resize(image, self.image_size)

    def _fill_walls(self) -> None:
        for x in range(self.width):
            for y in range(self.height):
                self.grid.set(x, y, Wall())


_WALL = Wall()
WINDOW = len(COLOURS)  # pixel_labels: window cell (dx, dy) is WINDOW + dy * VIEW + dx


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """A 64x64 drawing at `size` x `size` (NEAREST: colours stay exact), as every observation is."""
    if size == 64:
        return image
    from PIL import Image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.NEAREST))


def cell_box(dx: int, dy: int) -> tuple[int, int]:
    """(top, left) of window cell (dx, dy) in the 64x64 drawing (TILE x TILE pixels)."""
    return STRIP + dy * TILE, MARGIN + dx * TILE


def pixel_labels(image_size: int) -> np.ndarray:
    """int (image_size, image_size): what each pixel of an observation shows: slot i of the
    held-keys strip -> i, window cell (dx, dy) -> WINDOW + dy * VIEW + dx (dx right, dy down; the
    agent at (VIEW // 2, VIEW // 2)), the black margins -> -1. Drawn at 64x64 and resized as
    render_view resizes (16: 2 px per slot, 3x3 per cell)."""
    labels = np.full((64, 64), 255, np.uint8)
    for i in range(len(COLOURS)):
        labels[:STRIP, 8 * i:8 * i + 8] = i
    for dy in range(VIEW):
        for dx in range(VIEW):
            top, left = cell_box(dx, dy)
            labels[top:top + TILE, left:left + TILE] = WINDOW + dy * VIEW + dx
    out = _resize(np.repeat(labels[..., None], 3, -1), image_size)[..., 0].astype(np.int64)
    out[out == 255] = -1
    return out


@functools.lru_cache(maxsize=4)
def read_layout(image_size: int) -> tuple[np.ndarray, ...]:
    """What reading Multi Doors Keys frames of `image_size` back needs (memory/evaluate.py), read-only:
    (pixel_labels (S, S), the strip slots' colours uint8 (8, 3), each window cell's flat pixel indices
    (VIEW * VIEW, n), an open and a locked door of each colour as a cell's pixels uint8 (8, n, 3)).
    ValueError where the cells are not drawn alike at this size (e.g. 8 px: 1.5 px per cell), so
    one cell's pixels cannot stand for another's."""
    labels = pixel_labels(image_size)
    cells = [np.flatnonzero(labels.ravel() == WINDOW + c) for c in range(VIEW * VIEW)]
    probe = np.zeros((64, 64, 3), np.uint8)  # a tile with detail in every corner, in every cell
    tile = Grid.render_tile(Key("red"), agent_dir=0, tile_size=TILE)
    for dy in range(VIEW):
        for dx in range(VIEW):
            top, left = cell_box(dx, dy)
            probe[top:top + TILE, left:left + TILE] = tile
    flat = _resize(probe, image_size).reshape(-1, 3)
    if any(len(c) != len(cells[0]) or not np.array_equal(flat[c], flat[cells[0]]) for c in cells) \
            or not all((labels == i).any() for i in range(len(COLOURS))):
        raise ValueError(f"multi_doors_keys frames of {image_size} px draw the window's cells unalike "
                         f"(3 px per cell at 16, 32 and 64 px work)")

    def drawn(obj) -> np.ndarray:  # (n, 3): a cell showing obj
        image = np.zeros((64, 64, 3), np.uint8)
        image[STRIP:STRIP + TILE, MARGIN:MARGIN + TILE] = Grid.render_tile(obj, tile_size=TILE)
        return _resize(image, image_size).reshape(-1, 3)[cells[0]]
    out = (labels, np.array([constants.COLORS[c] for c in COLOURS], np.uint8), np.stack(cells),
           np.stack([drawn(Door(c, is_open=True)) for c in COLOURS]),
           np.stack([drawn(Door(c, is_locked=True)) for c in COLOURS]))
    for array in out:
        array.setflags(write=False)
    return out


def door_cells(keys: int) -> list[tuple[int, int, int]]:
    """Multi Doors Keys with `keys` doors: (x, y of door i, y of the cell in front of it inside the
    room); doors 0 .. ceil(keys / 2) - 1 in the top wall, the rest in the bottom wall."""
    top = math.ceil(keys / 2)
    return [(2 + 2 * i, 2, 3) for i in range(top)] + [(2 + 2 * i, 8, 7) for i in range(keys - top)]


class DistractingMemory(GridMemoryEnv):
    """Cue in a start room, a hallway of distractor squares, two end squares; module docstring."""

    def __init__(self, width: int, max_steps: int):
        if width < 1:
            raise ValueError(f"distracting_memory: width must be >= 1, got {width}")
        self.hall = width
        self.junction = 4 + width  # x of the junction cell (y = 2)
        self.cue, self._reached = 0, False
        super().__init__(width=self.junction + 2, height=5, max_steps=max_steps)

    def _gen_grid(self, width, height):
        self.grid = Grid(width, height)
        self._fill_walls()
        rng = self.np_random
        for x in range(1, 4):
            for y in range(1, 4):
                self.grid.set(x, y, None)
        self.cue = int(rng.integers(len(COLOURS)))
        self.grid.set(*CUE, Floor(COLOURS[self.cue]))
        for x in range(4, self.junction):
            self.grid.set(x, 2, Floor(COLOURS[int(rng.integers(len(COLOURS)))]))
        self.grid.set(self.junction, 2, None)
        other = (self.cue + 1 + int(rng.integers(len(COLOURS) - 1))) % len(COLOURS)  # != cue
        top, bottom = (self.cue, other) if rng.integers(2) else (other, self.cue)
        self.grid.set(self.junction, 1, Floor(COLOURS[top]))
        self.grid.set(self.junction, 3, Floor(COLOURS[bottom]))
        cells = [(x, y) for x in range(1, 4) for y in range(1, 4) if (x, y) != CUE]
        self.agent_pos = cells[int(rng.integers(len(cells)))]
        self.agent_dir = int(rng.integers(4))
        self._reached = False

    def end_colours(self) -> tuple[int, int]:
        """The colour indices of the end squares above and below the junction (one is the cue's)."""
        return tuple(COLOURS.index(self.grid.get(self.junction, y).color) for y in (1, 3))

    def paint_cue(self, cue: int) -> None:
        """Repaint the cue square in colour `cue` (an index into COLOURS), after reset: the reward
        follows the new colour. A counterfactual of the same layout (memory/cueswap.py)."""
        self.cue = int(cue)
        self.grid.set(*CUE, Floor(COLOURS[self.cue]))

    def _arrived(self, cell) -> tuple[float, bool]:
        x, y = self.agent_pos
        self._reached = x == self.junction and y != 2
        if self._reached:  # paper Sec. 3.3: reward for reaching the square of the cue's colour
            return float(cell.color == COLOURS[self.cue]), True
        return 0.0, False

    def step(self, action):
        self._reached = False
        return super().step(action)

    def _info(self) -> dict:
        return {**super()._info(), "cue": self.cue, "reached": bool(self._reached)}


class MultiDoorsKeys(GridMemoryEnv):
    """Keys and locked doors of matching colours; module docstring."""

    n_actions = 5

    def __init__(self, keys: int, max_steps: int):
        if not 1 <= keys <= len(COLOURS):
            raise ValueError(f"multi_doors_keys: keys must be in [1, {len(COLOURS)}], got {keys}")
        self.keys, inner = keys, 2 * math.ceil(keys / 2) + 1
        self.slots = door_cells(keys)
        self.doors: list[Door] = []
        super().__init__(width=inner + 2, height=11, max_steps=max_steps)

    def _gen_grid(self, width, height):
        self.grid = Grid(width, height)
        self._fill_walls()
        rng = self.np_random
        interior = [(x, y) for x in range(1, width - 1) for y in range(3, 8)]
        for x, y in interior:
            self.grid.set(x, y, None)
        colours = [COLOURS[i] for i in rng.permutation(len(COLOURS))[:self.keys]]
        self.doors = []
        for (x, y, _), colour in zip(self.slots, colours):
            self.doors.append(Door(colour, is_open=False, is_locked=True))
            self.grid.set(x, y, self.doors[-1])
            self.grid.set(x, 1 if y == 2 else 9, None)  # the alcove behind the door
        # Keys never lie in front of a door, so every door can be reached and opened.
        fronts = {(x, f) for x, _, f in self.slots}
        free = [c for c in interior if c not in fronts]
        chosen = rng.permutation(len(free))[:self.keys + 1]
        for i, colour in zip(chosen[:-1], colours):
            self.grid.set(*free[i], Key(colour))
        self.agent_pos, self.agent_dir = free[chosen[-1]], int(rng.integers(4))

    def _interact(self, action: int, front: tuple[int, int], cell) -> float:
        if action == PICKUP and isinstance(cell, Key):
            self.held.add(cell.color)
            self.grid.set(*front, None)
        elif action == OPEN and isinstance(cell, Door) and cell.is_locked and cell.color in self.held:
            # Paper Sec. 3.4: opening consumes the key; the door stays open for the episode.
            cell.is_locked, cell.is_open = False, True
            self.held.discard(cell.color)
            return 1.0
        return 0.0

    def _info(self) -> dict:
        return {**super()._info(), "door_open": np.array([d.is_open for d in self.doors]),
                "door_color": np.array([COLOURS.index(d.color) for d in self.doors], np.int64)}
