"""Two / Four / Ten Rooms (Deng et al. 2023, Sec. 3.1 / 3.2): tasks `rooms_<n>[_teleport]`.

Names: rooms_two, rooms_four, rooms_ten (long-term imagination) and rooms_two_teleport,
rooms_four_teleport, rooms_ten_teleport (context-dependent recall). The paper describes first-person
3D rooms in MiniWorld style with distinctly coloured walls and coloured objects; the layout below
is [ours] (paper-notes 3.1):

    rooms      2 (1x2), 4 (2x2) or 10 (2x5) square rooms of ROOM x ROOM units on a grid; every
               pair of grid neighbours is joined by a DOOR-wide doorway in the middle of the shared
               wall (rooms touch, so there are no corridors)
    walls      each room one entry of PALETTE (a light texture tinted with one of 10 colours),
               drawn without repetition anew each episode: which colour is where must be remembered
    objects    2-4 per room, each a ball, box or key of a random MiniWorld colour, placed anew each
               episode >= 2 units from the doorways, GAP apart and out of the corners, so that
               they never block a doorway or close off part of the floor
    actions    OneHot(3): turn left, turn right, move forward (MiniWorld's 15 degrees / 0.15 units)
    episode    context + query frames (defaults by size: 250/250, 500/500, 1000/1000); truncated at
               the end, never terminated; reward always 0 (the benchmark scores predictions)
    teleport   (`_teleport` names) the step that produces frame `context` ignores its action and puts
               the agent at the pose (position and heading) of a context frame s drawn uniformly
               from [0, context); info['teleport_source'] = s on that step, -1 elsewhere. Nothing
               moves in these worlds, so that frame equals frame s pixel for pixel.

Every reset/step info holds the ground truth used for scoring and probing: 'room' (int, index
r * cols + c of the room holding the agent), 'pose' (float64 (3,): x, z, heading in radians),
'teleport_source' (int). One MiniWorld env per process (see envs/miniworld.py).
"""
from __future__ import annotations

import math

import gymnasium
import numpy as np

from envs.headless import gl_import
from envs.wrappers import OneHotAction

ACTION_REPEAT = 1
ROOM, DOOR = 6.0, 2.0                          # room side and doorway width, MiniWorld units
GAP = 1.2                                      # free space around objects (the agent is 0.8 wide)
GRIDS = {2: (1, 2), 4: (2, 2), 10: (2, 5)}     # rooms -> (rows, cols)
SIZES = {"two": 2, "four": 4, "ten": 10}
LENGTHS = {2: (250, 250), 4: (500, 500), 10: (1000, 1000)}  # default (context, query) frames
# Wall looks: (texture, RGB tint). Tints multiply the texture (GL_COLOR_MATERIAL), so ten hues on
# three light textures give ten walls that differ in colour first and pattern second.
_TINTS = [(1.0, 0.3, 0.3), (0.3, 0.9, 0.3), (0.35, 0.45, 1.0), (1.0, 1.0, 0.3), (1.0, 0.35, 1.0),
          (0.3, 1.0, 1.0), (1.0, 0.6, 0.2), (0.6, 0.3, 0.9), (1.0, 1.0, 1.0), (0.6, 0.4, 0.25)]
PALETTE = [(("stucco", "marble", "concrete_tiles")[i % 3], tint) for i, tint in enumerate(_TINTS)]
OBJECT_KINDS = ("ball", "box", "key")


def names() -> list[str]:
    """Valid names, e.g. 'four', 'four_teleport'."""
    return [f"{size}{suffix}" for size in SIZES for suffix in ("", "_teleport")]


def make(name: str, *, seed: int, image_size: int, fast_render: bool) -> gymnasium.Env:
    """rooms_<name> with the default context/query lengths; seeding happens at reset."""
    del seed, fast_render
    size, _, variant = name.partition("_")
    n_rooms = SIZES[size]
    context, query = LENGTHS[n_rooms]
    return build(n_rooms, context=context, query=query, teleport=variant == "teleport",
                 image_size=image_size)


def build(n_rooms: int, *, context: int, query: int, teleport: bool, image_size: int = 64) -> gymnasium.Env:
    """A rooms env with {'image': uint8 (S, S, 3)} observations and OneHot(3) actions whose
    episodes last exactly context + query frames (context + query - 1 steps)."""
    if n_rooms not in GRIDS:
        raise ValueError(f"rooms: n_rooms must be one of {sorted(GRIDS)}, got {n_rooms}")
    if context < 1 or query < 1:
        raise ValueError(f"rooms: context and query must be >= 1, got {context}, {query}")
    from envs.miniworld import ImageDict, quiet  # the MiniWorld family's wrapper, reused
    env_class = _env_class()
    with quiet():
        env = env_class(n_rooms, max_episode_steps=context + query - 1,
                        teleport_at=context if teleport else None, image_size=image_size)
    return OneHotAction(ImageDict(env))


