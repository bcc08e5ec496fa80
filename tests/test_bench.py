"""Smoke test of the backbone benchmark (bench/backbones.py) at toy sizes: every case kind runs for
every backbone and the table, JSON and plot are written. Timings themselves are not checked."""
import json

import torch

from bench import backbones, timing
from world_models import BACKBONES

TOY = ["--size", "debug", "--batch", "2", "--imag-batches", "2", "--horizons", "3",
       "--agent-length", "8", "--warmup", "0", "--repeats", "1", "--threads", "1"]


def test_every_case_runs_and_the_report_is_written(tmp_path):
    # T=12 > the debug mem_len 8: TSSM trains in two chunks carrying its state.
    results = backbones.main(TOY + ["--lengths", "12", "--profile-length", "0",
                                    "--in-process", "--out", str(tmp_path)])
    assert not [r for r in results if "error" in r]
    kinds = {(r["kind"], r["backbone"]) for r in results}
    for b in BACKBONES:
        assert {("train", b), ("seq", b), ("imagine", b), ("agent", b)} <= kinds
    assert ("seq", "tssm1") in kinds
    assert len([r for r in results if r["kind"] == "imagine"]) == 2 * len(BACKBONES)  # +- decode
    # the agent update in both action modes, each with its own actor gradient, named in the table
    modes = {(r["backbone"], r["action_mode"], r["actor_grad"]) for r in results
             if r["kind"] == "agent"}
    assert modes == {(b, m, g) for b in BACKBONES for m, g in
                     (("onehot", "reinforce"), ("continuous", "straight_through"))}
    assert all(r["median_s"] > 0 and r["mem_mb"] is not None for r in results)

    table = (tmp_path / "bench.md").read_text()
    assert "| T | backbone | world model it/s" in table and "Machine:" in table
    assert all(f"| 12 | {b} |" in table for b in BACKBONES)
    assert all(f"| {label} | {b} | 2 x 8 |" in table for b in BACKBONES
               for label in ("one-hot, REINFORCE", "continuous, dynamics backprop"))
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["machine"]["torch"] and len(saved["results"]) == len(results)
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_a_case_runs_in_its_own_process_and_is_profiled(tmp_path):
    results = backbones.main(TOY + ["--backbones", "rssm", "--kinds", "seq,agent", "--lengths",
                                    "8", "--profile-length", "8", "--action-modes", "continuous",
                                    "--out", str(tmp_path)])
    [record, update] = results
    assert "error" not in record, record
    assert record["kind"] == "seq" and record["length"] == 8 and record["peak_mb"] > 0
    assert record["profile"] and (tmp_path / "profile_seq_rssm.txt").exists()
    # the agent update is split into its record_function phases, each of them seen
    assert update["kind"] == "agent" and set(update["phases"]) == set(timing.PHASES)
    assert update["action_mode"] == "continuous" and update["actor_grad"] == "straight_through"
    assert all(t > 0 for t in update["phases"].values())
    table = (tmp_path / "bench.md").read_text()
    assert "### Top ops by self time" in table and "### One Agent.update by phase" in table
    assert "| continuous, dynamics backprop | rssm |" in table


