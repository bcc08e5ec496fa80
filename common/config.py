"""configs.yaml -> one frozen, typed config.

`defaults` is the schema: every key that exists, its type (the type of its default value) and a
one-line comment. Named blocks are merged on top of it left to right (`--configs a b c`), then
`--key value` / `--section.key value` overrides from the command line. Anything a user can get wrong
(unknown block, unknown key, wrong type) raises ConfigError with ONE line naming the offender and the
closest valid choices; main.py turns it into exit status 2 without a traceback.

Merge order: defaults <- the named blocks that are not size blocks, left to right <- the size blocks
(those named, left to right; when none is named, the device's: AUTO_SIZE) <- --key overrides. Size
blocks come after the others wherever they are named, so `--configs debug four_rooms` and
`--configs four_rooms debug` are the same run; the chosen sizes are recorded in the key `size`.
"""
from __future__ import annotations

import difflib
import io
import math
import pathlib
import re

from ruamel.yaml import YAML

CONFIG_FILE = pathlib.Path(__file__).resolve().parent.parent / "configs.yaml"


# Keys whose value must be one of a fixed set of words (checked at merge time, one-line errors).
# `backbone` is registered by the registry that owns its words (world_models.BACKBONES).
CHOICES = {
    "mode": ["online", "offline"],
    "wm.latent": ["categorical", "gaussian"],
    "ac.actor_grad": ["reinforce", "straight_through"],
    "s4wm.init": ["lin", "inv"],
    "memory.env": ["rooms", "distracting_memory", "multi_doors_keys", "memory_maze"],
    "memory.rooms": [2, 4, 10],
}



def register_choices(key: str, choices) -> None:
    """Make `key` one of `choices` (a list, or a dict whose keys are the words, kept by reference:
    a word added to the dict later is a choice too). A registry calls it for its own key."""
    CHOICES[key] = choices


# What each numeric key may be, by its meaning: an interval in the usual notation ('[1, inf)'
# includes 1, '(0, 1]' excludes 0), optionally followed by 'even' or 'a power of two'. Every float
# key must also be finite: nan and inf mean nothing anywhere. Checked after merging, one line each.
BOUNDS = {
    "seed": "[0, 4294967296)",  # numpy and the env workers take 32-bit seeds
    "memory.seed": "[0, 4294967296)",
    "steps": "[0, inf)", "threads": "[0, 4096]",
    "env.envs": "[1, inf)", "env.eval_envs": "[1, inf)",
    "env.image_size": "[8, inf) a power of two",  # stride-2 convolutions down to 4 x 4
    "env.action_repeat": "[0, inf)", "env.time_limit": "[0, inf)",  # 0: the family default
    "replay.capacity": "[1, inf)", "replay.chunk": "[1, inf)",
    "train.prefill": "[0, inf)", "train.train_ratio": "[0, inf)", "train.batch_size": "[1, inf)",
    "train.global_batch": "[0, inf)", "train.seq_len": "[2, inf)", "train.pretrain": "[0, inf)",
    "wm.stoch": "[1, inf)", "wm.classes": "[2, inf)", "wm.unimix": "[0, 1)",
    "wm.d_model": "[1, inf)", "wm.units": "[1, inf)", "wm.layers": "[0, inf)",
    "wm.cnn_depth": "[1, inf)", "wm.reward_bins": "[2, inf)",
    # AdamW moves every weight by about lr per step: above 1 the first step outgrows any weight
    "wm.lr": "(0, 1]", "wm.weight_decay": "[0, inf)", "wm.eps": "(0, inf)",
    "wm.grad_clip": "(0, inf)",  # a norm: 0 stops learning, a negative one flips the gradient
    "loss.image": "[0, inf)", "loss.reward": "[0, inf)", "loss.cont": "[0, inf)",
    "loss.dyn": "[0, inf)", "loss.rep": "[0, inf)", "loss.free_nats": "[0, inf)",
    "s4wm.n_blocks": "[1, inf)", "s4wm.d_state": "[2, inf) even",  # N/2 complex conjugate pairs
    "s4wm.dt_min": "(0, inf)", "s4wm.dt_max": "(0, inf)", "s4wm.mlp_ratio": "[1, inf)",
    "s4wm.dropout": "[0, 1)",
    "s5wm.n_blocks": "[1, inf)", "s5wm.d_state": "[2, inf) even",  # P/2 complex conjugate pairs
    "s5wm.dt_min": "(0, inf)", "s5wm.dt_max": "(0, inf)", "s5wm.mlp_ratio": "[1, inf)",
    "s5wm.dropout": "[0, 1)",
    "rssm.tbtt_length": "[1, inf)",
    "tssm.n_layers": "[1, inf)", "tssm.n_heads": "[1, inf)", "tssm.mem_len": "[1, inf)",
    "tssm.ff_ratio": "[1, inf)", "tssm.dropout": "[0, 1)",
    "ac.horizon": "[1, inf)", "ac.start_stride": "[1, inf)", "ac.gamma": "(0, 1]",
    "ac.lam": "[0, 1]", "ac.entropy": "[0, inf)", "ac.units": "[1, inf)", "ac.layers": "[0, inf)",
    "ac.actor_lr": "(0, 1]", "ac.critic_lr": "(0, 1]", "ac.eps": "(0, inf)",
    "ac.grad_clip": "(0, inf)", "ac.slow_critic_rate": "(0, 1]", "ac.slow_reg": "[0, inf)",
    "ac.retnorm_decay": "[0, 1)", "ac.retnorm_limit": "(0, inf)",
    "run.log_every": "[0, inf)", "run.eval_every": "[0, inf)", "run.eval_episodes": "[1, inf)",
    "run.video_every": "[0, inf)", "run.openloop_context": "[1, inf)",
    "run.checkpoint_every": "[0, inf)", "run.nan_patience": "[1, inf)",  # every: 0 disables
    "memory.width": "[1, inf)", "memory.keys": "[1, 8]",  # 8 key colours
    "memory.context": "[1, inf)", "memory.query": "[1, inf)", "memory.noise": "[0, 1]",
    "memory.episodes": "[1, inf)", "memory.workers": "[1, inf)",
    "offline.updates": "[0, inf)", "offline.window": "[0, inf)", "offline.chunk": "[0, inf)",
    "offline.plateau": "[0, 1)",  # a fraction of the loss
    "offline.test_episodes": "[1, inf)",
    "offline.query_observe": "[0, inf)", "offline.eval_every": "[1, inf)",
    "offline.eval_batch": "[1, inf)", "offline.log_every": "[1, inf)",
    "offline.checkpoint_every": "[1, inf)", "offline.probe_episodes": "[0, inf)",
    "offline.probe_updates": "[1, inf)",
}


