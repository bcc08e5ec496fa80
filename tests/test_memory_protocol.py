"""Issue 16: the memory benchmarks' training protocol and the synthetic memory-capacity stream.

The paper's comparison varies one thing: how far back a backbone's training loss can reach. Offline
rows are one parallel pass (offline.chunk 0); RSSM-TBTT cuts the gradient every rssm.tbtt_length
steps, TSSM-XL reaches n_layers x mem_len (+1 through z_{t-1}) steps, S4WM/S5WM the whole row.
"""
import json

import numpy as np
import pytest
import torch

from bench import memory_capacity as capacity
from common.config import load_blocks, merge
from world_models import build_world_model


def first_reached(backbone: str, blocks=("two_rooms", "memory_cpu")) -> tuple[int, int]:
    """(row length T, earliest frame t whose embedding gets gradient from the loss terms of the last
    step) on a whole row of the CPU block, in one pass as memory/train.py trains it."""
    config = merge(load_blocks(), [*blocks, backbone])
    assert config.offline.chunk == 0  # the protocol: the whole row in one backward pass
    T = config.memory.context + config.memory.query
    torch.manual_seed(0)
    wm = build_world_model(config, act_dim=3)
    rng = np.random.default_rng(0)
    S = config.env.image_size
    image = torch.as_tensor(rng.integers(0, 256, (1, T, S, S, 3), dtype=np.uint8))
    action = torch.nn.functional.one_hot(torch.as_tensor(rng.integers(0, 3, (1, T))), 3).float()
    is_first = torch.zeros(1, T, dtype=torch.bool)
    is_first[:, 0] = True
    embed = wm.encoder(image).detach().requires_grad_()  # (1, T, E)
    out, _, _ = wm.observe(embed, action, is_first, wm.initial_state(1))
    feat = wm.feat(out)[:, -1]  # (1, F): the last step's decoder, reward, continue and prior inputs
    last = wm.decoder(feat).square().sum() + wm.reward_head(feat).sum() + out["prior"][:, -1].sum()
    last.backward()
    reached = embed.grad[0].abs().sum(-1) > 0  # (T,)
    assert reached[-1], "the last frame must reach its own loss"
    return T, int(reached.nonzero().min())


@pytest.mark.parametrize("backbone", ["s4wm", "s5wm"])
def test_ssm_backbones_reach_the_first_frame_of_a_whole_row(backbone):
    T, first = first_reached(backbone)
    assert T == 200 and first == 0


def test_rssm_gradient_stops_at_its_tbtt_boundary():
    config = merge(load_blocks(), ["two_rooms", "memory_cpu", "rssm"])
    L = config.rssm.tbtt_length
    T, first = first_reached("rssm")
    assert T > L
    assert first == (T - 1) // L * L  # the start of the last TBTT chunk, nothing before it


def test_tssm_gradient_reaches_layers_times_window_plus_one():
    config = merge(load_blocks(), ["two_rooms", "memory_cpu", "tssm"])
    reach = config.tssm.n_layers * config.tssm.mem_len + 1  # windows stacked, then z_{t-1} -> g_t
    T, first = first_reached("tssm")
    assert T - 1 - reach > 0
    assert first == T - 1 - reach


# ---- the synthetic recall stream (bench/memory_capacity.py) -------------------------------------
@pytest.mark.parametrize("distractors", ["blank", "random"])
def test_recall_rows_layout(distractors):
    rows = capacity.recall_rows(np.random.default_rng(0), rows=64, gap=5, colours=4, size=8,
                                distractors=distractors)
    T = 7
    assert rows["image"].shape == (64, T, 8, 8, 3) and rows["image"].dtype == np.uint8
    cue_colour = capacity.PALETTE[rows["cue"]]  # (B, 3)
    np.testing.assert_array_equal(rows["image"][:, 0], np.broadcast_to(cue_colour[:, None, None],
                                                                       (64, 8, 8, 3)))
    np.testing.assert_array_equal(rows["image"][:, -1], capacity.query_frames(4, 8)[rows["cue"]])
    assert rows["is_first"][:, 0].all() and not rows["is_first"][:, 1:].any()
    np.testing.assert_array_equal(rows["action"][:, 0], 0)  # no action leads to the first frame
    assert (rows["action"][:, 1:-1, capacity.WAIT] == 1).all()
    assert (rows["action"][:, -1, capacity.QUERY] == 1).all()
    gap = rows["image"][:, 1:-1]  # (B, gap, 8, 8, 3)
    if distractors == "blank":
        assert (gap == capacity.GREY).all()
        return
    # distractors are solid frames of the palette, drawn independently of the cue
    assert (gap == gap[:, :, :1, :1]).all()
    gap = gap[:, :, 0, 0]  # (B, gap, 3)
    assert all(any((c == p).all() for p in capacity.PALETTE[:4]) for c in gap.reshape(-1, 3))
    same = (gap == cue_colour[:, None]).all(-1).mean()
    assert 0.1 < same < 0.4  # ~1/K: not tied to the cue


