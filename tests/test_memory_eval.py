"""Issue 6: offline world-model training on memory datasets, the metrics, the report."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.config import load_blocks, merge
from memory import evaluate as evaluation
from memory import metrics, report
from memory.train import draw_rows
from world_models import BACKBONES, build_world_model

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent


# ---- metrics against hand-computed values -------------------------------------------------------
def test_mse_psnr_on_known_images():
    truth = np.zeros((2, 8, 8, 3))
    pred = np.full((2, 8, 8, 3), 0.1)
    np.testing.assert_allclose(metrics.mse(pred, truth), [0.01, 0.01])
    np.testing.assert_allclose(metrics.mse_sum(pred, truth), [0.01 * 192] * 2)
    np.testing.assert_allclose(metrics.psnr(pred, truth), [20.0, 20.0])
    assert metrics.psnr(truth, truth)[0] == 100.0  # identical: capped, not inf
    # uint8 images are read on [0, 1]: a difference of 51 levels is 0.2
    a, b = np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 51, np.uint8)
    np.testing.assert_allclose(metrics.mse(a, b), 0.04)


def test_frame_guesses_against_hand_computed_errors():
    """evaluate_frames' gen_mse_frozen (the last observed frame kept through the query), gen_mse_mean
    (the mean context frame of all test episodes) and gen_mse_episode (each episode's own mean
    context frame), in all and per imagined step, over episodes split into batches (the episode
    guess must follow its own episode), with one observed query frame."""
    rng = np.random.default_rng(0)
    T, context, A = 10, 6, 3

    def episode():
        return {"image": rng.integers(0, 256, (T, 16, 16, 3), dtype=np.uint8),
                "action": np.eye(A, dtype=np.float32)[rng.integers(A, size=T)], "reward": np.zeros(T, np.float32),
                "is_first": np.arange(T) == 0, "is_last": np.arange(T) == T - 1, "is_terminal": np.zeros(T, bool),
                "phase": (np.arange(T) >= context).astype(np.uint8)}
    episodes = [episode() for _ in range(4)]  # 4 episodes (batches of 3 and 1), 3 imagined steps: a mean over
    # the wrong axis has another length
    config = merge(load_blocks(), ["debug", "rssm"], {"env.image_size": 16})
    torch.manual_seed(0)
    wm = build_world_model(config, A).eval()
    summary, curves, _ = evaluation.evaluate_frames(wm, episodes, query_observe=1, batch=3, chunk=16,
                                                    device=wm.device, revisit=False, frame_guesses=True)
    images = np.stack([e["image"] for e in episodes]).astype(np.float64) / 255  # (4, T, 16, 16, 3)
    mean = images[:, :context].mean((0, 1))
    seen = context + 1
    assert summary["gen_mse_mean"] == pytest.approx(((images[:, seen:] - mean) ** 2).mean())
    assert summary["gen_mse_frozen"] == pytest.approx(((images[:, seen:] - images[:, seen - 1:seen]) ** 2).mean())
    # per imagined step: the mean over episodes and pixels of each query frame
    assert curves["mse_mean"] == pytest.approx(((images[:, seen:] - mean) ** 2).mean((0, 2, 3, 4)))
    assert curves["mse_frozen"] == pytest.approx(((images[:, seen:] - images[:, seen - 1:seen]) ** 2).mean((0, 2, 3, 4)))
    own = images[:, :context].mean(1, keepdims=True)  # (4, 1, 16, 16, 3): each episode's own mean context frame
    assert summary["gen_mse_episode"] == pytest.approx(((images[:, seen:] - own) ** 2).mean())
    assert curves["mse_episode"] == pytest.approx(((images[:, seen:] - own) ** 2).mean((0, 2, 3, 4)))
    summary, curves, _ = evaluation.evaluate_frames(wm, episodes, query_observe=1, batch=2, chunk=16,
                                               device=wm.device, revisit=False)
    assert not {"gen_mse_frozen", "gen_mse_mean", "gen_mse_episode"} & set(summary)
    assert not {"mse_frozen", "mse_mean", "mse_episode"} & set(curves)


def test_report_draws_the_guesses_once_beside_each_backbones_mean_curve():
    """curve_lines: a backbone's line is the mean of its seeds' curves; the guess curves come from
    whichever result holds them (cells evaluated before they existed hold none) and only on the
    metric they belong to."""
    def result(mse, guesses=True):
        curves = {"mse": mse, "ssim": [0.5, 0.5]}
        guess = {"mse_mean": [0.3, 0.3], "mse_episode": [0.2, 0.25], "mse_frozen": [0.1, 0.4]}
        return {"curves": {**curves, **guess} if guesses else curves}
    # only S4WM's second seed holds the guesses: they must be found there, not in each backbone's first seed
    results = {"RSSM-TBTT": [result([0.5, 0.5], guesses=False)], "S4WM": [result([0.1, 0.2], guesses=False),
                                                                         result([0.3, 0.4])]}
    lines = report.curve_lines(results, "mse")
    assert [(n, style) for n, _, style in lines] == [
        ("RSSM-TBTT", "-"), ("S4WM", "-"), ("guess: mean frame", "--"), ("guess: episode's mean frame", "-."),
        ("guess: last frame kept", ":")]
    assert lines[1][1] == pytest.approx([0.2, 0.3]) and lines[2][1] == [0.3, 0.3]
    assert lines[3][1] == [0.2, 0.25] and lines[4][1] == [0.1, 0.4]
    assert [n for n, _, _ in report.curve_lines(results, "ssim")] == ["RSSM-TBTT", "S4WM"]
    none = {"S4WM": [result([0.1, 0.2], guesses=False)]}
    assert [n for n, _, _ in report.curve_lines(none, "mse")] == ["S4WM"]
    assert report.curve_lines({"S4WM": []}, "mse") == []


def test_ssim_on_known_images():
    rng = np.random.default_rng(0)
    x = rng.random((16, 16, 3))
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    # constant images a, b: variances and covariance vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.6, 0.01 ** 2
    got = metrics.ssim(np.full((16, 16, 3), a), np.full((16, 16, 3), b))
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))
    # an inverted image is structurally anti-correlated: SSIM well below that of a slight blur
    noisy = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1)
    assert metrics.ssim(1 - x, x) < 0 < metrics.ssim(noisy, x) < 1
    assert metrics.ssim(np.stack([x, noisy]), np.stack([x, x])).shape == (2,)


def test_ssim_fast_path_equals_the_2d_float64_definition():
    """metrics.ssim (two 1-D passes) == the textbook 2-D Gaussian window."""
    import torch.nn.functional as F
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-60, 60, x.shape), 0, 255).astype(np.uint8)
    a, b = (torch.from_numpy(v / 255.0).permute(0, 3, 1, 2).reshape(-1, 1, 32, 32) for v in (x, y))
    g = torch.exp(-(torch.arange(11, dtype=torch.float64) - 5) ** 2 / (2 * 1.5 ** 2))
    w = torch.outer(g, g)[None, None] / g.sum() ** 2
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    var_a, var_b = F.conv2d(a * a, w) - mu_a ** 2, F.conv2d(b * b, w) - mu_b ** 2
    cov = F.conv2d(a * b, w) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + 1e-4) * (2 * cov + 9e-4)) / ((mu_a ** 2 + mu_b ** 2 + 1e-4) * (var_a + var_b + 9e-4))
    expected = s.mean((-3, -2, -1)).reshape(5, 3).mean(-1).numpy()
    np.testing.assert_allclose(metrics.ssim(x, y), expected, rtol=1e-10)


def test_accuracy_and_decision_step():
    reward_step = np.array([0, 0, 0, 1, 0], bool)
    reward = np.array([0, 0, 0, 1, 0], np.float32)
    assert metrics.decision_step(reward_step) == 3
    assert metrics.reward_correct(np.array([1, 1, 1, 0.9, 1]), reward, reward_step)  # right only there
    assert not metrics.reward_correct(np.array([1, 1, 1, 0.1, 1.0]), reward, reward_step)
    assert metrics.accuracy([True, False, True, True]) == 0.75
    with pytest.raises(ValueError, match="decision step"):
        metrics.decision_step(np.zeros(4, bool))


def test_revisit_mask():
    pose = np.array([[0, 0, 0], [1, 0, 0], [0.1, 0, 0.1], [5, 5, 0], [1, 0, np.pi]], np.float32)
    phase = np.array([0, 0, 1, 1, 1])
    # frame 2: near pose 0 and similar heading; 3: far away; 4: at pose 1 but facing the other way
    np.testing.assert_array_equal(metrics.revisit_mask(pose, phase), [0, 0, 1, 0, 0])


def test_rows_start_at_episode_starts():
    def episode(n, tag):
        return {"image": np.full((n, 4, 4, 3), tag, np.uint8), "action": np.zeros((n, 2), np.float32),
                "reward": np.zeros(n, np.float32), "is_first": np.arange(n) == 0,
                "is_last": np.arange(n) == n - 1, "is_terminal": np.zeros(n, bool)}
    episodes = [episode(5, 1), episode(3, 2)]
    rows = draw_rows(episodes, np.random.default_rng(0), 6, 7)
    assert rows["image"].shape == (6, 7, 4, 4, 3)
    assert rows["is_first"][:, 0].all()
    for b in range(6):  # every new tag starts with is_first: rows are whole episodes end to end
        tags = rows["image"][b, :, 0, 0, 0]
        starts = np.flatnonzero(rows["is_first"][b])
        lengths = np.diff(np.append(starts, 7))
        for s, n in zip(starts, lengths):
            assert len(set(tags[s:s + n])) == 1 and n <= (5 if tags[s] == 1 else 3)


# ---- reward scoring uses the recorded decision step -------------------------------------------
def _dm_episode(T=12, context=5, decision=9, rewarded=True, seed=0):
    rng = np.random.default_rng(seed)
    reward = np.zeros(T, np.float32)
    reward[decision] = float(rewarded)
    return {"image": rng.integers(0, 255, (T, 16, 16, 3), dtype=np.uint8),
            "action": np.eye(3, dtype=np.float32)[rng.integers(3, size=T)],
            "reward": reward, "is_first": np.arange(T) == 0, "is_last": np.arange(T) == T - 1,
            "is_terminal": np.arange(T) == T - 1, "phase": (np.arange(T) >= context).astype(np.uint8),
            "reward_step": np.arange(T) == decision}


@pytest.mark.parametrize("planted_right", [True, False])
def test_reward_scoring_reads_the_recorded_decision_step(planted_right):
    """A planted reward prediction that is right ONLY at the decision step scores 100%; one that is
    right everywhere EXCEPT there scores 0%, in inference and in imagination."""
    config = merge(load_blocks(), ["debug", "rssm"], {"env.image_size": 16})
    wm = build_world_model(config, 3)
    episodes = [_dm_episode(decision=d, rewarded=r, seed=i)
                for i, (d, r) in enumerate([(9, True), (7, False), (11, True)])]
    current = {}

    def planted(feat):  # feat (1, n, F) of frames [T - n, T): the truth flipped off the decision step
        e = current["episode"]
        n, T = feat.shape[1], len(e["reward"])
        truth = e["reward"][T - n:]
        off = ~e["reward_step"][T - n:]
        pred = np.where(off, 1 - truth, truth) if planted_right else np.where(off, truth, 1 - truth)
        return torch.as_tensor(pred, dtype=torch.float32)[None]

    wm.reward = planted
    outcomes = []
    for e in episodes:
        current["episode"] = e
        summary, _, _ = evaluation.evaluate_rewards(wm, [e], chunk=4, device="cpu")
        outcomes.append(summary)
    expect = 1.0 if planted_right else 0.0
    assert all(s["reward_acc_inference"] == expect for s in outcomes)
    assert all(s["reward_acc_imagination"] == expect for s in outcomes)


# ---- end to end: main.py --configs <memory block> <backbone> --------------------------------------
def run_main(tmp_path, args, name="run"):
    cmd = [sys.executable, "main.py", *args, "--logdir", str(tmp_path / name)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


MDK = ["--memory.context", "12", "--memory.query", "12", "--memory.episodes", "5",
       "--offline.test_episodes", "2", "--offline.eval_every", "2", "--offline.checkpoint_every", "2"]


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_offline_multi_doors_keys_end_to_end(tmp_path, backbone):
    args = ["--configs", "multi_doors_keys", "debug", backbone, "--memory.out",
            str(tmp_path / "data"), "--offline.updates", "2", *MDK]
    res = run_main(tmp_path, args)
    assert res.returncode == 0, res.stderr[-2000:]
    run = tmp_path / "run"
    result = json.loads((run / "eval" / "metrics.json").read_text())
    assert result["updates"] == 2 and result["backbone"] == backbone
    s = result["summary"]
    assert {"recon_mse", "gen_mse", "gen_mse_sum", "gen_psnr", "gen_ssim"} <= set(s)
    assert 0 <= s["gen_mse"] <= 1 and s["gen_mse_sum"] == pytest.approx(s["gen_mse"] * 64 * 64 * 3)
    assert len(result["curves"]["mse"]) == 12  # one value per imagined query frame
    read = [f"{k}_{part}" for k in ("held_acc", "door_acc") for part in ("recon", "imagination", "frozen")]
    assert all(0 <= s[k] <= 1 or np.isnan(s[k]) for k in read) and len(result["curves"]["held_acc"]) == 12
    videos = list((run / "videos").glob("eval_imagination_*.mp4"))
    assert videos
    import imageio.v2 as imageio
    frames = imageio.mimread(videos[0], memtest=False)
    assert len(frames) == 24 and frames[0].shape[:2] == (3 * 64, 64)  # truth / model / error
    assert (run / "checkpoint.pt").exists() and (run / "metrics.jsonl").exists()


def test_offline_resume_and_teleport_recall(tmp_path):
    args = ["--configs", "two_rooms_teleport", "debug", "s4wm", "--memory.out", str(tmp_path / "data"),
            "--memory.context", "16", "--memory.query", "16", "--memory.episodes", "4",
            "--offline.test_episodes", "1", "--offline.eval_every", "2", "--offline.checkpoint_every", "2"]
    res = run_main(tmp_path, [*args, "--offline.updates", "2"])
    assert res.returncode == 0, res.stderr[-2000:]
    first = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert "gen_mse_revisit" in first["summary"] and first["query_observe"] == 1
    assert len(first["curves"]["mse"]) == 15  # the landing frame is observed, 15 imagined
    res = run_main(tmp_path, [*args, "--offline.updates", "4"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming" in res.stdout and "at update 2" in res.stdout
    assert json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["updates"] == 4
    assert (tmp_path / "run" / "eval" / "metrics_00000002.json").exists()


def test_report_writes_table_plots_and_video(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "memory.report", "--configs", "multi_doors_keys", "debug",
           "--backbones", "rssm,s4wm", "--out", str(out), "--memory.out", str(tmp_path / "data"),
           "--offline.updates", "1", *MDK]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = (out / "report.md").read_text()
    assert "| rssm |" in text and "| s4wm |" in text
    assert "| rssm seed 0 | 1 |" in text  # the cost table: updates and training time per cell
    assert "reward_acc" not in text and "gen_mse by updates" in text  # one evaluation per cell
    assert "| held keys, context | doors, context |" in text  # Multi Doors Keys' perception gate
    assert "| rssm_seed0 | 1 | 5 | last 1: gap |" in text  # memory.shortcontext ran on each cell
    for name in ("loss.png", "mse.png", "psnr.png", "ssim.png", "held_acc.png", "imagination.mp4",
                 "imagination.png"):
        assert (out / name).stat().st_size > 0
    import imageio.v2 as imageio
    frame = imageio.mimread(out / "imagination.mp4", memtest=False)[0]
    assert frame.shape[:2] == (2 * 64, 3 * 64)  # truth + 2 backbones; predictions over errors
    # the committed result files alone (config.yaml, metrics.jsonl, eval/metrics*.json) make it again
    kept = ("config.yaml", "metrics.jsonl")
    for path in sorted(out.glob("*_seed0/**/*"), reverse=True):
        if path.is_file() and path.name not in kept and not path.name.startswith("metrics"):
            path.unlink()
    last = out / "rssm_seed0" / "eval" / "metrics.json"  # planted: tells the last evaluation apart
    planted = json.loads(last.read_text())
    planted["summary"]["recon_mse"] = 123.0
    last.write_text(json.dumps(planted))
    (out / "report.md").unlink()
    again = [sys.executable, "-m", "memory.report", "--backbones", "rssm,s4wm", "--out", str(out),
             "--report-only"]
    res = subprocess.run(again, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = (out / "report.md").read_text()
    assert "running:" not in res.stdout and "wall time (this call)" not in text  # nothing trained
    assert "--report-only" in text and "123.0000" in text
    assert "imagination.png and imagination.mp4, as drawn then" in text  # the still drawn before is kept
    recorded = json.loads((out / "report.json").read_text())
    assert recorded["configs"] == ["multi_doors_keys", "debug"] and "--offline.updates" in recorded["extra"]
    assert "memory.cueswap" not in text and "memory.readback" not in text  # no causal test was run
    (out / "imagination.png").unlink()
    swap = {m: {"flipped": 0.25, "right_on_both": 0.125, "resampled_flipped": 0.0625, "accuracy": 0.5,
                "accuracy_swapped": 0.375} for m in ("inference", "imagination")}
    (out / "rssm_seed0" / "eval" / "cueswap.json").write_text(json.dumps({"updates": 2, "draws": 3, **swap}))
    res = subprocess.run(again, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = (out / "report.md").read_text()
    assert "No imagination video" in text
    assert "| rssm_seed0 | 2 | 3 | 25.0% / 25.0% | 12.5% / 12.5% | 6.2% / 6.2% | 37.5% / 37.5% |" in text
    res = subprocess.run([*again, "--at", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    text = (out / "report.md").read_text()
    assert "Scores at 1 updates" in text and "| rssm | 1 | 1 |" in text and "123.0000" not in text
    one = [sys.executable, "-m", "memory.report", "--backbones", "rssm", "--out", str(out), "--report-only"]
    res = subprocess.run(one, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]  # other cells than those trained: no training record
    assert json.loads((out / "report.json").read_text())["configs"] == []
    for bad, words in ((["--at", "7"], ["no evaluation at 7 updates", "rssm_seed0 (evaluated at: 1)"]),
                       (["--seeds", "5"], ["rssm_seed5 (no folder"]),
                       (["--offline.updates", "9"], ["would have no effect"])):
        res = subprocess.run([*again, *bad], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
        assert len(res.stderr.strip().splitlines()) == 1 and all(w in res.stderr for w in words)


def test_report_video_enlarges_small_frames_exactly():
    rng = np.random.default_rng(0)
    truth, pred = (rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8) for _ in range(2))
    grid = report.side_by_side(truth, {"s4wm": pred})  # (3, 32, 32, 3)
    big = report.enlarge(grid, 16)
    assert big.shape == (3, 128, 128, 3)  # 16x16 frames shown at 64x64
    np.testing.assert_array_equal(big[:, ::4, ::4], grid)  # every pixel a 4x4 block of itself
    np.testing.assert_array_equal(big[:, 3::4, 3::4], grid)
    assert report.enlarge(grid, 64).shape == grid.shape  # 64x64 frames: unchanged



def test_report_follows_scores_over_training_at_budgets_every_seed_reached(tmp_path):
    def cell(name, scores):  # scores: updates -> (reward_acc_inference, cue_acc_hallway_end)
        (tmp_path / name / "eval").mkdir(parents=True)
        for u, (acc, cue) in scores.items():
            (tmp_path / name / "eval" / f"metrics_{u:08d}.json").write_text(json.dumps(
                {"updates": u, "summary": {"reward_acc_inference": acc, "cue_acc_hallway_end": cue}}))
        (tmp_path / name / "eval" / "metrics_old.json").write_text("{}")  # not an evaluation
        return tmp_path / name

    cells = {"s4wm": {"0": cell("s4wm_seed0", {1000: (0.5, 0.1), 2000: (0.7, 0.4), 3000: (0.9, 0.6)}),
                      "1": cell("s4wm_seed1", {1000: (0.5, 0.2), 2000: (0.9, 0.6)})},  # not at 3000
             "rssm": {"0": cell("rssm_seed0", {1000: (0.5, 0.1), 2000: (float("nan"), 0.1)}),
                      "1": cell("rssm_seed1", {1000: (0.6, 0.1), 2000: (0.5, 0.1)})},
             "tssm": {"0": cell("tssm_seed0", {1000: (0.5, 0.1)}), "1": cell("tssm_seed1", {})}}
    history = report.progress(cells)
    assert report.common_budgets(history["s4wm"]) == [1000, 2000]  # 3000: only seed 0 got there
    lines = report.progress_table(history, "reward_acc_inference")
    assert "coin flip 50.0%" in lines[0]
    assert lines[2] == "| backbone | 1000 | 2000 |"
    assert lines[4] == "| s4wm | 50.0% ± 0.0% | 80.0% ± 10.0% |"  # s.e. of (0.7, 0.9) = 0.1
    assert lines[5] == "| rssm | 55.0% ± 5.0% | 50.0% (1 of 2 seeds) |"  # a nan is left out, and said
    assert lines[6] == "| tssm | - | - |"
    assert "s4wm seed 0 goes on to 3000 updates: 90.0%." in lines
    assert "tssm: its seeds share no evaluated budget (seed 0: 1000; seed 1: none)." in lines
    assert "chance 12.5%" in report.progress_table(history, "cue_acc_hallway_end")[0]  # 8 colours
    assert report.progress_table(history, "gen_mse") == []  # no cell measured it
    assert report._columns(list(range(100, 2100, 100)), {1500}, 5) == [100, 600, 1100, 1500, 2000]
    assert report.plot_progress(history, "test", tmp_path) == "progress.png"
    assert (tmp_path / "progress.png").stat().st_size > 0
    assert report.plot_progress({"tssm": history["tssm"]}, "test", tmp_path) is None  # one each
    # the main table: a score one seed lacks is averaged over the others and says so
    rows = report.table({"s4wm": [{"summary": {"gen_mse": 0.5}, "updates": 1},
                                  {"summary": {}, "updates": 2}]})
    assert rows[2] == "| s4wm | 2 | 1-2 | 0.5000 (1 of 2 seeds) |" and "different budgets (1-2" in rows[4]


# ---- Memory Maze offline probing (memory/probe.py) ------------------------------------------------
def test_probe_scores_on_known_values():
    from memory import probe
    logits = np.array([[2.0, -1.0, 0.5, -3.0]])
    walls = np.array([[1.0, 0.0, 0.0, 0.0]])
    assert probe.wall_accuracy(logits, walls)[0] == pytest.approx(0.75)  # the 0.5 logit is wrong
    pred = np.array([0.0, 0.0, 1.0, 1.0])  # two objects, (x, y) each
    truth = np.array([3.0, 4.0, 1.0, 1.0])
    assert probe.object_error(pred, truth) == pytest.approx((25 + 0) / 2)


def test_local_layout_turns_with_the_agent():
    from memory import probe
    layout = np.zeros((1, 5, 5), np.uint8)  # [y, x]
    layout[0, 2, 3] = 1  # free: x=3, y=2, east of the agent's cell (2, 2)
    layout[0, 1, 2] = 1  # free: x=2, y=1, south of it
    pos = np.float32([[2.5, 2.5]])
    expected = {  # rows: ahead, level, behind; columns: left, centre, right
        (1, 0): [[0, 1, 0], [0, 0, 1], [0, 0, 0]],  # east: east ahead, south to the right
        (0, 1): [[0, 0, 0], [0, 0, 1], [0, 1, 0]],  # north: east to the right, south behind
        (-0.2, -1): [[0, 1, 0], [1, 0, 0], [0, 0, 0]],  # ~south (rounded): south ahead, east left
    }
    for heading, window in expected.items():
        got = probe.local_layout(layout, pos, np.float32([heading]), radius=1).reshape(3, 3)
        np.testing.assert_array_equal(got, window, err_msg=str(heading))
    edge = probe.local_layout(layout, np.float32([[0.5, 0.5]]), np.float32([[1, 0]]), radius=1)
    assert edge.sum() == 0  # outside the maze counts as wall
    assert probe.BEHIND == slice(15, None)  # 5x5 window: the last 2 rows


def test_probe_reads_what_the_features_hold_and_nothing_else():
    from memory import probe
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 16, generator=gen)
    w = torch.randn(16, 9, generator=gen)
    walls = (x @ w > 0).float()  # (M, 9): linearly decodable from x
    noise = torch.randn(3000, 16, generator=gen)  # features that hold nothing about the walls
    for feats, low, high in ((x, 0.9, 1.0), (noise, 0.0, 0.62)):
        p = probe.fit(feats[:2000], walls[:2000], probe.wall_loss, updates=400, batch=256, lr=3e-3, seed=0)
        with torch.no_grad():
            acc = probe.wall_accuracy(p(feats[2000:]).numpy(), walls[2000:].numpy()).mean()
        assert low <= acc <= high, acc


class _PlantedModel(torch.nn.Module):
    """A stand-in world model whose feature at t is the first 81 pixels of frame t (red channel):
    memory maze episodes with the layout painted there can be probed perfectly."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def initial_state(self, batch):
        return {}

    def encoder(self, image):  # (B, T, 64, 64, 3) uint8 -> (B, T, 81)
        return image[..., :9, :9, 0].flatten(-2).float() / 255

    def observe(self, embed, action, is_first, state):
        return embed, state, None

    def feat(self, out):
        return out

    def posterior(self, out):  # the planted features are what it "perceives"
        return out


