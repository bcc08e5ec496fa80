"""Backbone benchmark: training speed, imagination throughput, peak memory and one agent update
for S4WM, S5WM, RSSM-TBTT and TSSM-XL at the same sizes (the speed/memory comparison of Deng et al.
2023, "Facing Off World Model Backbones"). Results and their reading: docs/benchmarks.md.

    python -m bench.backbones [--device cpu|cuda] [--size cpu|debug|paper] [--lengths 64,256,1000]
                              [--out reports/bench] [--threads N] [--match-params] [--help]

Cases (each in a fresh subprocess unless --in-process, so a case's peak memory is its own):
    train    one training step of the whole world model: wm.loss on a batch (B, T), backward, AdamW
    seq      the same for the sequence model alone: wm.observe on random embeddings (B, T, E),
             i.e. posterior, input MLP, core/GRU and prior without CNN and heads;
             loss = KL terms + mean h^2
    imagine  wm.imagine from wm.initial_state(N) with random one-hot actions, for N in
             --imag-batches and horizons Hz in --horizons, without and with decoding every imagined
             frame (one decoder call per imagined step); throughput = N * Hz / time
    agent    build_agent + Agent.update on a (B, --agent-length) batch at the config's sizes, in
             each of --action-modes: onehot (discrete actions, ac.actor_grad reinforce, as the
             miniworld block) and continuous (actions in [-1, 1], ac.actor_grad straight_through:
             dynamics backprop through imagination, as the dmc block); every table names the mode
Long sequences, as training with train.carry_state runs them (| = a chunk border): per chunk
observe/loss, backward and AdamW, the state carried to the next chunk detached:
    rssm       |tbtt_length|tbtt_length|..   (RSSM-TBTT)
    tssm       |mem_len|mem_len|..           (TSSM-XL; `tssm1`, seq only: one pass, no chunks)
    s4wm/s5wm  one parallel pass over T
Timing: --warmup untimed steps on the first --warmup-length steps of the batch or horizon
(allocate optimiser state, kernels and memory without paying a whole long step), then up to
--repeats timed steps over all T (fewer once --budget seconds are spent, at least one); medians
are reported. Memory ("mem"): peak minus the level after the model, optimiser and batch were built
(CUDA: torch's max allocated; CPU: the process's peak resident set). CPU case processes get an
RLIMIT_DATA of --mem-limit GiB, so a case too big for the machine fails with an allocation error
instead of waking the OOM killer.
Writes <out>/bench.md, bench.json, bench.png and profile_<kind>_<backbone>.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

import torch

from bench.backbone_cases import (ACTION_MODES, CASES, SIZES, config_for, matched_overrides,
                                  param_counts)
from bench.backbone_report import plot, render
from bench.timing import PeakMemory, measure, profile_phases, profile_top
from common.machine import machine
from world_models import BACKBONES

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARK = "BENCH_RESULT "  # prefix of the one stdout line a case subprocess answers with


# ---- one case -----------------------------------------------------------------------------------
def run_case(spec: dict) -> list[dict]:
    """Run one case spec (see case_specs) in this process; one record per measurement."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    device = torch.device(spec["device"])
    cfg = config_for(spec["size"], spec["backbone"], spec["overrides"])
    records = []
    for label, step, items, wm in CASES[spec["kind"]](cfg, spec, device):
        mem = PeakMemory(device)  # baseline: model, optimiser and batch exist
        times = measure(step, device, spec["warmup"], spec["repeats"], spec["budget"],
                        spec["warmup_length"])
        med = statistics.median(times)
        rec = {k: spec[k] for k in ("kind", "backbone", "length", "batch")}
        rec.update(label, **mem.read(), **param_counts(wm), times=[round(t, 4) for t in times],
                   median_s=round(med, 5), it_s=round(1 / med, 4), items_s=round(items / med, 1),
                   overrides=spec["overrides"])
        if spec["kind"] in ("train", "seq") and spec["length"] == spec["profile_length"]:
            path = pathlib.Path(spec["out"]) / f"profile_{spec['kind']}_{spec['backbone']}.txt"
            rec["profile"] = profile_top(step, device, path)
        if spec["kind"] == "agent" and spec["profile_length"]:
            rec["phases"] = profile_phases(step, device)
        records.append(rec)
    return records


# ---- driver -------------------------------------------------------------------------------------
def case_specs(args, overrides: dict) -> list[dict]:
    """Every case to run, ordered so the backbones of one length run back to back (similar load)."""
    base = {k: getattr(args, k) for k in ("size", "device", "threads", "seed", "batch", "act_dim",
                                          "warmup", "warmup_length", "repeats", "budget",
                                          "profile_length", "out")}
    specs = []

    def add(kind, backbone, length, settings=None, **extra):
        specs.append({**base, **extra, "kind": kind, "backbone": backbone, "length": length,
                      "overrides": {**overrides[backbone.rstrip("1")], **(settings or {})}})
    for T in args.lengths:
        if "train" in args.kinds:
            for b in args.backbones:
                add("train", b, T)
        if "seq" in args.kinds:
            for b in args.backbones + (["tssm1"] if args.tssm_onepass and "tssm" in args.backbones
                                       else []):
                add("seq", b, T)
    if "imagine" in args.kinds:
        for b in args.backbones:
            add("imagine", b, 0, imag_batches=args.imag_batches, horizons=args.horizons)
    if "agent" in args.kinds:
        for mode in args.action_modes:  # the backbones of one mode back to back
            for b in args.backbones:
                add("agent", b, args.agent_length, action_mode=mode,
                    settings={"ac.actor_grad": ACTION_MODES[mode]["ac.actor_grad"]})
    return specs