# Rules between two keys: (key, other, holds(value, other value), what must hold, applies(flat)).
RELATIONS = [
    ("ac.start_stride", "train.seq_len", lambda k, t: k <= t,
     "must be <= train.seq_len ({other}): no imagination start otherwise", None),
    ("tssm.n_heads", "wm.d_model", lambda h, d: d % h == 0,
     "must divide wm.d_model ({other}) into equal heads", lambda f: f.get("backbone") == "tssm"),
    ("s4wm.dt_min", "s4wm.dt_max", lambda lo, hi: lo <= hi, "must be <= s4wm.dt_max ({other})", None),
    ("s5wm.dt_min", "s5wm.dt_max", lambda lo, hi: lo <= hi, "must be <= s5wm.dt_max ({other})", None),
    ("wm.weight_decay", "wm.lr", lambda wd, lr: lr * wd < 1,
     "must be < 1 / wm.lr ({other}): AdamW multiplies each weight by 1 - lr x weight_decay", None),
    ("offline.query_observe", "memory.query", lambda o, q: o < q,
     "must be < memory.query ({other}): some query frames must be left to imagine",
     lambda f: f.get("mode") == "offline" and f.get("memory.env") != "distracting_memory"),
]


def _parse_bound(rule: str) -> tuple:
    """'[1, inf) even' -> (1.0, inf, True, False, 'even'): low, high, closed ends, extra word."""
    m = re.fullmatch(r"([\[(])\s*([^,]+),\s*([^\])]+)([\])])\s*(.*)", rule)
    low, high = float(m[2]), float(m[3])
    return low, high, m[1] == "[", m[4] == "]", m[5]


