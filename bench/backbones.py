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
    agent    build_agent + Agent.update on a (B, --agent-length) batch at the config's sizes
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
import math
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from common.config import load_blocks, merge
from common.tree import detach
from world_models import build_world_model, losses

ROOT = pathlib.Path(__file__).resolve().parent.parent
BACKBONES = ["s4wm", "s5wm", "rssm", "tssm"]
SIZES = {"cpu": ["cpu"], "debug": ["debug"], "paper": []}  # --size word -> configs.yaml blocks
NOT_SEQ = ("encoder.", "decoder.", "reward_head.", "cont_head.")  # outside the sequence model
DEPTH_KEY = {"s4wm": "s4.n_blocks", "s5wm": "s5.n_blocks", "tssm": "tssm.n_layers"}
MARK = "BENCH_RESULT "  # prefix of the one stdout line a case subprocess answers with


# ---- config, model, data ----------------------------------------------------------------------
def config_for(size: str, backbone: str, overrides: dict):
    """tssm1 is tssm run without chunks; everything else is the backbone's own block."""
    return merge(load_blocks(), SIZES[size] + [backbone.rstrip("1")], overrides)


def param_counts(wm) -> dict:
    seq = sum(p.numel() for n, p in wm.named_parameters() if not n.startswith(NOT_SEQ))
    return {"seq_params": seq, "total_params": sum(p.numel() for p in wm.parameters())}


def matched_overrides(args) -> dict:
    """{backbone: overrides}. With --match-params the block/layer count of S4WM/S5WM/TSSM whose
    sequence-model parameters are closest (in ratio) to RSSM's; d_model/units stay the same."""
    base = dict(args.set)
    out = {b: dict(base) for b in args.backbones}
    if not args.match_params:
        return out

    def seq(b, over):
        wm = build_world_model(config_for(args.size, b, over), args.act_dim)
        return param_counts(wm)["seq_params"]

    target = seq("rssm", base)
    for b in args.backbones:
        key = DEPTH_KEY.get(b)
        if key:
            depth = min(range(1, 9), key=lambda d: abs(math.log(seq(b, {**base, key: d}) / target)))
            out[b][key] = depth
    return out


def make_batch(B: int, T: int, act_dim: int, image_size: int, seed: int, device) -> dict:
    """Seeded replay-like batch (B, T, ...): random pixels and actions, an episode start at t=0."""
    g = torch.Generator().manual_seed(seed)
    action = F.one_hot(torch.randint(0, act_dim, (B, T), generator=g), act_dim).float()
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    action[:, 0] = 0
    data = {"image": torch.randint(0, 256, (B, T, image_size, image_size, 3), generator=g,
                                   dtype=torch.uint8),
            "action": action, "reward": torch.randn(B, T, generator=g), "is_first": is_first,
            "is_last": torch.zeros(B, T, dtype=torch.bool),
            "is_terminal": torch.zeros(B, T, dtype=torch.bool)}
    return {k: v.to(device) for k, v in data.items()}


# ---- measuring ----------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, warmup: int, repeats: int, budget: float, warm_length: int) -> list[float]:
    """fn(length) runs one step on the first `length` steps (None: all); returns the timed ones."""
    for _ in range(warmup):
        fn(warm_length)
    sync(device)
    times = []
    while len(times) < max(1, repeats) and sum(times) <= budget:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _proc_status(field: str) -> float:
    """A /proc/self/status size in MiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        line = next(l for l in f if l.startswith(field + ":"))
    return int(line.split()[1]) / 1024


class PeakMemory:
    """Peak memory between construction and read(), in MiB: torch's max allocated on CUDA; on CPU
    the peak resident set, reset at construction by `clear_refs 5` (Linux >= 4.0) so that several
    cases in one process each get their own peak (an upper bound: freed heap may stay resident)."""

    def __init__(self, device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device) / 2 ** 20
            return
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.base = _proc_status("VmRSS")

    def read(self) -> dict:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2 ** 20
        else:
            peak = _proc_status("VmHWM")
        return {"peak_mb": round(peak, 1), "mem_mb": round(peak - self.base, 1)}


def profiled(fn, device):
    """torch.profiler over one call of fn -> (its key_averages, whether device times exist)."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    return prof.key_averages(), cuda


