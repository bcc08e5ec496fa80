"""Benchmarks, kept apart from tests/: `python -m bench.backbones --help` (speed and memory of the
backbones), `python -m bench.learning --help`."""