def check_bound(key: str, value, rule: str) -> None:
    """Raise a one-line ConfigError unless `value` lies in the bound `rule` (see BOUNDS)."""
    low, high, low_in, high_in, extra = _parse_bound(rule)
    inside = (low <= value if low_in else low < value) and \
        (value <= high if high_in else value < high)
    if inside and extra == "even":
        inside = value % 2 == 0
    elif inside and extra == "a power of two":
        inside = value & (value - 1) == 0
    if inside:
        return
    interval = rule[:len(rule) - len(extra)].strip()
    if math.isinf(high):  # '>= 1' reads better than '[1, inf)'
        interval = f"{'>=' if low_in else '>'} {interval[1:].split(',')[0]}"
    else:
        interval = f"in {interval}"
    text = f"{interval} and {extra}" if extra else interval
    raise ConfigError(f"config key '{key}' must be {text}, got {value!r}")


def check_values(flat: dict) -> None:
    """Every key's value by its meaning: choices, finiteness, BOUNDS, RELATIONS (one line each)."""
    for key, choices in CHOICES.items():
        if key in flat and flat[key] not in choices:
            raise ConfigError(f"config key '{key}' has unknown value {flat.get(key)!r} "
                              f"(choices: {', '.join(map(str, choices))})")
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    for key, rule in BOUNDS.items():
        if key in flat:
            check_bound(key, flat[key], rule)
    for key, other, holds, what, applies in RELATIONS:
        if key in flat and other in flat and (applies is None or applies(flat)):
            if not holds(flat[key], flat[other]):
                raise ConfigError(f"config key '{key}' ({flat[key]!r}) "
                                  + what.format(other=flat[other]))
    for key in REGEX:
        try:
            re.compile(flat.get(key, ""))
        except re.error as e:
            raise ConfigError(f"config key '{key}' has {flat[key]!r}, not a regular expression "
                              f"({e}); e.g. 'image', '.*' (all), '' (none)") from None
    device = flat.get("device", "auto")
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:")
                                                     and device[5:].isdigit())):
        raise ConfigError(f"config key 'device' has unknown value {device!r} "
                          f"(choices: auto, cpu, cuda, cuda:<index>)")


# Keys holding regular expressions (matched in full against observation keys, world_models/).
REGEX = ("wm.cnn_keys", "wm.mlp_keys")


# Blocks that set sizes and cadences (model, batch, train ratio, datasets, updates); merged after
# the other blocks. `size` records which applied: their names joined by '+', or 'default' (none).
SIZE_BLOCKS = ("cpu", "learn", "vector_cpu", "memory_control", "debug", "memory_cpu", "grid_cpu",
               "memory_paper", "capacity")

# The size block of a run that names none (size: auto), by (device type, mode). On CUDA: none, the
# defaults are DreamerV3-S. On a CPU those need 6-20 s per update (2 cores): the CPU sizes instead.
AUTO_SIZE = {("cpu", "online"): "cpu", ("cpu", "offline"): "memory_cpu"}


class ConfigError(ValueError):
    """A user mistake in configs or flags; its message is a single line."""


def _closest(word, choices):
    near = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return ", ".join(near) if near else ", ".join(sorted(choices)[:12])


def load_blocks(path=CONFIG_FILE) -> dict:
    """All named blocks of configs.yaml as plain dicts (ruamel's safe loader)."""
    try:
        text = pathlib.Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    blocks = YAML(typ="safe").load(text)
    if not isinstance(blocks, dict) or "defaults" not in blocks:
        raise ConfigError(f"{path} must be a mapping of named blocks with a 'defaults' block")
    return blocks


def _flatten(tree: dict, prefix="") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _coerce(key: str, value, default):
    """Return value converted to the type of default, or raise a one-line ConfigError."""
    kind = type(default)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(float(value)) if float(value).is_integer() else int(value)
            except ValueError:
                pass
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(default, list):
        if isinstance(value, (list, tuple)):
            items = list(value)
        elif isinstance(value, str):
            items = [v for v in value.strip("[]").split(",") if v.strip()]
        else:
            items = None
        if items is not None:
            inner = default[0] if default else ""
            return [_coerce(key, v.strip() if isinstance(v, str) else v, inner) for v in items]
    raise ConfigError(
        f"config key '{key}' expects {kind.__name__}, got {value!r} ({type(value).__name__})")


