"""Headless OpenGL setup for MiniWorld (pyglet) and dm_control / memory_maze (MuJoCo).

`setup()` must run before the first import of pyglet, miniworld, dm_control or memory_maze, because
pyglet reads PYGLET_HEADLESS and dm_control reads MUJOCO_GL once, at import. It only fills in
defaults: a value the user exported (e.g. PYGLET_HEADLESS=0 under xvfb-run) is kept.
On this kind of machine (no display, Mesa llvmpipe) EGL works for both; MUJOCO_GL=osmesa fails.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys

GL_HINT = (
    "install the GL libraries (apt-get install libegl1 libgl1 libgl1-mesa-dri), "
    "or run under `xvfb-run -a` with PYGLET_HEADLESS=0 MUJOCO_GL=glfw"
)
# Words that GL failures carry: pyglet 'Library "EGL" not found', PyOpenGL "... glGetError",
# mujoco "OpenGL platform library has not been loaded", pyglet NoSuchDisplayException.
_GL_ERROR = re.compile(r"opengl|egl|osmesa|glfw|display|\bgl|mjr_", re.IGNORECASE)


def setup() -> None:
    """Default to headless EGL rendering without overriding what the user set."""
    os.environ.setdefault("PYGLET_HEADLESS", "1")
    os.environ.setdefault("MUJOCO_GL", "egl")
    pyglet = sys.modules.get("pyglet")
    if pyglet is not None and "pyglet.gl" not in sys.modules:
        # pyglet was imported before us: its env-var read is over, but the option still counts
        # until pyglet.gl creates the shadow window.
        pyglet.options["headless"] = os.environ["PYGLET_HEADLESS"] in ("true", "TRUE", "True", "1")


class HeadlessGLError(RuntimeError):
    """OpenGL could not render headless; the message names the packages to install."""


def gl_import(module: str):
    """Import a simulator module after setup(); importing can already open a GL context (pyglet's
    shadow window, dm_control's renderer backend), so GL failures become one line here too."""
    setup()
    with gl_errors(f"import {module}"):
        return importlib.import_module(module)


@contextlib.contextmanager
def gl_errors(what: str):
    """Turn a GL/display failure inside the block into one line naming the packages to install."""
    try:
        yield
    except HeadlessGLError:
        raise  # already one line (nested guards)
    except Exception as err:  # noqa: BLE001 - re-raised unchanged unless it is a GL failure
        text = str(err).strip()
        message = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
        if not _GL_ERROR.search(message):
            raise
        raise HeadlessGLError(
            f"{what}: headless OpenGL rendering failed ({message}; PYGLET_HEADLESS="
            f"{os.environ.get('PYGLET_HEADLESS')}, MUJOCO_GL={os.environ.get('MUJOCO_GL')}); {GL_HINT}"
        ) from err
