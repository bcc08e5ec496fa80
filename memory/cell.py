"""A trained memory-benchmark cell, loaded for the tests run on it (memory/readback.py,
memory/cueswap.py, memory/shortcontext.py), and their shared command line."""
from __future__ import annotations

import argparse
import json
import os
import pathlib

import torch

from common.cli import fail
from common.config import Config, ConfigError, read_saved
from common.run import load_checkpoint, restore
from memory.collect import dataset_folder
from memory.train import FIELDS, Trainer, load_episodes

NAMES = {"distracting_memory": "Distracting Memory", "multi_doors_keys": "Multi Doors Keys",
         "rooms": "rooms", "memory_maze": "Memory Maze"}  # memory.env -> the benchmark's name


def cell_arguments(prog: str, doc: str, what: str, argv=None, more=None) -> argparse.Namespace:
    """--logdir (the cell), --draws (latent samples), --seed (torch seed of the first draw),
    --threads (set here), and what more(parser) adds; one line and exit 2 on a bad value."""
    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.split("\n")[0])
    parser.add_argument("--logdir", required=True, type=pathlib.Path, help=what)
    parser.add_argument("--draws", type=int, default=5, help="latent samples per condition")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the first draw")
    parser.add_argument("--threads", type=int, default=1)
    if more is not None:
        more(parser)
    args = parser.parse_args(argv)
    for name in ("draws", "threads"):
        if getattr(args, name) < 1:
            fail(f"--{name} must be >= 1, got {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    return args


def load_cell(logdir: pathlib.Path, backbone: str | None = None, envs=("distracting_memory",)):
    """A trained cell of one of `envs` (memory.env; of `backbone`, None: any) -> (config, world
    model in eval mode, held-out test episodes in index order, updates); one line and exit 2 on
    bad input."""
    try:
        config = Config(read_saved(logdir / "config.yaml"))
    except ConfigError as e:
        fail(str(e))
    if config.memory.env not in envs or backbone not in (None, config.backbone):
        fail(f"{logdir}: the test is for {' and '.join(NAMES.get(e, e) for e in envs)} cells"
             f"{'' if backbone is None else ' of backbone ' + backbone}, "
             f"this one is {NAMES.get(config.memory.env, config.memory.env)} with {config.backbone}")
    folder = dataset_folder(config)
    if not pathlib.Path(folder).is_dir():
        fail(f"the cell's dataset {folder} is not on disk: run from the folder the cell was trained "
             "in, or rerun the cell's training command (it makes the dataset first)")
    try:
        _, test = load_episodes(folder, config.memory.episodes, config.offline.test_episodes)
    except ConfigError as e:
        fail(str(e))
    ckpt = load_checkpoint(logdir, FIELDS)
    if ckpt is None:
        fail(f"{logdir} has no checkpoint.pt: the test needs the trained weights")
    trainer = Trainer(config, test[0]["action"].shape[-1], torch.device("cpu"))
    restore(logdir, lambda: trainer.restore(ckpt["trainer"]))
    return config, trainer.wm.eval(), test, int(ckpt["updates"])


def write_result(path: pathlib.Path, result: dict) -> None:
    """Write a test's JSON result whole or not at all (a killed write leaves the old file)."""
    path.parent.mkdir(exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)


def command(main) -> None:
    """Run a test's main(): Ctrl-C ends it with status 130 and no traceback (nothing is half-written)."""
    try:
        main()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
