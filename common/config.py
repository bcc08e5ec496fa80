"""configs.yaml -> one frozen, typed config.

`defaults` is the schema: every key that exists, its type (the type of its default value) and a
one-line comment. Named blocks are merged on top of it left to right (`--configs a b c`), then
`--key value` / `--section.key value` overrides from the command line. Anything a user can get wrong
(unknown block, unknown key, wrong type) raises ConfigError with ONE line naming the offender and the
closest valid choices; main.py turns it into exit status 2 without a traceback.
"""
from __future__ import annotations

import difflib
import io
import pathlib
import re

from ruamel.yaml import YAML

CONFIG_FILE = pathlib.Path(__file__).resolve().parent.parent / "configs.yaml"


# Keys whose value must be one of a fixed set of words (checked at merge time, one-line errors).
CHOICES = {
    "backbone": ["s4wm", "s5wm", "rssm", "tssm"],
    "mode": ["online", "offline"],
    "wm.latent": ["categorical", "gaussian"],
    "ac.actor_grad": ["reinforce", "straight_through"],
    "s4.init": ["lin", "inv"],
}


# Smallest valid value of numeric keys (checked at merge time, one-line errors).
MINIMUM = {
    "seed": 0, "steps": 0, "threads": 0, "env.envs": 1, "env.eval_envs": 1, "env.image_size": 8,
    "replay.capacity": 1, "replay.chunk": 1, "train.batch_size": 1, "train.global_batch": 0,
    "train.seq_len": 2, "train.train_ratio": 0.0, "train.prefill": 0, "wm.stoch": 1, "wm.classes": 2,
    "wm.d_model": 1, "wm.units": 1, "wm.cnn_depth": 1, "wm.reward_bins": 2, "wm.lr": 0.0,
    "s4.n_blocks": 1, "s4.d_state": 2, "s5.n_blocks": 1, "s5.d_state": 2, "rssm.tbtt_length": 1,
    "tssm.n_layers": 1, "tssm.n_heads": 1, "tssm.mem_len": 1, "ac.horizon": 1, "ac.start_stride": 1,
    "ac.units": 1, "run.eval_episodes": 1, "run.openloop_context": 1, "run.nan_patience": 1,
    "offline.updates": 0, "offline.window": 0, "offline.test_episodes": 1, "offline.query_observe": 0,
    "offline.eval_every": 1, "offline.eval_batch": 1, "offline.log_every": 1,
    "offline.checkpoint_every": 1, "offline.probe_episodes": 0, "offline.probe_updates": 1,
}


# Keys holding regular expressions (matched in full against observation keys, world_models/).
REGEX = ("wm.cnn_keys", "wm.mlp_keys")


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


def merge(blocks: dict, names: list[str], overrides: dict | None = None) -> Config:
    """defaults <- blocks[names[0]] <- ... <- overrides (flat dotted keys)."""
    defaults = _flatten(blocks["defaults"])
    flat = dict(defaults)
    for name in names:
        if name not in blocks or name == "defaults":
            choices = [b for b in blocks if b != "defaults"]
            raise ConfigError(f"unknown config block '{name}' (closest: {_closest(name, choices)})")
        for key, value in _flatten(blocks[name] or {}).items():
            if key not in defaults:
                raise ConfigError(f"block '{name}' sets unknown key '{key}' "
                                  f"(closest: {_closest(key, defaults)})")
            flat[key] = _coerce(key, value, defaults[key])
    for key, value in (overrides or {}).items():
        if key not in defaults:
            raise ConfigError(f"unknown config key '--{key}' (closest: "
                              f"{', '.join('--' + c for c in _closest(key, defaults).split(', '))})")
        flat[key] = _coerce(key, value, defaults[key])
    for key, choices in CHOICES.items():
        if key in flat and flat[key] not in choices:
            raise ConfigError(f"config key '{key}' has unknown value {flat.get(key)!r} "
                              f"(choices: {', '.join(choices)})")
    for key, low in MINIMUM.items():
        if key in flat and flat[key] < low:
            raise ConfigError(f"config key '{key}' must be >= {low}, got {flat[key]!r}")
    for key in REGEX:
        try:
            re.compile(flat.get(key, ""))
        except re.error as e:
            raise ConfigError(f"config key '{key}' has {flat[key]!r}, not a regular expression "
                              f"({e}); e.g. 'image', '.*' (all), '' (none)") from None
    if "ac.start_stride" in flat and flat["ac.start_stride"] > flat["train.seq_len"]:
        raise ConfigError(f"config key 'ac.start_stride' ({flat['ac.start_stride']}) must be <= "
                          f"train.seq_len ({flat['train.seq_len']}): no imagination start otherwise")
    device = flat.get("device", "auto")
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:")
                                                     and device[5:].isdigit())):
        raise ConfigError(f"config key 'device' has unknown value {device!r} "
                          f"(choices: auto, cpu, cuda, cuda:<index>)")
    return Config(flat)


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
        out[key.replace("-", "_")] = value
    return out


def check_resume(saved_text: str, config: Config, path) -> None:
    """A rerun in an existing logdir must use the same config (steps may grow to continue longer)."""
    saved = _flatten(YAML(typ="safe").load(saved_text) or {})
    now = config.flat()
    # Settings that do not change what the run computes may differ on resume.
    allowed = {"steps", "logdir", "device", "threads", "offline.updates", "offline.eval_every",
               "offline.eval_batch", "offline.log_every", "offline.checkpoint_every"}
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
