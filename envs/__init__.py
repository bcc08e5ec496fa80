"""Environments with one interface: dict observations {image uint8 (S, S, 3), is_first, is_last,
is_terminal}, float rewards, OneHot or Box(-1, 1) actions. Tasks are '<family>_<name>'."""
from envs.make import env_seed, make_env, make_vector_env
from envs.registry import ENV_FAMILIES, FAMILIES, parse_task, task_choices
from envs.spaces import OneHot

__all__ = ["ENV_FAMILIES", "FAMILIES", "OneHot", "env_seed", "make_env", "make_vector_env", "parse_task", "task_choices"]