class Config:
    """Frozen nested config with attribute access: `config.wm.stoch`, `config['wm.stoch']`."""

    def __init__(self, flat: dict):
        object.__setattr__(self, "_flat", dict(flat))

    def __getattr__(self, name):
        flat = object.__getattribute__(self, "_flat")
        if name in flat:
            return flat[name]
        sub = {k[len(name) + 1:]: v for k, v in flat.items() if k.startswith(name + ".")}
        if sub:
            return Config(sub)
        raise AttributeError(f"config has no key '{name}' (closest: {_closest(name, flat)})")

    def __getitem__(self, name):
        return self.__getattr__(name)

    def __setattr__(self, name, value):
        raise AttributeError("config is frozen: derive new values as variables, not config keys")

    def __contains__(self, name):
        flat = self._flat
        return name in flat or any(k.startswith(name + ".") for k in flat)

    def __eq__(self, other):
        return isinstance(other, Config) and self._flat == other._flat

    def flat(self) -> dict:
        return dict(self._flat)

    def to_dict(self) -> dict:
        tree = {}
        for key, value in self._flat.items():
            node = tree
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = list(value) if isinstance(value, list) else value
        return tree

    def replace(self, **updates) -> "Config":
        """A copy with some keys changed (dotted keys via a dict: replace(**{'wm.stoch': 8}))."""
        flat = self.flat()
        for key, value in updates.items():
            if key not in flat:
                raise ConfigError(f"unknown config key '{key}' (closest: {_closest(key, flat)})")
            flat[key] = _coerce(key, value, flat[key])
        return Config(flat)

    def dump(self) -> str:
        stream = io.StringIO()
        yaml = YAML()
        yaml.default_flow_style = False
        yaml.dump(self.to_dict(), stream)
        return stream.getvalue()


def merge(blocks: dict, names: list[str], overrides: dict | None = None,
          cuda_available: bool = True) -> Config:
    """defaults <- other blocks <- size blocks <- overrides (flat dotted keys); see the module
    docstring. cuda_available: whether device 'auto' means CUDA, which decides the size a run gets
    when it names no size block (common.cli.parse asks torch; the default keeps the defaults)."""
    defaults = _flatten(blocks["defaults"])
    choices = [b for b in blocks if b != "defaults"]
    for name in names:
        if name not in blocks or name == "defaults":
            raise ConfigError(f"unknown config block '{name}' (closest: {_closest(name, choices)})")
    overrides = dict(overrides or {})
    for key in overrides:
        if key not in defaults:
            raise ConfigError(f"unknown config key '--{key}' (closest: "
                              f"{', '.join('--' + c for c in _closest(key, defaults).split(', '))})")
    flat = dict(defaults)
    _apply(flat, blocks, [n for n in names if n not in SIZE_BLOCKS], defaults)
    sizes = [n for n in names if n in SIZE_BLOCKS]
    if "size" in defaults:
        size = str(overrides.pop("size", flat["size"]))
        sizes = _size_blocks(size, sizes, blocks, {**flat, **overrides}, cuda_available)
    _apply(flat, blocks, sizes, defaults)
    if "size" in defaults:
        flat["size"] = "+".join(sizes) or "default"
    for key, value in overrides.items():
        flat[key] = _coerce(key, value, defaults[key])
    check_values(flat)
    return Config(flat)


def _apply(flat: dict, blocks: dict, names: list[str], defaults: dict) -> None:
    for name in names:
        for key, value in _flatten(blocks[name] or {}).items():
            if key not in defaults:
                raise ConfigError(f"block '{name}' sets unknown key '{key}' "
                                  f"(closest: {_closest(key, defaults)})")
            flat[key] = _coerce(key, value, defaults[key])


def _size_blocks(size: str, named: list[str], blocks: dict, flat: dict,
                 cuda_available: bool) -> list[str]:
    """The size blocks that apply: those named in --configs, else the `size` key's ('auto': the
    device's, AUTO_SIZE; 'default': none; else block names joined by '+')."""
    if named:
        if size not in ("auto", "+".join(named)):
            raise ConfigError(f"config key 'size' is {size!r} but --configs names the size "
                              f"block(s) {', '.join(named)}: give the size one way")
        return named
    if size == "auto":
        device = str(flat.get("device", "auto"))
        on_cpu = device == "cpu" or (device == "auto" and not cuda_available)
        block = AUTO_SIZE.get(("cpu" if on_cpu else "cuda", str(flat.get("mode", "online"))))
        return [block] if block in blocks else []
    if size == "default":
        return []
    words = size.split("+")
    for word in words:
        if word not in SIZE_BLOCKS or word not in blocks:
            raise ConfigError(f"config key 'size' has unknown value {word!r} (choices: auto, "
                              f"default, {', '.join(b for b in SIZE_BLOCKS if b in blocks)})")
    return words


