"""Smoke test of the backbone benchmark (bench/backbones.py) at toy sizes: every case kind runs for
every backbone and the table, JSON and plot are written. Timings themselves are not checked."""
import json

from bench import backbones
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
    assert all(r["median_s"] > 0 and r["mem_mb"] is not None for r in results)

    table = (tmp_path / "bench.md").read_text()
    assert "| T | backbone | world model it/s" in table and "Machine:" in table
    assert all(f"| 12 | {b} |" in table for b in BACKBONES)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["machine"]["torch"] and len(saved["results"]) == len(results)
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"


def test_a_case_runs_in_its_own_process_and_is_profiled(tmp_path):
    results = backbones.main(TOY + ["--backbones", "rssm", "--kinds", "seq,agent", "--lengths",
                                    "8", "--profile-length", "8", "--out", str(tmp_path)])
    [record, update] = results
    assert "error" not in record, record
    assert record["kind"] == "seq" and record["length"] == 8 and record["peak_mb"] > 0
    assert record["profile"] and (tmp_path / "profile_seq_rssm.txt").exists()
    # the agent update is split into its record_function phases, each of them seen
    assert update["kind"] == "agent" and set(update["phases"]) == set(backbones.PHASES)
    assert all(t > 0 for t in update["phases"].values())
    table = (tmp_path / "bench.md").read_text()
    assert "### Top ops by self time" in table and "### One Agent.update by phase" in table


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