def profile_top(fn, device, path: pathlib.Path, top: int = 8) -> list[dict]:
    """torch.profiler over one call of fn: full table to `path`; returns the top ops (self time)."""
    events, cuda = profiled(fn, device)
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    path.write_text(events.table(sort_by=attr, row_limit=30, max_name_column_width=60))
    total = sum(getattr(e, attr) for e in events) or 1.0
    best = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:top]
    return [{"op": e.key, "self_ms": round(getattr(e, attr) / 1e3, 1),
             "pct": round(100 * getattr(e, attr) / total, 1), "calls": e.count} for e in best]


# The record_function labels of one Agent.update (world_models/base.py, agent/), in order.
PHASES = ("wm/encode", "wm/observe", "wm/decode_heads_loss", "wm/backward_step", "ac/imagine",
          "ac/heads_loss", "ac/backward_step")


def profile_phases(fn, device) -> dict:
    """Seconds spent in each labelled phase of one call of fn (an Agent.update) under
    torch.profiler; the profiler's overhead inflates the parts with many small ops (RSSM's loop),
    so compare shares within a row, not against the timed update. On CUDA a label's GPU-side
    annotation span is used where the profiler records one (its CPU range only times the kernel
    launches; not yet run on a GPU), else the CPU range."""
    from torch.autograd import DeviceType
    averages, _ = profiled(fn, device)
    chosen = {}
    for e in averages:  # a label may appear as a CPU range and as a GPU annotation
        if e.key in PHASES and (e.key not in chosen or e.device_type != DeviceType.CPU):
            chosen[e.key] = e

    def seconds(e):
        return (e.cpu_time_total if e.device_type == DeviceType.CPU else e.device_time_total) / 1e6
    return {k: round(seconds(chosen[k]), 3) for k in PHASES if k in chosen}


# ---- cases: each yields (label, step function, items per step, world model) --------------------
def chunked_step(wm, opt, B: int, T: int, chunk: int, loss_fn):
    """One training step over (B, T) in chunks of `chunk`: per chunk loss, backward, AdamW; the
    state crosses chunk borders detached. loss_fn(start, end, state) -> (loss, new_state)."""
    def step(length=None):
        state, end = wm.initial_state(B), min(length or T, T)
        for s in range(0, end, chunk):
            loss, state = loss_fn(s, min(s + chunk, end), state)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state = detach(state)
    return step


def _chunk(cfg, backbone: str, T: int) -> int:
    return {"rssm": cfg.rssm.tbtt_length, "tssm": cfg.tssm.mem_len}.get(backbone, T)


def case_train(cfg, spec, device):
    B, T = spec["batch"], spec["length"]
    wm = build_world_model(cfg, spec["act_dim"]).to(device)
    data = make_batch(B, T, spec["act_dim"], cfg.env.image_size, spec["seed"], device)
    opt = torch.optim.AdamW(wm.parameters(), lr=1e-4)

    def loss_fn(s, e, state):
        loss, _, _, state, _ = wm.loss({k: v[:, s:e] for k, v in data.items()}, state)
        return loss, state
    yield {}, chunked_step(wm, opt, B, T, _chunk(cfg, spec["backbone"], T), loss_fn), B * T, wm