def parse_overrides(argv: list[str]) -> dict:
    """['--a.b', '3', '--c=x'] -> {'a.b': '3', 'c': 'x'} (values stay strings; merge() types them)."""
    out, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument '{arg}': use --key value or --section.key value")
        key = arg[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(argv):
                raise ConfigError(f"flag '--{key}' needs a value")
            value, i = argv[i + 1], i + 2
        key = key.replace("-", "_")
        if key in out:  # never drop a value silently: which one was meant?
            raise ConfigError(f"flag '--{key}' is given twice ({out[key]!r} and {value!r}): "
                              f"give each key once")
        out[key] = value
    return out


def read_saved(path) -> dict:
    """The config a run saved in its logdir (config.yaml), flat; a file that cannot be what we
    wrote (missing keys aside) raises a one-line ConfigError naming it and the way out."""
    path = pathlib.Path(path)
    way_out = "restore it, or move the logdir away to start afresh"
    try:
        text = path.read_text()
        saved = YAML(typ="safe").load(text)
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a saved config: {way_out}") from None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not text (binary content): {way_out}") from None
    except Exception as e:  # noqa: BLE001 - every YAML parser error: one line
        raise ConfigError(f"{path} is not valid YAML ({type(e).__name__}): {way_out}") from None
    if saved is None:
        raise ConfigError(f"{path} is empty, so this run's settings are unknown: {way_out}")
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} holds a {type(saved).__name__}, not a mapping of config "
                          f"keys: {way_out}")
    return _flatten(saved)


# Memory-benchmark keys each memory.env never reads: they may differ when a run resumes, and
# memory.collect.Spec normalises them away, so they never make two datasets differ.
# Its keys are the memory envs (memory.collect.ENVS).
UNUSED_BY_ENV = {
    "rooms": {"memory.width", "memory.keys", "memory.maze"},
    "distracting_memory": {"memory.context", "memory.query", "memory.noise", "memory.rooms",
                           "memory.teleport", "memory.keys", "memory.maze"},
    "multi_doors_keys": {"memory.width", "memory.rooms", "memory.teleport", "memory.maze"},
    "memory_maze": {"memory.width", "memory.keys", "memory.rooms", "memory.teleport"},
}


def check_resume(saved: dict, config: Config, path) -> None:
    """A rerun in an existing logdir must use the same config (steps may grow to continue longer).
    saved: read_saved(<logdir>/config.yaml)."""
    now = config.flat()
    saved = {_renamed(key): value for key, value in saved.items()}
    # Settings that do not change what the run computes may differ on resume.
    allowed = {"steps", "logdir", "device", "threads", "memory.workers", "offline.updates", "offline.plateau",
               "offline.eval_every", "offline.eval_batch", "offline.log_every",
               "offline.checkpoint_every"}
    if now.get("mode") == "offline" and saved.get("memory.env") == now.get("memory.env"):
        allowed |= UNUSED_BY_ENV.get(now.get("memory.env"), set())  # e.g. a size block's doors-keys rows
    if "size" in saved and saved["size"] != now.get("size"):  # e.g. begun on a GPU, rerun on a CPU
        raise ConfigError(
            f"logdir {path} holds a run of size {saved['size']!r} but this command gives size "
            f"{now.get('size')!r} (sizes follow the device unless named): rerun with --size "
            f"{saved['size']} and no size block in --configs to resume it, or use another --logdir")
    for key in sorted(set(saved) | set(now)):
        if key not in saved:  # a key added to the schema after the run started: its default holds
            continue
        if key in allowed or key.startswith("run.") or saved.get(key) == now.get(key):
            continue
        if isinstance(now.get(key), list) and list(saved.get(key) or []) == now.get(key):
            continue
        raise ConfigError(
            f"logdir {path} holds a run with {key}={saved.get(key)!r} but this command gives "
            f"{key}={now.get(key)!r}: use another --logdir or the same settings to resume")


# Config sections renamed since runs were saved: old prefix -> new (a saved run still resumes).
RENAMED = {"s4.": "s4wm.", "s5.": "s5wm."}


def _renamed(key: str) -> str:
    for old, new in RENAMED.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key
