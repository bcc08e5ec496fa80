"""Offline datasets of the paper's memory benchmarks (Sec. 3): scripted collection policies
(policies.py: rooms; grid_policies.py: Distracting Memory, Multi Doors Keys) and the dataset
command `python -m memory.collect --configs <block>` (collect.py, file format in its docstring)."""
