"""Sizes follow the device (configs.yaml `size`, common/config.py): the CPU size on a CPU, the
DreamerV3-S defaults on CUDA, a named size block or a key on the command line wins; size blocks
merge after the others; `debug` makes every memory block a run of seconds."""
import json

import pytest

from common import cli, interrupt
from common.config import (AUTO_SIZE, SIZE_BLOCKS, Config, ConfigError, check_resume, load_blocks,
                           merge, read_saved)

BLOCKS = load_blocks()
MEMORY_BLOCKS = [b for b, v in BLOCKS.items()
                 if b != "defaults" and (v or {}).get("mode") == "offline"]


def _sizes(config: Config, block: str) -> dict:
    """The keys `block` sets, as they are in config (dotted)."""
    from common.config import _flatten
    return {k: config[k] for k in _flatten(BLOCKS[block])}


def _block(name: str) -> dict:
    from common.config import _coerce, _flatten
    defaults = _flatten(BLOCKS["defaults"])
    return {k: _coerce(k, v, defaults[k]) for k, v in _flatten(BLOCKS[name]).items()}


def test_a_cpu_gets_the_cpu_size_and_cuda_the_defaults():
    on_cpu = merge(BLOCKS, ["miniworld", "s4wm"], cuda_available=False)
    assert on_cpu.size == "cpu" and _sizes(on_cpu, "cpu") == _block("cpu")
    on_cuda = merge(BLOCKS, ["miniworld", "s4wm"], cuda_available=True)
    plain = {k: v for k, v in on_cuda.flat().items() if k != "size"}
    assert on_cuda.size == "default" and on_cuda.wm.d_model == BLOCKS["defaults"]["wm"]["d_model"]
    assert plain == {**{k: v for k, v in merge(BLOCKS, []).flat().items() if k != "size"},
                     "task": "miniworld_FourRooms", "backbone": "s4wm"}
    # --device cpu on a CUDA machine is a CPU run; offline memory runs get the memory CPU scale
    assert merge(BLOCKS, [], {"device": "cpu"}, cuda_available=True).size == "cpu"
    offline = merge(BLOCKS, ["four_rooms", "s4wm"], cuda_available=False)
    assert offline.size == AUTO_SIZE[("cpu", "offline")] == "memory_cpu"
    assert _sizes(offline, "memory_cpu") == _block("memory_cpu")
    assert merge(BLOCKS, ["four_rooms"], {"mode": "online"}, cuda_available=False).size == "cpu"


def test_a_named_size_block_or_key_wins():
    learn = merge(BLOCKS, ["learn", "miniworld", "s4wm"], cuda_available=False)
    assert learn.size == "learn" and _sizes(learn, "learn") == _block("learn")
    assert learn.ac.start_stride == BLOCKS["defaults"]["ac"]["start_stride"]  # nothing of `cpu`
    key = merge(BLOCKS, ["miniworld"], {"wm.d_model": "64", "run.eval_every": "7"},
                cuda_available=False)
    assert key.size == "cpu" and key.wm.d_model == 64 and key.run.eval_every == 7
    assert key.wm.units == _block("cpu")["wm.units"]  # the rest of the CPU size stays
    assert merge(BLOCKS, ["miniworld"], {"size": "default"}, cuda_available=False).wm.d_model == 512
    assert merge(BLOCKS, [], {"size": "memory_cpu+debug"}) == merge(BLOCKS, ["memory_cpu", "debug"])


@pytest.mark.parametrize("names, over, needle", [
    (["debug"], {"size": "cpu"}, "'size' is 'cpu' but --configs names the size block(s) debug"),
    ([], {"size": "gpu"}, "config key 'size' has unknown value 'gpu' (choices: auto, default, cpu"),
    ([], {"size": "miniworld"}, "unknown value 'miniworld'"),
])
def test_bad_sizes_fail_in_one_line(names, over, needle):
    with pytest.raises(ConfigError) as e:
        merge(BLOCKS, names, over, cuda_available=False)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_size_blocks_merge_after_the_others_in_any_order():
    for block in MEMORY_BLOCKS:
        assert merge(BLOCKS, [block, "debug"]) == merge(BLOCKS, ["debug", block]), block
        assert merge(BLOCKS, ["memory_cpu", block]) == merge(BLOCKS, [block, "memory_cpu"]), block


def test_only_size_blocks_set_sizes():
    """A new block that sets model or training sizes must be listed in SIZE_BLOCKS, else it would
    merge in the wrong tier and a CPU would add the cpu block on top of it."""
    from common.config import _flatten
    sized = ("wm.d_model", "wm.units", "wm.cnn_depth", "wm.stoch", "wm.classes", "s4.", "s5.",
             "rssm.", "tssm.", "train.", "ac.units", "offline.updates", "memory.episodes")
    assert set(SIZE_BLOCKS) <= set(BLOCKS)
    for name, block in BLOCKS.items():
        if name != "defaults" and name not in SIZE_BLOCKS:
            assert not [k for k in _flatten(block or {}) if k.startswith(sized)], name