def _maze_episode(rng, T=6, K=3):
    layout = (rng.random((9, 9)) < 0.6).astype(np.uint8)
    image = np.zeros((T, 64, 64, 3), np.uint8)
    image[:, :9, :9, 0] = layout * 255
    return {"image": image, "action": np.zeros((T, 6), np.float32), "reward": np.zeros(T, np.float32),
            "is_first": np.arange(T) == 0, "is_last": np.arange(T) == T - 1, "is_terminal": np.zeros(T, bool),
            "maze_layout": np.repeat(layout[None], T, 0), "targets_vec": rng.normal(size=(T, K, 2)).astype(np.float32),
            "agent_pos": rng.uniform(0, 9, (T, 2)).astype(np.float32),
            "agent_dir": np.tile(np.float32([[1, 0]]), (T, 1))}


def test_probes_score_planted_features_against_the_baselines():
    from memory import probe
    rng = np.random.default_rng(0)
    train = [_maze_episode(rng) for _ in range(400)]
    test = [_maze_episode(rng) for _ in range(10)]
    summary, curves = probe.evaluate_probes(_PlantedModel(), train, test, batch=16, chunk=4, device="cpu",
                                            updates=300, lr=3e-3)
    assert summary["probe_wall_acc"] > 0.97  # the layout is in the features
    assert 0.4 < summary["probe_wall_acc_baseline"] < 0.8  # a random layout: the majority guess is poor
    # The objects are not in the features: the probe cannot beat the mean by much.
    assert summary["probe_object_mse"] > 0.8 * summary["probe_object_mse_baseline"]
    assert len(curves["wall_acc"]) == len(curves["object_mse"]) == len(curves["behind_acc"]) == 6
    # Training labels that do not belong to their features (layouts shuffled across episodes): the
    # probe learns nothing it could use on the test episodes, so nothing leaks from them.
    shuffled = [{**e, "maze_layout": train[(i + 1) % len(train)]["maze_layout"]} for i, e in enumerate(train)]
    blind, _ = probe.evaluate_probes(_PlantedModel(), shuffled, test, batch=16, chunk=4, device="cpu",
                                     updates=300, lr=3e-3)
    assert blind["probe_wall_acc"] < blind["probe_wall_acc_baseline"] + 0.08