def test_learning_benchmark_plots_existing_runs(tmp_path):
    """bench.learning --no-run: reads each run's metrics.jsonl, measures the random policy and
    writes the plot, the table (one row per run) and the curves."""
    import json
    from bench import learning
    run = tmp_path / "rssm_seed0"
    run.mkdir()
    rows = [{"step": 1000, "eval/return": 120.0}, {"step": 1500, "episode/return": 3.0},
            {"step": 2000, "eval/return": 480.5}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    learning.main(["--no-run", "--backbones", "rssm", "--out", str(tmp_path), "--random_episodes", "1"])
    table = (tmp_path / "learning.md").read_text()
    assert "| rssm | 0 | 2000 | 480.5 | 480.5 |" in table and "Random policy return" in table
    saved = json.loads((tmp_path / "learning.json").read_text())
    assert saved["curves"]["rssm (seed 0)"] == [[1000, 2000], [120.0, 480.5]]
    assert 0 < saved["random_return"] < 1000 and (tmp_path / "learning.png").stat().st_size > 0


def fake_run(logdir, rows):
    logdir.mkdir(parents=True)
    (logdir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_control_study_summarises_seeds_and_skips_finished_runs(tmp_path, capsys):
    """A study whose runs are all finished (last logged step >= --steps) runs nothing, and its
    table holds the mean +- standard error over seeds, the random policy and the anchor
    interpolated at the last evaluation (hand-computed)."""
    from bench import learning
    task = "dmc_proprio_cartpole_balance"
    for seed, final in (("0", 100.0), ("1", 200.0), ("2", 300.0)):
        fake_run(tmp_path / "runs" / task / f"rssm_seed{seed}",
                 [{"step": 1000, "eval/return": 50.0}, {"step": 2000, "eval/return": final}])
    anchor = tmp_path / "anchor.json"
    anchor.write_text(json.dumps({task: {"source": "paper", "steps": [0, 4000],
                                         "return": [0.0, 1000.0]}}))
    learning.main(["--study", "proprio", "--tasks", task, "--backbones", "rssm", "--steps", "2000",
                   "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
                   "--random_episodes", "1", "--anchor", str(anchor)])
    assert "3 runs, 3 finished, 0 to run" in capsys.readouterr().out
    table = (tmp_path / "res" / "results.md").read_text()
    # mean 200, s.e. = std([100, 200, 300], ddof=1) / sqrt(3) = 100 / sqrt(3) = 57.7
    assert f"| {task} | rssm | 3 | 2000 | 200 +- 58 |" in table, table
    assert "| 500 (paper) |" in table  # the anchor's 0 -> 1000 over 4000 steps, at step 2000
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert saved["summary"][task]["rssm"]["runs"]["1"]["return"] == [50.0, 200.0]
    assert 0 < saved["random"][task]["return"] < 1000
    assert (tmp_path / "res" / f"{task}.png").stat().st_size > 0


def test_memory_study_plots_success_against_steps_to_remember(tmp_path):
    from bench import learning
    for task, rates in (("bsuite_memory_len_5", (0.6, 0.8)), ("bsuite_memory_len_10", (0.5, 0.5))):
        for seed, rate in zip("01", rates):
            fake_run(tmp_path / "runs" / task / f"s5wm_seed{seed}",
                     [{"step": 500, "eval/return": 2 * rate - 1, "eval/success": rate}])
    learning.main(["--study", "bsuite_memory", "--no-run", "--tasks",
                   "bsuite_memory_len_5,bsuite_memory_len_10", "--backbones", "s5wm",
                   "--seeds", "0,1", "--out", str(tmp_path / "runs"),
                   "--results", str(tmp_path / "res"), "--random_episodes", "20"])
    table = (tmp_path / "res" / "results.md").read_text()
    # success mean 0.7, s.e. = std([0.6, 0.8], ddof=1) / sqrt(2) = 0.1
    assert "| bsuite_memory_len_5 | 5 | s5wm | 2 | 500 | 0.7 +- 0.1 | 0.4 +- 0.2 |" in table, table
    assert "| bsuite_memory_len_10 | 10 | s5wm | 2 | 500 | 0.5 +- 0 |" in table, table
    assert "Chance: success 0.5" in table
    saved = json.loads((tmp_path / "res" / "results.json").read_text())
    assert 0.2 < saved["random"]["bsuite_memory_len_5"]["success"] < 0.8  # a guess
    assert all((tmp_path / "res" / f).stat().st_size > 0 for f in ("success.png", "curves.png"))


def test_study_errors_are_one_line(capsys):
    import pytest
    from bench import learning
    with pytest.raises(SystemExit) as e:
        learning.main(["--study", "proprioo"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    choices = "proprio, minigrid_memory, bsuite_memory"
    assert err == f"error: unknown study 'proprioo' (choices: {choices})"


def test_cnn_benchmark_counts_the_convolutions_and_writes_its_report(tmp_path):
    """bench.cnn: the multiply-adds FlopCounterMode gives for the encoder's forward equal the
    convolutions' hand count (debug size: 64x64, depth 4, four stride-2 4x4 convs), the backward
    adds the weight and input gradients (none for the uint8 input), and the report is written."""
    from bench import cnn
    from bench.backbone_cases import config_for
    cfg = config_for("debug", "rssm", {})
    fns = cnn.passes(cfg, batch=1, length=2, device=torch.device("cpu"))
    # out H*W x C_out x C_in x 4*4 per conv: 32x32x4x3, 16x16x8x4, 8x8x16x8, 4x4x32x16
    per_frame = 16 * (32 * 32 * 4 * 3 + 16 * 16 * 8 * 4 + 8 * 8 * 16 * 8 + 4 * 4 * 32 * 16)
    assert cnn.macs(fns["encoder forward"]) == 2 * per_frame
    first = 16 * 32 * 32 * 4 * 3  # the first conv has no input gradient to compute
    assert cnn.macs(fns["encoder forward+backward"]) == 2 * (3 * per_frame - first)
    res = cnn.main(["--size", "debug", "--batch", "1", "--length", "2", "--repeats", "1",
                    "--threads", "1", "--gemm", "64", "--ghz", "2.0", "--out", str(tmp_path)])
    assert [r["pass"] for r in res["passes"]] == list(fns)
    assert res["theory_gmacs_per_s"] == 32.0 and all(r["gmacs_per_s"] > 0 for r in res["passes"])
    table = (tmp_path / "cnn.md").read_text()
    assert "| encoder forward+backward |" in table and "of theoretical" in table