def spawn(spec: dict, timeout: float, mem_limit_gb: float) -> list[dict]:
    """run_case in a fresh interpreter; a crash or timeout becomes one record with an 'error'."""
    cmd = [sys.executable, "-m", "bench.backbones", "--case", json.dumps(spec)]
    fail = {k: spec[k] for k in ("kind", "backbone", "length", "batch", "action_mode") if k in spec}

    def limit():  # in the child: allocations past the limit fail (mmap counts since Linux 4.7)
        if spec["device"] == "cpu" and mem_limit_gb > 0:
            size = int(mem_limit_gb * 2 ** 30)
            resource.setrlimit(resource.RLIMIT_DATA, (size, size))
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return [{**fail, "error": f"timeout after {timeout:.0f} s"}]
    lines = [l for l in proc.stdout.splitlines() if l.startswith(MARK)]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return [{**fail, "error": tail[:200]}]
    return json.loads(lines[-1][len(MARK):])


# ---- command line -------------------------------------------------------------------------------
def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _words(choices):
    def parse(text: str) -> list[str]:
        words = [w.strip() for w in text.split(",") if w.strip()]
        bad = [w for w in words if w not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad} (choices: {', '.join(choices)})")
        return words
    return parse


def _override(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return tuple(text.split("=", 1))


def _available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("MemAvailable")) / 2 ** 20
    except (OSError, StopIteration):
        return 0.0


def parse_args(argv):
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m bench.backbones", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if cuda else "cpu")
    p.add_argument("--size", choices=list(SIZES), default="cpu",
                   help="configs.yaml size block: cpu, debug, or paper (= defaults, DreamerV3-S)")
    p.add_argument("--lengths", type=_ints, default=None,
                   help="sequence lengths T (default 64,256,1000 on CPU, 64,256,1000,2000 on GPU)")
    p.add_argument("--backbones", type=_words(BACKBONES), default=list(BACKBONES))
    p.add_argument("--kinds", type=_words(list(CASES)), default=list(CASES),
                   help="which cases: train,seq,imagine,agent")
    p.add_argument("--batch", type=int, default=16, help="B of the training and agent cases")
    p.add_argument("--imag-batches", type=_ints, default=[16, 256], help="N of imagination")
    p.add_argument("--horizons", type=_ints, default=[15, 64], help="imagination horizons Hz")
    p.add_argument("--agent-length", type=int, default=64, help="T of the agent-update batch")
    p.add_argument("--act-dim", type=int, default=4, help="action size (one-hot or continuous)")
    p.add_argument("--action-modes", type=_words(list(ACTION_MODES)), default=list(ACTION_MODES),
                   help="agent case: onehot (REINFORCE), continuous (dynamics backprop)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="torch intra-op threads (default: the cores this process may use)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    p.add_argument("--warmup-length", type=int, default=16,
                   help="warm-up steps run on the first this-many steps of the batch or horizon")
    p.add_argument("--repeats", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--budget", type=float, default=20.0,
                   help="stop repeating a case once its timed steps took this many seconds")
    p.add_argument("--match-params", action="store_true",
                   help="pick S4/S5 blocks and TSSM layers so sequence-model params match RSSM's")
    p.add_argument("--tssm-onepass", action=argparse.BooleanOptionalAction, default=True,
                   help="also time TSSM's sequence model in one unchunked pass (row tssm1)")
    p.add_argument("--profile-length", type=int, default=256,
                   help="torch.profiler one train/seq step at this T (0: never)")
    p.add_argument("--set", type=_override, action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every backbone, e.g. --set wm.d_model=128")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--in-process", action="store_true",
                   help="run cases in this process (faster start; CPU peaks become upper bounds)")
    p.add_argument("--case-timeout", type=float, default=900.0, help="seconds per case subprocess")
    p.add_argument("--mem-limit", type=float, default=round(0.8 * _available_gb(), 1),
                   help="GiB a CPU case process may allocate (default 80%% of available; 0: none)")
    p.add_argument("--out", default="reports/bench", help="folder for bench.md/json/png")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case spec (JSON)
    args = p.parse_args(argv)
    if args.lengths is None:
        args.lengths = [64, 256, 1000, 2000] if args.device == "cuda" else [64, 256, 1000]
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.case:
        print(MARK + json.dumps(run_case(json.loads(args.case))), flush=True)
        return []
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info, start = machine(device), time.time()
    specs = case_specs(args, matched_overrides(args))
    results = []
    for i, spec in enumerate(specs):
        records = (run_case(spec) if args.in_process
                   else spawn(spec, args.case_timeout, args.mem_limit))
        for r in records:
            what = r.get("error") or (f"{r['median_s']:.4g} s/step, {r['items_s']:.4g} items/s, "
                                      f"mem {r['mem_mb']:.0f} MiB")
            extra = (f" N={r['imag_batch']} Hz={r['horizon']} decode={r['decode']}"
                     if "horizon" in r else f" T={r['length']}")
            if "action_mode" in r:
                extra += f" {ACTION_MODES[r['action_mode']]['label']}"
            print(f"[{i + 1}/{len(specs)} {time.time() - start:5.0f}s] {r['kind']} {r['backbone']}"
                  f"{extra}: {what}", flush=True)
        results += records
    info.update(wall_s=time.time() - start, loadavg_end=os.getloadavg())
    report = render(info, results, args)
    (out / "bench.md").write_text(report)
    (out / "bench.json").write_text(json.dumps(
        {"machine": info, "args": vars(args), "results": results}, indent=1))
    plot(results, args, out / "bench.png")
    print(report + f"\nwrote {out / 'bench.md'}, {out / 'bench.json'}, {out / 'bench.png'}")
    return results


if __name__ == "__main__":
    main()