def test_memory_maze_probe_report_end_to_end(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "memory.report", "--configs", "memory_maze_probe", "debug",
           "--backbones", "s4wm", "--out", str(out), "--memory.out", str(tmp_path / "data"),
           "--memory.context", "12", "--memory.query", "12", "--memory.episodes", "3",
           "--offline.test_episodes", "1", "--offline.updates", "2", "--offline.probe_updates", "20"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    result = json.loads((out / "s4wm_seed0" / "eval" / "metrics.json").read_text())
    s = result["summary"]
    assert 0 <= s["probe_wall_acc"] <= 1 and 0 <= s["probe_wall_acc_baseline"] <= 1
    assert s["probe_object_mse"] >= 0 and s["probe_object_mse_baseline"] >= 0 and "gen_mse" in s
    for key in ("probe_local_acc", "probe_behind_acc", "probe_behind_acc_baseline", "probe_behind_acc_frame"):
        assert 0 <= s[key] <= 1, key
    assert len(result["curves"]["wall_acc"]) == 24 and len(result["curves"]["mse"]) == 12
    for name in ("wall_acc.png", "object_mse.png", "mse.png", "imagination.mp4"):
        assert (out / name).stat().st_size > 0
    assert "probe_wall_acc" in (out / "report.md").read_text()


def test_report_stops_with_one_line_when_a_cell_fails(tmp_path):
    cmd = [sys.executable, "-m", "memory.report", "--configs", "multi_doors_keys", "debug",
           "--backbones", "rssm", "--out", str(tmp_path / "report"), "--offline.test_episodes", "9"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert "offline.test_episodes" in lines[0]  # main.py's own message, then the report's
    assert lines[-1] == "error: the rssm seed 0 run failed (exit 2); its message is above"
    res = subprocess.run([*cmd[:-2], "--wm.no_such_key", "1"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)  # a key no run knows: one line before any cell starts
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "no_such_key" in res.stderr
    assert "running" not in res.stdout


class _CarryModel(_PlantedModel):
    """_PlantedModel that keeps the running maximum of its features over time (carried across
    chunks in its state): a perfect memory."""

    def observe(self, embed, action, is_first, state):
        if "max" in state:
            embed = torch.cat([state["max"], embed], 1)
        out = torch.cummax(embed, 1).values[:, -action.shape[1]:]
        return out, {"max": out[:, -1:]}, None


def _cue_episode(rng, T=8):
    cue = int(rng.integers(8))
    image = np.zeros((T, 64, 64, 3), np.uint8)
    image[0, 0, cue, 0] = 255  # the cue shows in the first frame only
    reward_step = np.arange(T) == T - 1
    cell = np.stack([np.arange(T), np.full(T, 2)], -1)  # one cell right per step; the junction at x = T - 1
    return {"image": image, "action": np.zeros((T, 3), np.float32), "reward": reward_step.astype(np.float32),
            "is_first": np.arange(T) == 0, "is_last": reward_step, "is_terminal": reward_step,
            "cue": np.full(T, cue, np.int8), "reward_step": reward_step, "cell": cell}


def test_cue_probes_tell_a_forgetting_model_from_a_remembering_one():
    from memory import probe
    rng = np.random.default_rng(0)
    train = [_cue_episode(rng) for _ in range(200)]
    test = [_cue_episode(rng) for _ in range(40)]
    assert probe.hallway_end(train[0]) == 4  # x = 4 < 7 - 2: the last frame the end squares are out of view
    kw = dict(batch=16, chunk=4, device="cpu", updates=200, lr=3e-3)
    forgets = probe.cue_scores(_PlantedModel(), train, test, **kw)
    remembers = probe.cue_scores(_CarryModel(), train, test, **kw)
    assert forgets["cue_acc_start"] == remembers["cue_acc_start"] == 1.0  # both see the cue
    assert forgets["cue_acc_start_posterior"] == remembers["cue_acc_start_posterior"] == 1.0
    assert remembers["cue_acc_hallway_end"] == 1.0
    assert forgets["cue_acc_hallway_end"] < 0.35  # only chance (1/8) is left


def test_offline_distracting_memory_end_to_end_scores_rewards_and_cue_probes(tmp_path):
    args = ["--configs", "distracting_memory", "debug", "rssm", "--memory.out", str(tmp_path / "data"),
            "--memory.width", "4", "--memory.episodes", "12", "--offline.test_episodes", "4",
            "--offline.updates", "2", "--offline.probe_updates", "20"]
    res = run_main(tmp_path, args)
    assert res.returncode == 0, res.stderr[-2000:]
    s = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["summary"]
    for key in ("reward_acc_inference", "reward_acc_imagination", "cue_acc_start",
                "cue_acc_start_posterior", "cue_acc_hallway_end"):
        assert 0 <= s[key] <= 1 and s[key] * 4 == round(s[key] * 4), key  # fractions of 4 test episodes


@pytest.mark.parametrize("key, value", [("offline.probe_episodes", "0"), ("offline.probe_updates", "0")])
def test_bad_probe_settings_stop_with_one_line(tmp_path, key, value):
    res = run_main(tmp_path, ["--configs", "memory_maze_probe", "debug", "s4wm", f"--{key}", value,
                              "--memory.out", str(tmp_path / "data")])
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert key in res.stderr and not (tmp_path / "data").exists()  # stopped before collecting


def test_probe_early_stopping_keeps_what_generalises():
    from memory import probe
    gen = torch.Generator().manual_seed(1)
    x, xv = torch.randn(64, 8, generator=gen), torch.randn(64, 8, generator=gen)
    y, yv = (torch.rand(64, 5, generator=gen) > 0.5).float(), (torch.rand(64, 5, generator=gen) > 0.5).float()
    kw = dict(updates=400, batch=64, lr=1e-2, seed=0)
    with torch.no_grad():
        memorised = probe.wall_loss(probe.fit(x, y, probe.wall_loss, **kw)(xv), yv)
        stopped = probe.wall_loss(probe.fit(x, y, probe.wall_loss, val=(xv, yv), **kw)(xv), yv)
    assert memorised > 0.9 and stopped < 0.72  # noise labels: memorising hurts; stopping keeps ~log 2
    assert probe.held_out(200) == 160 and probe.held_out(4) == 4


@pytest.mark.parametrize("backbone", ["s4wm", "rssm"])
def test_posterior_features_are_the_unsampled_posterior_of_each_frame(backbone):
    """probe.features(posterior=True): per step the posterior's class probabilities (each latent
    variable sums to 1), at frame 0 exactly latent.probs of the posterior the observe pass computes
    from the initial state and frame 0 alone (no sample drawn: two passes agree; for S4WM, whose
    posterior reads the frame alone, at every step), while [h, z] holds a sample and so differs
    between passes."""
    from common.config import load_blocks, merge
    from memory import probe
    from world_models import build_world_model
    torch.manual_seed(0)
    cfg = merge(load_blocks(), ["debug", backbone], {})
    wm = build_world_model(cfg, 3)
    rng = np.random.default_rng(0)
    episodes = [_cue_episode(rng) for _ in range(3)]
    kw = dict(batch=2, chunk=4, device="cpu")
    post = probe.features(wm, episodes, posterior=True, **kw)
    assert [p.shape for p in post] == [(8, cfg.wm.stoch * cfg.wm.classes)] * 3
    sums = torch.stack(post).reshape(3, 8, cfg.wm.stoch, cfg.wm.classes).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    again = probe.features(wm, episodes, posterior=True, **kw)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(post, again))  # frame 0: no sample before it
    if backbone == "s4wm":  # its posterior reads the frame alone; RSSM's also h, fed by samples
        assert all(torch.equal(a, b) for a, b in zip(post, again))
    e = episodes[0]
    with torch.no_grad():
        out, _, _ = wm.observe(wm.encoder(torch.as_tensor(e["image"][None, :1])),
                               torch.as_tensor(e["action"][None, :1]),
                               torch.as_tensor(e["is_first"][None, :1]), wm.initial_state(1))
    torch.testing.assert_close(post[0][0], wm.latent.probs(out["post"][0, 0]).flatten())
    feats = [probe.features(wm, episodes[:1], **kw)[0] for _ in range(2)]
    assert not torch.equal(feats[0], feats[1])  # z is sampled


# ---- the read-back test of TSSM-XL (memory/readback.py) --------------------------------------------
def _xl_core(mem_len: int):
    from world_models.tssm import TransformerXLCore
    torch.manual_seed(0)
    core = TransformerXLCore(d_model=16, n_layers=2, n_heads=4, mem_len=mem_len).double()
    with torch.no_grad():  # away from the trivial init, so every term of the scores matters
        for p in core.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return core


def test_blocked_keys_cut_exactly_the_paths_they_name():
    from memory.readback import blocked
    core, T = _xl_core(mem_len=16), 12
    g = torch.randn(2, T, 16, dtype=torch.float64)
    first = torch.zeros(2, T, dtype=torch.bool)
    h = lambda g: core(g, first, core.initial_state(2))[0]  # noqa: E731
    plain = h(g)
    moved = g.clone()
    moved[:, 1:4] += torch.randn(2, 3, 16, dtype=torch.float64)  # the 'cue frames': positions 1-3
    with blocked(core, 0, range(0)):  # nothing blocked: the same numbers
        torch.testing.assert_close(h(g), plain, rtol=0, atol=0)
    assert not torch.allclose(h(moved)[:, 4:], plain[:, 4:])  # open: later steps see the cue frames
    with blocked(core, 4, range(1, 4)):  # no later query may attend them, in any layer: no path left
        torch.testing.assert_close(h(moved)[:, 4:], h(g)[:, 4:], rtol=0, atol=0)
        assert not torch.allclose(h(g)[:, 4:], plain[:, 4:])  # (the block itself changes them)
    with blocked(core, 9, range(1, 4)):  # only the last 3 queries blocked: the steps between still
        assert not torch.allclose(h(moved)[:, 4:9], h(g)[:, 4:9])  # read them, and pass them on
        assert not torch.allclose(h(moved)[:, 9:], h(g)[:, 9:])  # through the second layer
    torch.testing.assert_close(h(g), plain, rtol=0, atol=0)  # the hooks are gone
    assert not any(layer._forward_pre_hooks for layer in core.layers)


def test_weight_on_sums_the_attention_of_one_query():
    from memory.readback import weight_on
    g = torch.randn(2, 12, 16, dtype=torch.float64)
    first = torch.zeros(2, 12, dtype=torch.bool)
    for mem_len, keys, expected in ((16, range(11), 1.0), (4, range(6), 0.0)):  # query 10: all of its
        core, got = _xl_core(mem_len), []  # keys; with a 4-step window, none of positions 0-5
        with weight_on(core, 10, keys, got):
            core(g, first, core.initial_state(2))
        assert len(got) == 1 and got[0].shape == (2, 2)  # (B, n_layers)
        torch.testing.assert_close(got[0], torch.full((2, 2), expected, dtype=torch.float64))
    core, parts = _xl_core(16), []
    for keys in (range(0, 3), range(3, 11)):
        with weight_on(core, 10, keys, parts):
            core(g, first, core.initial_state(2))
    assert ((parts[0] > 0) & (parts[0] < 1)).all()  # a part of it on positions 0-2,
    torch.testing.assert_close(parts[0] + parts[1], torch.ones(2, 2, dtype=torch.float64))  # the rest


def test_cue_frames_end_where_the_cue_leaves_the_view():
    from memory.readback import cue_frames, cue_keys, placebo_keys
    episode = {"cell": np.array([[2, 2], [3, 2], [4, 2], [5, 2], [6, 2]])}
    assert cue_frames(episode) == 3 and cue_keys(episode) == range(1, 4)  # x > 2 + VIEW from frame 3
    assert placebo_keys(range(1, 4), 20) == range(10, 13)  # as many keys, midway to the hallway's end
    with pytest.raises(ValueError, match="too short"):
        placebo_keys(range(1, 6), 9)  # 3 keys between the cue frames and the end: no room for 5
    with pytest.raises(ValueError, match="leave the cue's view"):
        cue_frames({"cell": np.array([[2, 2], [5, 2], [4, 2]])})  # walks back into view


def _test_on_a_trained_cell(tmp_path, backbone: str, width: int, module: str, *extra: str):
    """Train a tiny Distracting Memory cell (2 updates, 2 test episodes), run `module` on it with 2
    draws; returns the command (for reruns)."""
    args = ["--configs", "distracting_memory", "debug", backbone, "--memory.out", str(tmp_path / "data"),
            "--memory.width", str(width), "--memory.episodes", "6", "--offline.test_episodes", "2",
            "--offline.updates", "2", "--offline.probe_updates", "5", *extra]
    res = run_main(tmp_path, args)
    assert res.returncode == 0, res.stderr[-2000:]
    cmd = [sys.executable, "-m", module, "--logdir", str(tmp_path / "run"), "--draws", "2"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return cmd


def test_readback_command_on_a_trained_tssm_cell(tmp_path):
    cmd = _test_on_a_trained_cell(tmp_path, "tssm", 30, "memory.readback", "--tssm.mem_len", "48")
    out = json.loads((tmp_path / "run" / "eval" / "readback.json").read_text())
    assert out["updates"] == 2 and out["episodes"] == 2 and out["draws"] == 2
    for condition in ("open", "end", "end_placebo", "all"):
        assert all(v * 2 == round(v * 2) for v in out["per_draw"][condition])  # fractions of 2 episodes
        assert out["reward_acc_inference"][condition] == pytest.approx(np.mean(out["per_draw"][condition]))
    weight = out["decision_weight"]
    for part in ("cue_frames", "position_0"):
        w = weight[part]
        assert len(w["mean"]) == 1  # the debug block's one layer
        assert all(0 <= lo <= m <= hi <= 1 for lo, m, hi in zip(w["min"], w["mean"], w["max"]))
    assert 0 < weight["uniform_on_cue_frames"] < 1  # the 48-step window covers the cue frames
    # a cell of another backbone: one line naming what the test is for
    (tmp_path / "run" / "config.yaml").write_text(
        (tmp_path / "run" / "config.yaml").read_text().replace("backbone: tssm", "backbone: rssm"))
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "backbone tssm" in res.stderr


def test_with_every_later_query_blocked_the_decision_cannot_depend_on_the_cue_frames():
    """The 'all' control of memory.readback is exact: the core's key p carries frame p-1 (g_p reads
    z_{p-1}) and key 0 no frame, so blocking cue_keys from every later query cuts every path from the
    cue frames to the later features; one position fewer leaves the last cue frame's path open."""
    from memory.episodes import MODEL_KEYS, observe
    from memory.readback import blocked, cue_frames, cue_keys
    from replay import to_torch
    torch.manual_seed(0)
    config = merge(load_blocks(), ["debug", "tssm"], {"tssm.mem_len": "16", "tssm.n_layers": "2"})
    wm = build_world_model(config, 3).eval()
    rng = np.random.default_rng(0)
    e = _cue_episode(rng, T=12)  # x = 0 .. 11: frames 0-4 show the cue (x <= 2 + VIEW)
    e["image"] = rng.integers(0, 256, e["image"].shape, dtype=np.uint8)
    e["action"] = np.eye(3, dtype=np.float32)[rng.integers(3, size=12)]
    moved = dict(e, image=e["image"].copy())
    moved["image"][:5] = rng.integers(0, 256, moved["image"][:5].shape, dtype=np.uint8)
    keys = cue_keys(e)
    assert cue_frames(e) == 5 and keys == range(1, 6)

    def feat(episode, keys):
        torch.manual_seed(1)  # the same latent draws for both episodes
        data = to_torch({k: episode[k][None] for k in MODEL_KEYS}, "cpu")
        with blocked(wm.core, keys.stop, keys):
            return observe(wm, data, wm.initial_state(1), 12)[0][0]  # (T, F)

    torch.testing.assert_close(feat(moved, keys)[6:], feat(e, keys)[6:], rtol=0, atol=0)
    assert not torch.allclose(feat(moved, range(1, 5))[6:], feat(e, range(1, 5))[6:], atol=1e-3)
    assert not torch.allclose(feat(moved, range(0))[6:], feat(e, range(0))[6:], atol=1e-3)  # open


def test_readback_blocks_what_each_condition_names(monkeypatch):
    """The wiring of memory.readback.readback: which queries lose which keys in each condition."""
    from memory import readback as rb
    from memory.probe import hallway_end
    calls = []
    real = rb.blocked
    monkeypatch.setattr(rb, "blocked", lambda core, q, keys: calls.append((q, keys)) or real(core, q, keys))
    torch.manual_seed(0)
    config = merge(load_blocks(), ["debug", "tssm"], {"tssm.mem_len": "32"})
    wm = build_world_model(config, 3).eval()
    e = _cue_episode(np.random.default_rng(0), T=24)  # x = 0 .. 23: frames 0-4 show the cue
    out = rb.readback(wm, [e], draws=1)
    end, cue = hallway_end(e), rb.cue_keys(e)
    assert calls == [(end, cue), (end, rb.placebo_keys(cue, end)), (cue.stop, cue)]
    assert (end, cue, rb.placebo_keys(cue, end)) == (20, range(1, 6), range(10, 15))
    assert set(out["reward_acc_inference"]) == {"open", "end", "end_placebo", "all"}
    assert out["decision_weight"]["uniform_on_cue_frames"] == pytest.approx(5 / 24)  # window 0-23


# ---- the cue-swap test (memory/cueswap.py) ----------------------------------------------------------
def _dm_episodes(n: int, image_size: int = 16):
    from envs import env_seed
    from memory.collect import Spec, run_episode
    spec = Spec("distracting_memory", 0, False, 6, 0, 0, 0, 0.0, image_size)
    env = spec.build()
    return env, [(env_seed(0, i), run_episode(env, spec, env_seed(0, i))) for i in range(n)]


def test_swapped_episode_differs_only_where_the_cue_is_seen_and_pays_the_other_way():
    from minigrid.core.constants import COLORS

    from envs.gridmemory import COLOURS
    from memory.cueswap import swap_pair
    from memory.probe import cue_frames
    env, episodes = _dm_episodes(4)
    for seed, e in episodes:
        s = swap_pair(env, seed, e)
        c, t = cue_frames(e), metrics.decision_step(e["reward_step"])
        changed = (s["image"] != e["image"]).any((1, 2, 3))  # (T,)
        assert changed[0] and not changed[c:].any()  # the cue is in view from frame 0, gone at c
        assert s["reward"][t] == 1 - e["reward"][t] and np.array_equal(np.delete(s["reward"], t), np.delete(e["reward"], t))
        assert np.array_equal(s["action"], e["action"]) and np.array_equal(s["cell"], e["cell"])
        # the swapped cue shows the other end square's colour: at 16 px the dimmed floor colour
        other = next(i for i in env.unwrapped.end_colours() if i != e["cue"][0])
        assert s["cue"][0] == other != e["cue"][0]
        moved = (s["image"][0] != e["image"][0]).any(-1)  # (16, 16): the cue tile's pixels
        for episode, colour in ((s, other), (e, e["cue"][0])):  # minigrid draws floors at half brightness
            floor = (COLORS[COLOURS[colour]] / 2).astype(np.uint8)
            assert (episode["image"][0][moved] == floor).all(-1).any()
    seed, e = episodes[0]
    tampered = {**e, "image": e["image"].copy()}
    tampered["image"][5] ^= 1  # a dataset the env no longer reproduces
    with pytest.raises(ValueError, match="does not reproduce"):
        swap_pair(env, seed, tampered)



def test_swap_pair_refuses_a_swap_that_changes_more_than_the_cue(monkeypatch):
    from envs import gridmemory
    from memory.cueswap import swap_pair
    env, episodes = _dm_episodes(1)
    seed, e = episodes[0]
    paint = gridmemory.DistractingMemory.paint_cue

    def and_a_hallway_square(self, cue):  # also repaints a square seen only after the cue frames
        paint(self, cue)
        self.grid.set(self.junction - 1, 2, gridmemory.Floor(gridmemory.COLOURS[cue]))

    monkeypatch.setattr(gridmemory.DistractingMemory, "paint_cue", and_a_hallway_square)
    with pytest.raises(ValueError, match="not only the cue frames"):
        swap_pair(env, seed, e)

    def pixels_only(self, cue):  # the tile changes but the env's cue, hence the reward, does not
        self.grid.set(*gridmemory.CUE, gridmemory.Floor(gridmemory.COLOURS[cue]))

    monkeypatch.setattr(gridmemory.DistractingMemory, "paint_cue", pixels_only)
    with pytest.raises(ValueError, match="did not flip the reward"):
        swap_pair(env, seed, e)


@pytest.mark.parametrize("backbone", ["s4wm", "rssm", "tssm"])
def test_original_and_swapped_pass_share_their_latent_draws(backbone):
    """memory.cueswap seeds the original and the swapped pass alike: a real model then draws the
    same random numbers for both (the generator ends in the same state), while another seed draws
    other latents (the predictions move), so 'flipped' counts the cue's doing, not sampling noise."""
    from memory import cueswap as cs
    from memory.evaluate import predict_rewards
    config = merge(load_blocks(), ["debug", backbone], {"env.image_size": 16})
    torch.manual_seed(0)
    wm = build_world_model(config, 3).eval()
    env, episodes = _dm_episodes(3)
    originals = [e for _, e in episodes]
    swapped = [cs.swap_pair(env, seed, e) for seed, e in episodes]

    def passes(eps, seed):
        torch.manual_seed(seed)
        out = [predict_rewards(wm, e, chunk=512, device=wm.device) for e in eps]
        return [o["imag"] for o in out], torch.get_rng_state()  # imagined frames: from sampled latents

    a, state_a = passes(originals, 0)
    b, state_b = passes(swapped, 0)
    again, _ = passes(originals, 0)
    other, _ = passes(originals, 1)
    assert torch.equal(state_a, state_b)  # the same random numbers, used in the same order
    assert all(np.array_equal(x, y) for x, y in zip(a, again))
    assert not all(np.array_equal(x, y) for x, y in zip(a, other))  # the latents are sampled
    r = cs.cueswap(wm, originals, originals, draws=2)  # no swap at all: nothing flips
    assert r["inference"]["flipped"] == r["imagination"]["flipped"] == 0


class _Scripted:
    """Stands in for memory.evaluate.predict_rewards: `rule(episode)` -> predicted reward at the
    decision step, plus optional noise from the torch generator (as the sampled latents give)."""

    def __init__(self, rule, noise=0.0):
        self.rule, self.noise = rule, noise

    def __call__(self, wm, e, *, chunk, device, images=True):
        p = np.zeros(len(e["image"]), np.float32)
        t = metrics.decision_step(e["reward_step"])
        p[t] = self.rule(e) + self.noise * float(torch.randn(()))
        return {"inference": p, "imagination": p}


def test_cueswap_tells_a_cue_reader_from_a_model_that_ignores_the_cue(monkeypatch):
    from memory import cueswap as cs
    env, episodes = _dm_episodes(8)
    originals = [e for _, e in episodes]
    swapped = [cs.swap_pair(env, seed, e) for seed, e in episodes]
    wm = type("WM", (), {"device": torch.device("cpu")})()

    # a model that follows the cue: its prediction is the reward the episode pays (swapped: the other)
    monkeypatch.setattr(cs, "predict_rewards", _Scripted(lambda e: float(e["reward"].max())))
    r = cs.cueswap(wm, originals, swapped, draws=2)
    for mode in cs.MODES:
        assert r[mode]["accuracy"] == r[mode]["accuracy_swapped"] == r[mode]["right_on_both"] == 1.0
        assert r[mode]["flipped"] == 1.0 and r[mode]["resampled_flipped"] == 0.0
    # a model that knows which episodes of this test set pay, but not from the cue: right on the
    # originals, blind to the swap, so never right on both
    paid = {id(s): float(e["reward"].max()) for e, s in zip(originals, swapped)}
    monkeypatch.setattr(cs, "predict_rewards", _Scripted(lambda e: paid.get(id(e), float(e["reward"].max()))))
    r = cs.cueswap(wm, originals, swapped, draws=2)
    assert r["inference"]["accuracy"] == 1.0 and r["inference"]["accuracy_swapped"] == 0.0
    assert r["inference"]["flipped"] == r["inference"]["right_on_both"] == 0.0
    # noise alone flips predictions between two draws; the pair shares its draw, so not between them
    monkeypatch.setattr(cs, "predict_rewards", _Scripted(lambda e: 0.5, noise=1.0))
    r = cs.cueswap(wm, originals, swapped, draws=3)
    assert 0 < r["inference"]["resampled_flipped"] < 1 and r["inference"]["flipped"] == 0
    assert len(r["per_draw"]["inference"]["flipped"]) == 3


def test_report_trains_cells_at_once_and_runs_their_causal_tests(tmp_path):
    """memory.report --jobs 2: the dataset is made once, both cells train at the same time (their
    output in <cell>/train.log), each gets memory.cueswap and the tssm cell memory.readback, and the
    report shows both tables; a rerun finds the tests up to date and runs none again."""
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "memory.report", "--configs", "distracting_memory", "debug",
           "--backbones", "rssm,tssm", "--jobs", "2", "--out", str(out), "--memory.out",
           str(tmp_path / "data"), "--memory.width", "30", "--memory.episodes", "6",
           "--offline.test_episodes", "2", "--offline.updates", "2", "--offline.probe_updates", "5"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("memory.collect") == 1 and "rssm seed 0: done" in res.stdout
    lines = res.stdout.splitlines()
    started = [i for i, ln in enumerate(lines) if ln.endswith("train.log") and ": started" in ln]
    assert len(started) == 2 and max(started) < min(i for i, ln in enumerate(lines) if ": done" in ln)
    for cell in ("rssm_seed0", "tssm_seed0"):
        log = (out / cell / "train.log").read_text()
        assert "main.py" in log and log.count("memory.cueswap") == 1
        assert json.loads((out / cell / "eval" / "cueswap.json").read_text())["updates"] == 2
    assert (out / "tssm_seed0" / "eval" / "readback.json").exists()
    assert not (out / "rssm_seed0" / "eval" / "readback.json").exists()  # a test of TSSM-XL only
    text = (out / "report.md").read_text()
    assert "| rssm_seed0 | 2 | 5 |" in text and "| tssm_seed0 | 2 | 5 | 50.0% |" in text
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    log = (out / "tssm_seed0" / "train.log").read_text()
    assert log.count("main.py") == 2 and log.count("memory.cueswap") == 1 and log.count("memory.readback") == 1
    res = subprocess.run([*cmd, "--jobs", "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip() == "error: --jobs must be >= 1, got 0", res.stderr


@pytest.mark.parametrize("backbone", ["rssm", "tssm"])
def test_report_reruns_a_causal_test_only_when_missing_older_or_unreadable(tmp_path, backbone):
    from memory.runner import causal_commands
    cell = tmp_path / "cell"
    (cell / "eval").mkdir(parents=True)
    (cell / "config.yaml").write_text(merge(load_blocks(), ["distracting_memory", "debug", backbone]).dump())
    (cell / "eval" / "metrics.json").write_text(json.dumps({"updates": 4}))
    tests = ["cueswap"] + (["readback"] if backbone == "tssm" else [])

    def stale():
        return [args[1] for args in causal_commands(cell)]
    assert stale() == [f"memory.{t}" for t in tests]  # missing
    for t in tests:
        (cell / "eval" / f"{t}.json").write_text(json.dumps({"updates": 2}))
    assert stale() == [f"memory.{t}" for t in tests]  # from an earlier checkpoint
    for t in tests:
        (cell / "eval" / f"{t}.json").write_text(json.dumps({"updates": 4}))
    assert stale() == []
    (cell / "eval" / "cueswap.json").write_text('{"upd')  # a write cut short
    assert stale() == ["memory.cueswap"]
    for blocks, tests in ((["multi_doors_keys"], ["memory.shortcontext"]), (["two_rooms"], ["memory.shortcontext"]),
                          (["two_rooms_teleport"], ["memory.shortcontext"]), (["memory_maze_probe"], [])):
        (cell / "config.yaml").write_text(merge(load_blocks(), [*blocks, "debug", backbone]).dump())
        assert stale() == tests, blocks  # each benchmark's own tests


def test_cueswap_command_on_a_trained_cell(tmp_path):
    cmd = _test_on_a_trained_cell(tmp_path, "s4wm", 6, "memory.cueswap")
    out = json.loads((tmp_path / "run" / "eval" / "cueswap.json").read_text())
    assert out["updates"] == 2 and out["episodes"] == 2 and out["draws"] == 2
    for mode in ("inference", "imagination"):
        for key, value in out[mode].items():
            assert all(v * 2 == round(v * 2) for v in out["per_draw"][mode][key])  # fractions of 2
            assert value == pytest.approx(np.mean(out["per_draw"][mode][key]))
        assert out[mode]["right_on_both"] <= min(out[mode]["accuracy"], out[mode]["accuracy_swapped"])
    res = subprocess.run([*cmd[:-1], "0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.strip() == "error: --draws must be >= 1, got 0", res.stderr
    # the dataset's test episodes no longer match the env: one line naming the problem
    last = sorted((tmp_path / "data").glob("episode-*.npz"))[-1]
    arrays = dict(np.load(last))
    arrays["image"] = arrays["image"][:, ::-1].copy()
    with open(last, "wb") as fh:
        np.savez(fh, **arrays)
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "does not reproduce" in res.stderr


def test_a_finished_cell_without_its_checkpoint_is_read_never_retrained(tmp_path):
    """Committed results on a fresh clone: the folder of a finished cell holds its logs and
    evaluations but no checkpoint.pt. main.py with the same budget says it is finished and writes
    nothing; a larger budget stops with one line; memory.report reads the cell, notes that its
    causal test cannot run, and leaves every file as it was."""
    out = tmp_path / "report"
    cell = out / "rssm_seed0"
    args = ["--configs", "distracting_memory", "debug", "rssm", "--memory.out", str(tmp_path / "data"),
            "--memory.width", "4", "--memory.episodes", "6", "--offline.test_episodes", "2",
            "--offline.probe_updates", "5", "--offline.eval_every", "2"]
    res = run_main(out, [*args, "--offline.updates", "2"], name="rssm_seed0")
    assert res.returncode == 0, res.stderr[-2000:]
    (cell / "checkpoint.pt").unlink()

    def snapshot():
        return {p.relative_to(cell): p.read_bytes() for p in cell.rglob("*") if p.is_file() and p.name != ".lock"}
    before = snapshot()
    assert {"metrics.jsonl", "eval/metrics.json", "eval/metrics_00000002.json"} <= {str(p) for p in before}
    res = run_main(out, [*args, "--offline.updates", "2"], name="rssm_seed0")
    assert res.returncode == 0 and "finished at update 2" in res.stdout, res.stderr[-2000:]
    assert snapshot() == before
    res = run_main(out, [*args, "--offline.updates", "4"], name="rssm_seed0")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "no checkpoint.pt" in res.stderr and "logged up to step 2" in res.stderr
    assert snapshot() == before
    res = run_main(out, [*args, "--offline.updates", "2", "--wm.lr", "0.01"], name="rssm_seed0")
    assert res.returncode == 2 and "wm.lr" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert snapshot() == before  # other settings than the finished cell's: never credited with its results
    cmd = [sys.executable, "-m", "memory.report", "--configs", "distracting_memory", "debug", "--out",
           str(out), "--backbones", "rssm", *args[4:], "--offline.updates", "2"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no checkpoint.pt" in res.stdout and "memory.cueswap cannot run" in res.stdout
    assert "main.py" not in res.stdout and "rssm seed 0: " in res.stdout and "read as it is" in res.stdout
    assert snapshot() == before and "| rssm | 1 | 2 |" in (out / "report.md").read_text()


def test_results_without_a_checkpoint_stop_a_new_run_with_one_line(tmp_path, capsys):
    """common.cli.prepare_logdir (the online agent's and the offline trainer's): an empty folder is a
    new run, and so is one whose logs end before the first checkpoint (a run killed before it could
    save); logs past it, or evaluations, without checkpoint.pt are an earlier run's results, which
    stay as they were (config.yaml too)."""
    from common.cli import logged_step, parse, prepare_logdir, unresumable
    config = parse(["--configs", "debug", "--logdir", str(tmp_path / "run")])  # run.checkpoint_every 100
    run = prepare_logdir(config)
    assert logged_step(run) is None and unresumable(config, run) is None and (run / "config.yaml").exists()
    (run / "metrics.jsonl").write_text('{"step": 50, "x": 1}\n{"st')
    assert logged_step(run) == 50 and prepare_logdir(config) == run  # killed before its first save
    (run / "eval").mkdir()
    assert unresumable(config, run) is None  # an empty eval/ folder holds nothing
    (run / "eval" / "metrics.json").write_text("{}")
    assert "(logged up to step 50)" in unresumable(config, run)
    (run / "metrics.jsonl").unlink()
    assert "(its evaluations)" in unresumable(config, run)
    (run / "eval" / "metrics.json").unlink()
    (run / "metrics.jsonl").write_text('{"step": 50, "x": 1}\n{"step": 100, "x": 2}\n')
    saved = (run / "config.yaml").read_bytes()
    with pytest.raises(SystemExit) as e:
        prepare_logdir(parse(["--configs", "debug", "--logdir", str(run), "--steps", "12345"]))
    assert e.value.code == 2 and (run / "config.yaml").read_bytes() == saved
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "logged up to step 100" in err[0] and "another --logdir" in err[0]
    with pytest.raises(SystemExit):  # a data-parallel rank > 0 (write=False) says the same
        prepare_logdir(config, write=False)
    assert "logged up to step 100" in capsys.readouterr().err
    (run / "checkpoint.pt").write_bytes(b"")  # with a checkpoint it is a run to resume
    assert prepare_logdir(config) == run


def test_a_cell_is_finished_at_its_budget_or_at_a_plateau_recomputed_from_its_loss_windows(tmp_path):
    """memory.train.finished and memory.runner.cell_state on planted folders: finished cells are
    read, unfinished ones without a checkpoint refused, anything else trained."""
    from memory.runner import cell_state
    from memory.train import finished
    args = ["distracting_memory", "debug"]
    config = merge(load_blocks(), [*args, "rssm"], {"offline.updates": 8}, cuda_available=False)
    cell = tmp_path / "rssm_seed0"
    assert finished(cell, config.offline) is None and cell_state(args, "rssm", "0", cell, [])[0] == "train"
    (cell / "eval").mkdir(parents=True)
    (cell / "config.yaml").write_text(config.dump())

    def last(updates, windows):
        (cell / "eval" / "metrics.json").write_text(json.dumps({"updates": updates, "loss_windows": windows}))
    last(8, [])
    assert "finished at update 8" in finished(cell, config.offline)
    assert cell_state(args, "rssm", "0", cell, ["--offline.updates", "8"])[0] == "finished"
    kind, why = cell_state(args, "rssm", "0", cell, ["--offline.updates", "16"])
    assert kind == "refused" and "no checkpoint.pt" in why
    last(4, [2.0, 1.999])  # the loss changed by 0.05% over the last window
    flat = merge(load_blocks(), [*args, "rssm"], {"offline.updates": 8, "offline.plateau": 0.01})
    assert "flattened" in finished(cell, flat.offline)
    strict = merge(load_blocks(), [*args, "rssm"], {"offline.updates": 8, "offline.plateau": 0.0001})
    assert finished(cell, strict.offline) is None and finished(cell, config.offline) is None  # plateau 0: never
    (cell / "checkpoint.pt").write_bytes(b"")
    assert finished(cell, flat.offline) is None  # with its checkpoint the run decides for itself
    assert cell_state(args, "rssm", "0", cell, ["--offline.updates", "16"])[0] == "train"


def test_multi_doors_keys_scores_and_guesses():
    """evaluate.doors_keys_scores / doors_keys_summary with 10 observed query frames (context 50,
    seen 60): the true frames score 1 everywhere, a blanked strip only in the strip's scores, black
    frames exactly the blank guess, and the frozen guess equals its definition on the arrays."""
    from memory import evaluate
    from tests.test_memory_envs import doors_keys_episodes
    episodes = doors_keys_episodes(3, 16, count=4)
    frames = np.stack([e["image"] for e in episodes])  # (4, 120, 16, 16, 3)
    context, seen = 50, 60
    held = np.stack([e["held"][seen:] for e in episodes])  # (4, 60, 8)
    is_open = np.stack([e["door_open"] for e in episodes])  # (4, 120, 3)

    def summary(imag):
        return evaluate.doors_keys_summary(evaluate.doors_keys_scores(episodes, frames[:, :context], imag,
                                                                    frames[:, seen:], seen))
    truth, curves = summary(frames[:, seen:])
    assert truth["held_acc_recon"] == truth["door_acc_recon"] == truth["held_acc_imagination"] == 1.0
    assert truth["door_acc_imagination"] == 1.0 and truth["gen_mse_strip"] == truth["gen_mse_window"] == 0
    door_curve = np.array(curves["door_acc"])
    assert curves["held_acc"] == [1.0] * 60 and (door_curve[np.isfinite(door_curve)] == 1).all()

    strip = frames[:, seen:].copy()
    strip[:, :, 0] = 0  # 16 px: row 0 is the strip
    blanked, _ = summary(strip)
    assert blanked["gen_mse_window"] == 0 < blanked["gen_mse_strip"] and blanked["door_acc_imagination"] == 1
    assert blanked["held_acc_imagination"] == pytest.approx((~held.any(-1)).mean())

    black, curves = summary(np.zeros_like(frames[:, seen:]))  # no key drawn, every door reads open
    assert black["held_acc_imagination"] == truth["held_acc_blank"] == pytest.approx((~held.any(-1)).mean())
    assert black["door_acc_imagination"] == truth["door_acc_blank"] < 1
    visible = evaluate.read_doors_keys(episodes, frames[:, seen:], seen)["visible"]
    frozen = (is_open[:, seen:] == is_open[:, seen - 1:seen])[visible].mean()
    assert truth["door_acc_frozen"] == pytest.approx(frozen) and truth["held_acc_frozen"] == pytest.approx(
        (held == np.stack([e["held"][seen - 1] for e in episodes])[:, None]).all(-1).mean())
    assert truth["held_acc_frozen"] < 1 and frozen < 1  # keys and doors change in the query



# ---- the context-cut test (memory/shortcontext.py) -------------------------------------------------

def test_cut_context_keeps_the_last_frames_of_the_context_and_the_whole_query():
    from memory.shortcontext import cut_context
    from tests.test_memory_envs import doors_keys_episodes
    e = doors_keys_episodes(3, 16, count=1, context=30, query=20)[0]
    cut = cut_context(e, 5)
    assert set(cut) == set(e) and all(len(v) == 25 for v in cut.values())
    for k in e:
        if k not in ("is_first", "action"):
            assert np.array_equal(cut[k], e[k][25:]), k
    assert (cut["phase"] == 0).sum() == 5 and np.array_equal(cut["action"][1:], e["action"][26:])
    assert cut["is_first"][0] and not cut["is_first"][1:].any() and not cut["action"][0].any()
    assert e["action"][25].any() and not e["is_first"][25]  # the original is left as it was
    whole = cut_context(e, 30)
    assert all(np.array_equal(whole[k], e[k]) for k in e)  # frame 0 already is a start without action
    for keep in (0, 31):
        with pytest.raises(ValueError, match=r"keep must be in \[1, 30\]"):
            cut_context(e, keep)


@pytest.mark.parametrize("query_observe", [0, 2])
def test_cut_context_scores_the_same_query_frames_against_the_same_truth(query_observe):
    """What a cut changes is only what the model observes: on recorded frames, every score of the
    imagined part and both guesses are identical with and without the cut, array for array."""
    from memory.evaluate import doors_keys_scores
    from memory.shortcontext import cut_context
    from tests.test_memory_envs import doors_keys_episodes
    episodes = doors_keys_episodes(3, 16, count=3, context=30, query=20)

    def read(eps):
        frames = np.stack([e["image"] for e in eps])
        seen = int((eps[0]["phase"] == 0).sum()) + query_observe
        out = doors_keys_scores(eps, frames[:, :seen - query_observe], frames[:, seen:], frames[:, seen:], seen)
        return {k: v for k, v in out.items() if not k.endswith("_recon")}
    full = read(episodes)
    assert full["visible"].any() and not full["held_frozen"].all()  # doors in view, keys picked up
    for keep in (1, 5, 30):
        cut = read([cut_context(e, keep) for e in episodes])
        assert set(cut) == set(full) and all(np.array_equal(cut[k], full[k]) for k in full), keep


@pytest.mark.parametrize("backbone", ["s4wm", "rssm"])
def test_shortcontext_pairs_its_draws_so_that_only_the_cut_moves_the_scores(backbone, monkeypatch):
    """A real (untrained) world model: the imagined part starts from the same generator state with
    and without a cut (the observed part draws fewer numbers under a cut), so cutting nothing
    (keep = the whole context) gives the whole context's scores exactly, draw by draw; a short cut
    changes what the model imagines; the gap is cut minus full for errors and full minus cut for
    PSNR, SSIM and accuracies."""
    from memory.shortcontext import SCORES, shortcontext
    from tests.test_memory_envs import doors_keys_episodes
    config = merge(load_blocks(), ["debug", backbone], {"env.image_size": 16})
    episodes = doors_keys_episodes(3, 16, count=3, context=24, query=16)
    torch.manual_seed(0)
    wm = build_world_model(config, episodes[0]["action"].shape[-1]).eval()
    states, imagine = [], wm.imagine

    def recording(*args, **kwargs):
        states.append(torch.get_rng_state())
        return imagine(*args, **kwargs)
    monkeypatch.setattr(wm, "imagine", recording)
    r = shortcontext(wm, episodes, "multi_doors_keys", [24, 2], draws=2, batch=2, chunk=16)
    per_condition = 2  # batches of 2 of 3 episodes; conditions full, 24, 2 in turn, then the next draw
    blocks = [states[i:i + per_condition] for i in range(0, len(states), per_condition)]
    assert len(blocks) == 6
    for d in range(2):
        full, whole, short = blocks[3 * d:3 * d + 3]
        assert all(torch.equal(x, y) and torch.equal(x, z) for x, y, z in zip(full, whole, short))
    assert not torch.equal(blocks[0][0], blocks[3][0]) and not torch.equal(blocks[0][0], blocks[0][1])
    assert r["context"] == 24 and r["keep"] == [24, 2] and set(r["full"]) == set(SCORES["multi_doors_keys"])
    assert r["per_draw"]["24"] == r["per_draw"]["full"] and all(v == 0 for v in r["gap"]["24"].values())
    assert all(v == 0 for v in r["gap_se"]["24"].values())
    assert r["per_draw"]["full"][0] != r["per_draw"]["full"][1]  # the latents are sampled
    assert r["cut"]["2"]["gen_mse"] != r["full"]["gen_mse"]
    assert r["guesses"]["held_acc_frozen"] == r["per_draw"]["2"][0]["held_acc_frozen"]  # from the arrays
    higher = {"gen_psnr", "gen_ssim", "held_acc_imagination", "door_acc_imagination"}
    for k, v in r["gap"]["2"].items():
        assert v == pytest.approx((r["full"][k] - r["cut"]["2"][k]) * (1 if k in higher else -1))
        assert r["full"][k] == pytest.approx(np.mean([d[k] for d in r["per_draw"]["full"]]))
    with pytest.raises(ValueError, match="rooms and multi_doors_keys"):
        shortcontext(wm, episodes, "distracting_memory", [2], draws=1)


def test_shortcontext_command_on_a_trained_cell_and_in_the_report(tmp_path, capsys):
    """memory.shortcontext on a tiny Multi Doors Keys cell: the default cuts below its 12-frame
    context, the JSON it writes, the report's table from it; bad --keep values and a cell of another
    benchmark get one line each."""
    from memory import shortcontext
    from memory.report import causal_tests
    args = ["--configs", "multi_doors_keys", "debug", "rssm", "--memory.out", str(tmp_path / "data"),
            "--offline.updates", "2", *MDK]
    res = run_main(tmp_path, args)
    assert res.returncode == 0, res.stderr[-2000:]
    cell = tmp_path / "run"
    cmd = [sys.executable, "-m", "memory.shortcontext", "--logdir", str(cell), "--draws", "2"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((cell / "eval" / "shortcontext.json").read_text())
    assert out["updates"] == 2 and out["draws"] == 2 and out["keep"] == [1] and out["context"] == 12
    assert len(out["per_draw"]["1"]) == 2 and "| last 1: gap |" in res.stdout and "| all 12 |" in res.stdout
    text = "\n".join(causal_tests({"rssm_seed0": cell}))
    assert "`memory.shortcontext`" in text and "| rssm_seed0 | 2 | 2 | last 1: gap |" in text
    assert "| rssm_seed0 | 2 | 2 | all 12 |" in text

    def run(*extra):  # in this process: the argument checks, without another start of torch
        capsys.readouterr()
        threads = torch.get_num_threads()
        try:
            shortcontext.main(["--logdir", str(cell), "--draws", "1", *extra])
        except SystemExit as e:
            return e.code, capsys.readouterr().err.strip()
        finally:
            torch.set_num_threads(threads)  # main() sets --threads
        return 0, ""
    for keep, why in (("0,4", "--keep values must be in [1, 11]"), ("12", "--keep values must be in [1, 11]"),
                      ("a", "--keep must be comma-separated integers")):
        code, err = run("--keep", keep)
        assert code == 2 and err.startswith(f"error: {why}") and len(err.splitlines()) == 1, err
    assert run("--keep", "3,6")[0] == 0
    assert json.loads((cell / "eval" / "shortcontext.json").read_text())["keep"] == [3, 6]
    (cell / "config.yaml").write_text((cell / "config.yaml").read_text().replace(
        "env: multi_doors_keys", "env: distracting_memory"))
    code, err = run()
    assert code == 2 and "the test is for rooms and Multi Doors Keys cells" in err and len(err.splitlines()) == 1
