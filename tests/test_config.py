"""Config merge order, typed CLI overrides, and one-line errors with exit status 2."""
import subprocess
import sys

import pytest

from common.config import Config, ConfigError, load_blocks, merge, parse_overrides
from world_models import BACKBONES  # registers the backbone words as the choices of `backbone`

WORDS = ", ".join(BACKBONES)

BLOCKS = {
    "defaults": {"seed": 0, "lr": 0.1, "name": "a", "flag": False, "sizes": [1, 2],
                 "backbone": "s4wm", "wm": {"units": 8, "latent": "categorical"}},
    "one": {"seed": 1, "wm": {"units": 16}},
    "two": {"seed": 2, "name": "b"},
}


def test_blocks_merge_left_to_right():
    c = merge(BLOCKS, ["one", "two"])
    assert (c.seed, c.name, c.wm.units) == (2, "b", 16)
    c = merge(BLOCKS, ["two", "one"])
    assert (c.seed, c.name) == (1, "b")


def test_overrides_are_typed_and_win():
    over = parse_overrides(["--seed", "5", "--lr=0.5", "--flag", "true", "--wm.units", "32",
                            "--sizes", "3,4", "--name", "x"])
    c = merge(BLOCKS, ["one"], over)
    assert c.seed == 5 and isinstance(c.seed, int)
    assert c.lr == 0.5 and isinstance(c.lr, float)
    assert c.flag is True and c.wm.units == 32 and c.sizes == [3, 4] and c.name == "x"
    assert merge(BLOCKS, [], {"lr": "3"}).lr == 3.0  # an int literal for a float key is fine


def test_config_is_frozen_and_round_trips():
    c = merge(BLOCKS, ["one"])
    with pytest.raises(AttributeError):
        c.seed = 3
    assert Config(c.flat()) == c
    assert c.to_dict()["wm"] == {"units": 16, "latent": "categorical"}


@pytest.mark.parametrize("names, over, needle", [
    (["oen"], {}, "unknown config block 'oen' (closest: one)"),
    ([], {"wm.unit": "3"}, "unknown config key '--wm.unit' (closest: --wm.units"),
    ([], {"seed": "abc"}, "config key 'seed' expects int, got 'abc'"),
    ([], {"flag": "maybe"}, "config key 'flag' expects bool"),
    ([], {"backbone": "lstm"}, f"unknown value 'lstm' (choices: {WORDS})"),
    ([], {"wm.latent": "beta"}, "choices: categorical, gaussian"),
])
def test_errors_name_the_offender(names, over, needle):
    with pytest.raises(ConfigError) as e:
        merge(BLOCKS, names, over)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_block_with_unknown_key_is_rejected():
    blocks = dict(BLOCKS, bad={"wm": {"unitz": 3}})
    with pytest.raises(ConfigError, match="block 'bad' sets unknown key 'wm.unitz'"):
        merge(blocks, ["bad"])


def test_project_configs_are_consistent():
    blocks = load_blocks()
    names = [name for name in blocks if name != "defaults"]
    assert len(names) > 20, names  # the file's blocks, not a subset
    for name in names:
        merge(blocks, [name])  # every block only uses keys of the schema, with the right types
    assert merge(blocks, ["dmc", "rssm"]).backbone == "rssm"


def test_every_default_key_has_a_comment():
    from common.config import CONFIG_FILE
    lines = CONFIG_FILE.read_text().split("\n\n")[1].splitlines()  # the defaults block
    keys = [l for l in lines[1:] if ":" in l and not l.strip().startswith("#")]
    leaves = [l for l in keys if not l.rstrip().endswith(":")]
    missing = [l for l in leaves if "#" not in l]
    assert not missing, missing


@pytest.mark.parametrize("args, needle", [
    (["--configs", "debug", "s4wn"], "unknown config block 's4wn' (closest: s4wm"),
    (["--stepz", "3"], "unknown config key '--stepz' (closest: --steps"),
    (["--steps", "many"], "config key 'steps' expects int"),
    (["--backbone", "gru"], f"choices: {WORDS}"),
    (["--task", "atari_pong", "--logdir", "{tmp}"], "atari"),
    (["--ac.start_stride", "0"], "config key 'ac.start_stride' must be >= 1, got 0"),
    (["--configs", "debug", "--ac.start_stride", "32"], "must be <= train.seq_len (16)"),
    (["--device", "cuda:x"], "choices: auto, cpu, cuda, cuda:<index>"),
    (["--configs", "debug", "--env.envs", "8", "--logdir", "{tmp}"], "train.prefill (100) must be"),
    (["--wm.mlp_keys", "(pos"], "'wm.mlp_keys' has '(pos', not a regular expression"),
    (["--configs", "debug", "dmc_proprio", "--wm.mlp_keys", "pos", "--logdir", "{tmp}"],
     "match no image (H, W, C) uint8 or vector (n,) float observation of task "
     "dmc_proprio_cartpole_balance (observations: position (3,), velocity (2,))"),
])
def test_cli_errors_exit_2_with_one_line(args, needle, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path / "run")) for a in args]
    proc = subprocess.run([sys.executable, "main.py", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_blocks():
    proc = subprocess.run([sys.executable, "main.py", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    for name in ["miniworld", "dmc", "memorymaze", "s4wm", "s5wm", "rssm", "tssm", "debug"]:
        assert name in proc.stdout
    text = " ".join(proc.stdout.split())
    assert "Sizes follow the device: with no size block (cpu, learn, " in text
    assert "a CPU gets 'cpu'" in text and "CUDA the defaults (DreamerV3-S)" in text
