import os

import torch

# Tests use tiny tensors: one thread avoids OpenMP hand-off costs (and oversubscription when the
# suite shares the machine). Headless GL is set as the project does it: only where unset.
torch.set_num_threads(1)
os.environ.setdefault("PYGLET_HEADLESS", "1")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