def _env_class():
    """RoomsEnv is defined on first use: miniworld opens a GL context when imported."""
    global _ROOMS_ENV
    if _ROOMS_ENV is None:
        _ROOMS_ENV = _define_env(gl_import("miniworld.miniworld"), gl_import("miniworld.entity"))
    return _ROOMS_ENV


_ROOMS_ENV = None


def _define_env(mw, entity):
    from pyglet.gl import GL_QUADS, glBegin, glColor3f, glEnd, glNormal3f, glTexCoord2f, glVertex3f

    class TintedRoom(mw.Room):
        """A Room whose walls are drawn in `tint` (MiniWorld's Room draws everything white)."""

        def __init__(self, outline, tint, **kwargs):
            super().__init__(outline, **kwargs)
            self.tint = tint

        def _render(self):
            # MiniWorld draws floor and ceiling (walls hidden for that call), then we draw the walls
            # in the tint. This runs once per episode, into MiniWorld's display list.
            walls = self.wall_verts
            self.wall_verts = walls[:0]
            super()._render()
            self.wall_verts = walls
            glColor3f(*self.tint)
            self.wall_tex.bind()
            glBegin(GL_QUADS)
            for i in range(walls.shape[0]):
                glNormal3f(*self.wall_norms[i, :])
                glTexCoord2f(*self.wall_texcs[i, :])
                glVertex3f(*walls[i, :])
            glEnd()
            glColor3f(1, 1, 1)

    class StaticBox(entity.Box):
        """A Box drawn once per episode with the rooms (MiniWorld redraws every Box every frame)."""

        @property
        def is_static(self):
            return True

    class RoomsEnv(mw.MiniWorldEnv):
        """N rooms on a grid; see the module docstring. Discrete(3) actions, image observations."""

        def __init__(self, n_rooms: int, *, max_episode_steps: int, teleport_at: int | None,
                     image_size: int):
            self.n_rooms, (self.rows, self.cols) = n_rooms, GRIDS[n_rooms]
            self.teleport_at = teleport_at
            self.wall_ids = np.zeros(n_rooms, np.int64)  # PALETTE index of each room's walls
            self.doors: list[tuple[int, int, np.ndarray]] = []  # (room a, room b, centre (3,))
            self._poses: list[np.ndarray] = []
            super().__init__(max_episode_steps=max_episode_steps, obs_width=image_size,
                             obs_height=image_size)
            self.action_space = gymnasium.spaces.Discrete(3)  # turn left, turn right, forward

        def _gen_world(self):
            self.wall_ids = self.np_random.permutation(len(PALETTE))[:self.n_rooms]
            for index in range(self.n_rooms):
                r, c = divmod(index, self.cols)
                x0, z0 = c * ROOM, r * ROOM
                # Counter-clockwise outline seen from above, as MiniWorld's add_rect_room builds it.
                outline = np.array([[x0 + ROOM, z0 + ROOM], [x0 + ROOM, z0], [x0, z0], [x0, z0 + ROOM]])
                texture, tint = PALETTE[self.wall_ids[index]]
                self.rooms.append(TintedRoom(outline, tint, wall_tex=texture))
            self.doors = []
            for a in range(self.n_rooms):
                r, c = divmod(a, self.cols)
                for b, horizontal in ((a + 1, True), (a + self.cols, False)):
                    if (horizontal and c + 1 < self.cols) or (not horizontal and r + 1 < self.rows):
                        self._connect(a, b, horizontal)
            self._gen_static_data()  # wall segments, needed by the collision checks below
            for index in range(self.n_rooms):
                wanted, placed = int(self.np_random.integers(2, 5)), 0  # 2-4 objects per room
                for _ in range(3 * wanted):  # a kind that did not fit is replaced by another draw
                    placed += self._place_object(index)
                    if placed == wanted:
                        break
            self.place_agent(room=self.rooms[int(self.np_random.integers(self.n_rooms))])

        def _connect(self, a: int, b: int, horizontal: bool) -> None:
            """A doorway in the middle of the wall shared by rooms a and b (b right of / below a)."""
            ra, rb = self.rooms[a], self.rooms[b]
            if horizontal:  # shared wall at x = ra.max_x
                mid = (ra.min_z + ra.max_z) / 2
                self.connect_rooms(ra, rb, min_z=mid - DOOR / 2, max_z=mid + DOOR / 2, max_y=2.2)
                centre = np.array([ra.max_x, 0.0, mid])
            else:           # shared wall at z = ra.max_z
                mid = (ra.min_x + ra.max_x) / 2
                self.connect_rooms(ra, rb, min_x=mid - DOOR / 2, max_x=mid + DOOR / 2, max_y=2.2)
                centre = np.array([mid, 0.0, ra.max_z])
            self.doors.append((a, b, centre))

        def _place_object(self, index: int) -> bool:
            """One ball/box/key of a random colour in room `index`; False if it found no room."""
            kind = OBJECT_KINDS[int(self.np_random.integers(len(OBJECT_KINDS)))]
            color = entity.COLOR_NAMES[int(self.np_random.integers(len(entity.COLOR_NAMES)))]
            ent = {"ball": lambda: entity.Ball(color, size=0.6), "box": lambda: StaticBox(color, size=0.7),
                   "key": lambda: entity.Key(color)}[kind]()
            ent.static = True  # nothing moves here: drawn from MiniWorld's per-episode display list
            room = self.rooms[index]
            for _ in range(200):
                pos = np.array([self.np_random.uniform(room.min_x + 0.7, room.max_x - 0.7), 0.0,
                                self.np_random.uniform(room.min_z + 0.7, room.max_z - 0.7)])
                if self._fits(ent, pos, index):
                    self.place_entity(ent, pos=pos, dir=self.np_random.uniform(-math.pi, math.pi))
                    return True
            return False

        def _fits(self, ent, pos: np.ndarray, index: int) -> bool:
            """Whether `ent` at `pos` keeps every part of the floor reachable: >= 2 units from the
            room's doorways, GAP from other objects, not in a corner. Objects GAP apart can only
            close a pocket together with two walls, i.e. in a corner."""
            room = self.rooms[index]
            if any(np.linalg.norm(pos - c) < 2.0 for a, b, c in self.doors if index in (a, b)):
                return False
            near_x = min(pos[0] - room.min_x, room.max_x - pos[0]) < ent.radius + GAP
            near_z = min(pos[2] - room.min_z, room.max_z - pos[2]) < ent.radius + GAP
            others = (e for e in self.entities if e is not self.agent)
            return not (near_x and near_z) and all(
                np.linalg.norm(pos - e.pos) >= ent.radius + e.radius + GAP for e in others)

        def room_centre(self, index: int) -> tuple[float, float]:
            """(x, z) of the centre of room `index`."""
            r, c = divmod(index, self.cols)
            return ((c + 0.5) * ROOM, (r + 0.5) * ROOM)

        def room_of(self, pos) -> int:
            """Grid index of the room containing point `pos` (x, y, z)."""
            c = min(max(int(pos[0] // ROOM), 0), self.cols - 1)
            r = min(max(int(pos[2] // ROOM), 0), self.rows - 1)
            return r * self.cols + c

        def reset(self, *, seed=None, options=None):
            obs, _ = super().reset(seed=seed, options=options)
            self._poses = [self._pose()]
            return obs, self._info(-1)

        def step(self, action):
            if self.teleport_at is not None and self.step_count + 1 == self.teleport_at:
                # Paper Sec. 3.2 (teleport variants); the action of this step is ignored.
                self.step_count += 1
                source = int(self.np_random.integers(self.teleport_at))
                x, z, heading = self._poses[source]
                self.agent.pos, self.agent.dir = np.array([x, 0.0, z]), float(heading)
                obs, terminated = self.render_obs(), False
                truncated = self.step_count >= self.max_episode_steps
                reward, info_source = 0.0, source
            else:
                obs, reward, terminated, truncated, _ = super().step(action)
                info_source = -1
            self._poses.append(self._pose())
            return obs, float(reward), terminated, truncated, self._info(info_source)

        def _pose(self) -> np.ndarray:
            return np.array([self.agent.pos[0], self.agent.pos[2], self.agent.dir], np.float64)

        def _info(self, teleport_source: int) -> dict:
            return {"room": self.room_of(self.agent.pos), "pose": self._poses[-1].copy(),
                    "teleport_source": teleport_source}

    return RoomsEnv