def case_seq(cfg, spec, device):
    B, T = spec["batch"], spec["length"]
    wm = build_world_model(cfg, spec["act_dim"]).to(device)
    data = make_batch(B, T, spec["act_dim"], 4, spec["seed"], device)  # 4x4 images: only actions
    g = torch.Generator().manual_seed(spec["seed"] + 1)
    embed = torch.randn(B, T, wm.encoder.out_size, generator=g).to(device)  # (B, T, E)
    opt = torch.optim.AdamW([p for n, p in wm.named_parameters() if not n.startswith(NOT_SEQ)],
                            lr=1e-4)

    def loss_fn(s, e, state):
        out, state, _ = wm.observe(embed[:, s:e], data["action"][:, s:e],
                                   data["is_first"][:, s:e], state)
        dyn, rep, _ = losses.kl_balance(wm.latent, out["post"], out["prior"], 0.0)  # (B, t) each
        return dyn.mean() + rep.mean() + out["h"].square().mean(), state
    yield {}, chunked_step(wm, opt, B, T, _chunk(cfg, spec["backbone"], T), loss_fn), B * T, wm


def case_imagine(cfg, spec, device):
    wm = build_world_model(cfg, spec["act_dim"]).to(device)
    A = spec["act_dim"]
    for N in spec["imag_batches"]:
        for Hz in spec["horizons"]:
            g = torch.Generator().manual_seed(spec["seed"])
            actions = F.one_hot(torch.randint(0, A, (N, Hz), generator=g), A).float().to(device)
            for decode in (False, True):
                def step(length=None, N=N, Hz=Hz, actions=actions, decode=decode):
                    hz = min(length or Hz, Hz)
                    with torch.no_grad():
                        feat = wm.imagine(wm.initial_state(N), actions, hz)["feat"]  # (N, hz+1, F)
                        if decode:
                            for t in range(1, hz + 1):
                                wm.decoder(feat[:, t])  # (N, H, W, C)
                yield {"imag_batch": N, "horizon": Hz, "decode": decode}, step, N * Hz, wm


def case_agent(cfg, spec, device):
    from agent.agent import build_agent
    B, T = spec["batch"], spec["length"]
    agent = build_agent(cfg, spec["act_dim"], discrete=True, device=device)
    batch = {k: v.numpy() for k, v in make_batch(B, T, spec["act_dim"], cfg.env.image_size,
                                                 spec["seed"], "cpu").items()}  # replay: numpy
    yield {}, (lambda length=None: agent.update(batch)), B * T, agent.wm


CASES = {"train": case_train, "seq": case_seq, "imagine": case_imagine, "agent": case_agent}


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

    def add(kind, backbone, length, **extra):
        specs.append({**base, **extra, "kind": kind, "backbone": backbone, "length": length,
                      "overrides": overrides[backbone.rstrip("1")]})
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
        for b in args.backbones:
            add("agent", b, args.agent_length)
    return specs


def spawn(spec: dict, timeout: float, mem_limit_gb: float) -> list[dict]:
    """run_case in a fresh interpreter; a crash or timeout becomes one record with an 'error'."""
    cmd = [sys.executable, "-m", "bench.backbones", "--case", json.dumps(spec)]
    fail = {k: spec[k] for k in ("kind", "backbone", "length", "batch")}

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


def machine(device) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "python": platform.python_version(), "loadavg_start": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, text=True,
                             capture_output=True, timeout=10).stdout.strip()
        info["commit"] = rev or "unknown"
    except (OSError, subprocess.SubprocessError):
        info["commit"] = "unknown"
    return info


# ---- report -------------------------------------------------------------------------------------
def _num(x: float) -> str:
    return "—" if x is None else f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def _find(results, **key):
    return next((r for r in results if all(r.get(k) == v for k, v in key.items())), None)