def test_query_frames_are_told_apart_by_nearest():
    frames = capacity.query_frames(8, 8)
    unit = torch.as_tensor(frames).float() / 255 - 0.5
    noisy = unit + 0.05 * torch.randn(unit.shape, generator=torch.Generator().manual_seed(0))
    assert (capacity.nearest(noisy, unit) == torch.arange(8)).all()


def test_scoring_is_at_chance_for_a_model_without_memory_and_perfect_with_one(monkeypatch):
    colours, gap = 4, 3
    rows = capacity.recall_rows(np.random.default_rng(1), rows=400, gap=gap, colours=colours, size=8)
    config = merge(load_blocks(), ["capacity", "s4wm"])
    wm = build_world_model(config, act_dim=2)
    unit = torch.as_tensor(capacity.query_frames(colours, 8)).float() / 255 - 0.5
    cues = torch.as_tensor(rows["cue"])
    calls = []

    def remembering(model, state):  # the right answer: inference, then imagination, per batch
        batch = len(calls) // 2
        calls.append(1)
        return unit[cues[batch * 64: batch * 64 + state["h"].shape[0]]]

    monkeypatch.setattr(capacity, "predict_query", remembering)
    got = capacity.score(wm, rows, colours, batch=64, device="cpu")
    assert got == {"acc_inference": 1.0, "acc_imagination": 1.0}

    fixed = torch.Generator().manual_seed(0)
    monkeypatch.setattr(capacity, "predict_query",
                        lambda model, state: unit[torch.randint(colours, (state["h"].shape[0],),
                                                                generator=fixed)])
    got = capacity.score(wm, rows, colours, batch=64, device="cpu")
    for acc in got.values():
        assert abs(acc - 1 / colours) < 0.07  # 400 rows: one standard error ~0.022


def test_solved_updates_read_as_a_range_or_one_count():
    assert capacity.solved_when([700, 500, 600]) == " at 500-700 upd"
    assert capacity.solved_when([700, 700]) == " at 700 upd"
    assert capacity.solved_when([]) == ""


def test_capacity_cells_resume_and_aggregate(tmp_path):
    """Two tiny cells; the second command re-reads the finished cell and adds a seed."""
    common = ["--backbones", "s4wm", "--gaps", "2", "--updates", "4", "--eval-every", "2",
              "--eval-rows", "8", "--out", str(tmp_path / "out"), "--scratch", str(tmp_path / "s"),
              "--wm.d_model", "16", "--wm.units", "16"]
    capacity.main([*common, "--seeds", "0"])
    cell = tmp_path / "out" / "cells" / "blank_s4wm_gap2_seed0.json"
    first = cell.read_text()
    assert json.loads(first)["budget"] == 4 and len(json.loads(first)["history"]) == 2
    row = [l for l in (tmp_path / "out" / "capacity_blank.md").read_text().splitlines()
           if l.startswith("| s4wm")][0]
    assert "(n = 1)" in row and "±" not in row  # one seed: no standard error shown as ± 0
    capacity.main([*common, "--seeds", "0,1"])
    assert cell.read_text() == first  # finished within its budget: not retrained
    table = (tmp_path / "out" / "capacity_blank.md").read_text()
    assert "/2" in table and (tmp_path / "out" / "capacity_blank.png").stat().st_size > 1000
    # a larger budget goes on from the cell's checkpoint (4 updates done: 2 more, one evaluation)
    capacity.main([*common[:5], "6", *common[6:], "--seeds", "0"])
    more = json.loads(cell.read_text())
    assert more["budget"] == 6 and [h["updates"] for h in more["history"]] == [2, 4, 6]


# ---- training to a plateau, the perception gate (memory/train.py, memory/report.py) --------------
def test_plateau_rule_on_known_windows():
    from memory.train import plateaued
    assert not plateaued([10.0, 5.0], 0.0)  # 0: never
    assert not plateaued([10.0], 0.5)  # one window: nothing to compare
    assert not plateaued([10.0, 8.9], 0.1)  # improved by 11%
    assert plateaued([10.0, 9.1], 0.1)  # by 9%
    assert plateaued([10.0, 10.5], 0.1)  # got worse