def test_the_cli_asks_torch_for_cuda(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.parse(["--configs", "miniworld"]).size == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.parse(["--configs", "miniworld"]).size == "default"
    assert cli.parse(["--configs", "miniworld", "debug"]).size == "debug"


def test_a_run_resumed_on_another_device_is_told_its_size(tmp_path):
    (tmp_path / "config.yaml").write_text(merge(BLOCKS, ["miniworld"], cuda_available=False).dump())
    saved = read_saved(tmp_path / "config.yaml")
    now = merge(BLOCKS, ["miniworld"], cuda_available=True)
    with pytest.raises(ConfigError) as e:
        check_resume(saved, now, tmp_path)
    assert "size 'cpu'" in str(e.value) and "--size cpu" in str(e.value)
    check_resume(saved, merge(BLOCKS, ["miniworld"], {"size": "cpu"}, cuda_available=True),
                 tmp_path)  # the hint works


def test_a_memory_run_resumes_across_keys_its_env_never_reads(tmp_path):
    """A saved Distracting Memory run (e.g. begun when grid_cpu's doors-keys rows were 400 steps)
    resumes when only keys its env ignores changed; the keys it reads still refuse, and each of them
    is part of the dataset spec. (tests/test_memory_envs.py holds the table to the envs themselves.)"""
    from common.config import UNUSED_BY_ENV
    from memory.collect import Spec
    changed = {"memory.context": 7, "memory.query": 9, "memory.noise": 0.5, "memory.rooms": 10,
               "memory.teleport": True, "memory.keys": 5, "memory.maze": "15x15", "memory.width": 50}
    for env, unused in UNUSED_BY_ENV.items():
        base = {"memory.env": env, "memory.context": 150, "memory.query": 150}  # fits every maze
        (tmp_path / "config.yaml").write_text(merge(BLOCKS, ["distracting_memory", "debug"], base).dump())
        saved = read_saved(tmp_path / "config.yaml")
        for key, value in changed.items():
            now = merge(BLOCKS, ["distracting_memory", "debug"], {**base, key: value})
            if key in unused:
                check_resume(saved, now, tmp_path)
            else:
                with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                    check_resume(saved, now, tmp_path)
                assert Spec.from_config(now) != Spec.from_config(merge(BLOCKS, ["distracting_memory", "debug"],
                                                                       base)), (env, key)
    # the env itself is never ignored
    (tmp_path / "config.yaml").write_text(merge(BLOCKS, ["distracting_memory", "debug"]).dump())
    with pytest.raises(ConfigError, match="memory.env"):
        check_resume(read_saved(tmp_path / "config.yaml"),
                     merge(BLOCKS, ["distracting_memory", "debug"], {"memory.env": "multi_doors_keys"}), tmp_path)


def test_debug_is_small_with_every_memory_block():
    from memory.collect import Spec
    for block in MEMORY_BLOCKS:
        c = merge(BLOCKS, [block, "debug", "s4wm"])
        Spec.from_config(c)  # a valid dataset (e.g. a memory maze episode is long enough)
        assert c.memory.episodes <= 4 and c.offline.updates <= 10, block
        assert c.memory.context + c.memory.query <= 30 and c.memory.width <= 8, block
        assert c.offline.probe_episodes < c.memory.episodes - c.offline.test_episodes + 1, block


@pytest.mark.parametrize("block", MEMORY_BLOCKS)
def test_debug_with_every_memory_block_finishes(block, tmp_path, monkeypatch, capfd):
    """`--configs <memory block> debug s4wm` as a user gives it (no size overrides): dataset,
    training, evaluation and checkpoint in seconds, nothing from libraries on stderr. In this
    process, so that the imports are paid once."""
    import main
    monkeypatch.setattr(interrupt, "install", lambda: None)  # keep pytest's Ctrl-C
    logdir = tmp_path / "run"
    main.main(["--configs", block, "debug", "s4wm", "--logdir", str(logdir),
               "--memory.out", str(tmp_path / "{name}")])
    result = json.loads((logdir / "eval" / "metrics.json").read_text())
    assert result["updates"] == BLOCKS["debug"]["offline"]["updates"]
    assert (logdir / "checkpoint.pt").exists()
    out, err = capfd.readouterr()
    assert err == "" and "Falling back" not in out
    assert "size         debug: named on the command line" in out