def _cells(r, ref, field="it_s") -> list[str]:
    """value, ratio to RSSM, memory; 'err' where the case failed."""
    if r is None:
        return ["—", "—", "—"]
    if "error" in r:
        return ["err", "—", "—"]
    ratio = r[field] / ref[field] if ref and "error" not in ref else None
    return [_num(r[field]), _num(ratio) + "x" if ratio else "—", _num(max(0.0, r["mem_mb"]))]


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render(info: dict, results: list[dict], args) -> str:
    ok = [r for r in results if "error" not in r]
    names = list(dict.fromkeys(r["backbone"] for r in results))
    lines = [f"## Backbone benchmark: size `{args.size}`, device `{args.device}`", "",
             f"Machine: {info.get('gpu') or info['cpu']} ({info['cores']} cores visible, "
             f"{args.threads} torch threads), torch {info['torch']}, python {info['python']}, "
             f"commit {info['commit']}; load average {info['loadavg_start'][0]:.1f} at start, "
             f"{info.get('loadavg_end', [0])[0]:.1f} at end; {info.get('wall_s', 0):.0f} s in all.",
             f"Batch B={args.batch}; {args.warmup} warm-up step(s) on the first "
             f"{args.warmup_length} steps, then up to {args.repeats} timed steps (fewer past "
             f"{args.budget:g} s per case), median. Chunks (one update each, state carried): RSSM "
             f"rssm.tbtt_length, TSSM tssm.mem_len; S4WM/S5WM and tssm1 one pass. mem = peak minus "
             f"the level after building model, optimiser and batch (MiB; CPU: resident set, GPU: "
             f"max allocated); CPU cases limited to {args.mem_limit:g} GiB.", "",
             "### Parameters", "", "| backbone | overrides | sequence model | total |",
             "|---|---|---|---|"]
    for b in names:
        r = next((r for r in ok if r["backbone"] == b), None)
        if r:
            over = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "—"
            lines.append(_row([b, over, f"{r['seq_params']:,}", f"{r['total_params']:,}"]))
    lines += ["", "### Training step: iterations/s (x RSSM-TBTT at the same T), mem MiB", "",
              "| T | backbone | world model it/s | x RSSM | mem "
              "| sequence model it/s | x RSSM | mem |",
              "|---|---|---|---|---|---|---|---|"]
    for T in args.lengths:
        ref_t, ref_s = (_find(results, kind=k, backbone="rssm", length=T) for k in ("train", "seq"))
        for b in names:
            tr, sq = (_find(results, kind=k, backbone=b, length=T) for k in ("train", "seq"))
            if tr or sq:
                lines.append(_row([T, b] + _cells(tr, ref_t) + _cells(sq, ref_s)))
    lines += _imagine_table(results, args) + _agent_table(results, names)
    lines += _phase_table(results, names)
    lines += _profile_table(ok, args)
    errors = [r for r in results if "error" in r]
    if errors:
        lines += ["", "Failed cases:"] + [f"- {r['kind']} {r['backbone']} T={r['length']}: "
                                          f"{r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def _imagine_table(results, args) -> list[str]:
    rows = [r for r in results if r["kind"] == "imagine"]
    if not rows:
        return []
    lines = ["", "### Imagination: imagined frames/s (x RSSM), mem MiB", "",
             "| N | Hz | backbone | frames/s | x RSSM | mem | decoded frames/s | x RSSM | mem |",
             "|---|---|---|---|---|---|---|---|---|"]
    for N in args.imag_batches:
        for Hz in args.horizons:
            key = dict(kind="imagine", imag_batch=N, horizon=Hz)
            ref = [_find(results, **key, backbone="rssm", decode=d) for d in (False, True)]
            for b in dict.fromkeys(r["backbone"] for r in rows):
                cells = [_cells(_find(results, **key, backbone=b, decode=d), ref[d], "items_s")
                         for d in (False, True)]
                lines.append(_row([N, Hz, b] + cells[0] + cells[1]))
    return lines


def _agent_table(results, names) -> list[str]:
    rows = {r["backbone"]: r for r in results if r["kind"] == "agent"}
    if not rows:
        return []
    lines = ["", "### One Agent.update (world model + actor-critic)", "",
             "| backbone | B x T | s/update | updates/s | x RSSM | mem |",
             "|---|---|---|---|---|---|"]
    for b in names:
        if b in rows:
            r = rows[b]
            val, ratio, mem = _cells(r, rows.get("rssm"))
            sec = _num(r["median_s"]) if "error" not in r else "err"
            lines.append(_row([b, f"{r['batch']} x {r['length']}", sec, val, ratio, mem]))
    return lines


def _phase_table(results, names) -> list[str]:
    rows = {r["backbone"]: r for r in results if r["kind"] == "agent" and "phases" in r}
    if not rows:
        return []
    lines = ["", "### One Agent.update by phase: seconds under torch.profiler (share)", "",
             "| backbone | " + " | ".join(PHASES) + " | profiled total |",
             "|---|" + "---|" * (len(PHASES) + 1)]
    for b in names:
        if b in rows:
            ph = rows[b]["phases"]
            total = sum(ph.values()) or 1.0
            cells = [f"{_num(ph[k])} ({100 * ph[k] / total:.0f}%)" if k in ph else "-"
                     for k in PHASES]
            lines.append(_row([b, *cells, _num(total)]))
    return lines


def _profile_table(ok, args) -> list[str]:
    rows = [r for r in ok if "profile" in r]
    if not rows:
        return []
    lines = ["", f"### Top ops by self time, one training step at T={args.profile_length}", "",
             "| step | backbone | top ops (share of self time, calls) |", "|---|---|---|"]
    for r in rows:
        ops = "; ".join(f"{p['op']} {p['pct']:.0f}% ({p['calls']})" for p in r["profile"][:6])
        lines.append(_row([r["kind"], r["backbone"], ops]))
    return lines


def plot(results: list[dict], args, path: pathlib.Path) -> None:
    """Left: seconds per training step vs T (log-log), solid world model, dashed sequence model.
    Right: imagined frames/s per backbone (log), without and with decoding."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in results if "error" not in r]
    names = list(dict.fromkeys(r["backbone"] for r in ok))
    colors = {b: f"C{i}" for i, b in enumerate(dict.fromkeys(n.rstrip("1") for n in names))}
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    for b in names:
        for kind, style in (("train", "-"), ("seq", "--")):
            pts = sorted((r["length"], r["median_s"]) for r in ok
                         if r["kind"] == kind and r["backbone"] == b)
            if pts:
                what = "world model" if kind == "train" else "sequence model"
                ax.plot(*zip(*pts), style if b != "tssm1" else ":", marker="o",
                        color=colors[b.rstrip("1")], label=f"{b} {what}")
    ax.set(xscale="log", yscale="log", xlabel="sequence length T",
           ylabel="seconds per training step",
           title=f"training step, B={args.batch}, size {args.size}")
    ax.set_xticks(args.lengths, [str(T) for T in args.lengths])
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    if ax.lines:
        ax.legend(fontsize=7)
    combos = [(N, Hz, d) for N in args.imag_batches for Hz in args.horizons for d in (False, True)]
    bars = [b for b in names if any(r["kind"] == "imagine" and r["backbone"] == b for r in ok)]
    width = 0.8 / max(1, len(bars))
    for i, b in enumerate(bars):
        vals = [(_find(ok, kind="imagine", backbone=b, imag_batch=N, horizon=Hz, decode=d) or {})
                .get("items_s", 0) for N, Hz, d in combos]
        bx.bar([j + i * width for j in range(len(combos))], vals, width, label=b, color=colors[b])
    bx.set_xticks([j + 0.4 - width / 2 for j in range(len(combos))],
                  [f"N={N}\nHz={Hz}{' +dec' if d else ''}" for N, Hz, d in combos], fontsize=7)
    bx.set(ylabel="imagined frames / s", title="imagination throughput")
    if bars:
        bx.set_yscale("log")
        bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    p.add_argument("--act-dim", type=int, default=4, help="one-hot action size")
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