def test_offline_run_stops_at_a_plateau_a_rerun_adds_nothing_and_plateau_0_goes_on(tmp_path):
    import json
    import subprocess
    import sys
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "main.py", "--configs", "multi_doors_keys", "debug", "s5wm",
           "--memory.out", str(tmp_path / "data"), "--logdir", str(tmp_path / "run"),
           "--memory.context", "8", "--memory.query", "8", "--memory.episodes", "4",
           "--offline.test_episodes", "1", "--offline.eval_every", "2", "--offline.updates", "40",
           "--offline.plateau", "0.999"]  # any change short of 99.9%: stops at the 2nd evaluation
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert result["updates"] == 4 and result["plateau"] is True
    assert len(result["loss_windows"]) == 2 and result["train_seconds"] > 0
    res = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "had flattened at update 4" in res.stdout
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["updates"] == 4
    # without the plateau stop the same run goes on from its checkpoint to the whole budget
    short = [*cmd[:-4], "--offline.updates", "6", "--offline.plateau", "0"]
    res = subprocess.run(short, cwd=root, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "resuming" in res.stdout, res.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["updates"] == 6


def test_perception_gate_and_standard_errors_in_the_report_table():
    from memory import report
    results = {"s4wm": [{"seed": "0", "updates": 5, "summary": {"cue_acc_start": 0.97,
                                                               "reward_acc_inference": 0.6}},
                        {"seed": "1", "updates": 5, "summary": {"cue_acc_start": 0.90,
                                                               "reward_acc_inference": 0.8}},
                        {"seed": "2", "updates": 5, "summary": {"cue_acc_start": 0.40,
                                                               "cue_acc_start_posterior": 0.96,
                                                               "reward_acc_inference": 0.7}},
                        {"seed": "3", "updates": 5, "summary": {"cue_acc_start": 0.99,
                                                               "cue_acc_start_posterior": 0.5,
                                                               "reward_acc_inference": 0.7}}]}
    gate = "\n".join(report.perception_gate(results))
    # the posterior probe decides where it was measured, the [h, z] probe before it existed
    assert "| s4wm | 0 | not measured | 97.0% | yes |" in gate
    assert "| s4wm | 1 | not measured | 90.0% | **no**" in gate
    assert "| s4wm | 2 | 96.0% | 40.0% | yes |" in gate
    assert "| s4wm | 3 | 50.0% | 99.0% | **no**" in gate
    two = {"s4wm": results["s4wm"][:2]}
    row = [line for line in report.table(two) if line.startswith("| s4wm")][0]
    assert "70.0% ± 10.0%" in row  # mean 0.7, standard error 0.1414 / sqrt(2) = 0.1
    assert report.perception_gate({"rssm": [{"summary": {"gen_mse": 0.1}}]}) == []


def test_more_test_episodes_than_the_dataset_stops_before_collecting(tmp_path):
    """Checked when training starts (memory.collect alone may make fewer episodes than that)."""
    import subprocess
    import sys
    root = __import__("pathlib").Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, "main.py", "--configs", "two_rooms", "debug", "s4wm",
                          "--offline.test_episodes", "1000", "--logdir", str(tmp_path / "run"),
                          "--memory.out", str(tmp_path / "data")],
                         cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and not (tmp_path / "data").exists()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "'offline.test_episodes' (1000) must be < memory.episodes" in lines[0]


def test_report_cost_table_shows_how_flat_the_loss_was_and_early_stops_only():
    from memory import report
    assert report.loss_change([2.0, 1.9]) == "-5.0%" and report.loss_change([2.0]) == "-"
    assert report.loss_change([2.24, 2.26]) == "+0.9%"
    results = {"tssm": [  # flat at the end of its whole budget: not an early stop
        {"seed": "0", "updates": 8000, "budget": 8000, "plateau": True, "loss_windows": [2.4, 2.39]},
        {"seed": "1", "updates": 5000, "budget": 8000, "plateau": True, "loss_windows": [2.36, 2.35]},
        {"seed": "2", "updates": 8000, "budget": 8000, "plateau": False, "train_seconds": 60.0}]}
    rows = [line for line in report.cost(results) if line.startswith("| tssm")]
    assert rows[0] == "| tssm seed 0 | 8000 | not recorded | -0.4% | no |"
    assert rows[1].endswith("| -0.4% | yes |")
    assert rows[2] == "| tssm seed 2 | 8000 | 1.0 min | - | no |"
