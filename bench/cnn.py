"""The image encoder and decoder against the machine's peak: how much of the CPU's (or GPU's)
multiply-add rate the CNN passes of one update reach (issue 18, item 4).

    python -m bench.cnn [--size paper|cpu|debug] [--batch 16] [--length 64] [--threads N]
                        [--repeats 5] [--device cpu|cuda] [--out reports/bench_cnn]

What is timed, on B x T random frames at the size's image size and CNN depth (configs.yaml: the
encoder's stride-2 convs and the decoder's transposed convs of world_models/nets.py, channels_last):
    encoder forward            uint8 frames -> embedding
    encoder forward+backward   the same with a backward from a random cotangent (no input grad)
    decoder forward            features -> image means
    decoder forward+backward   the same with the backward (into the features too, as training does)
Multiply-adds are counted by torch.utils.flop_counter.FlopCounterMode over the same call (FLOPs / 2:
convolutions, transposed convolutions and the decoder's input Linear; GroupNorm, SiLU and the
image conversion count nothing but take time, which is the point of comparing).

Peak, two ways: the theoretical multiply-add rate, cores x clock x MACs per cycle (cores: the
threads, at most the physical cores, since SMT siblings share one core's FMA units;
--macs-per-cycle, default 16: AVX2 with two 256-bit FMA units, 8 float32 lanes each; the clock is
/proc/cpuinfo's current reading of the first core, a snapshot that may be below the sustained
all-core clock: pass --ghz to fix it), and the rate a large float32 matmul reaches on the same
threads (--gemm 2048: what the BLAS gets, the practical ceiling). Each pass is reported as G
multiply-adds/s and as a share of both. On CUDA, TF32 is switched off for both the convolutions and
the matmul, so the two are compared in full float32.
Writes <out>/cnn.md and cnn.json (median of --repeats after one warm-up).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.backbone_cases import SIZES, config_for
from bench.timing import measure
from common.machine import machine
from world_models import build_world_model


def clock_ghz() -> float | None:
    """The CPU clock /proc/cpuinfo reports (the first core's 'cpu MHz'), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(float(l.split(":")[1]) for l in f if l.startswith("cpu MHz")) / 1e3
    except (OSError, StopIteration, ValueError):
        return None


def physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs of the CPUs this process may run on, or None."""
    try:
        allowed, cores, cpu, package = os.sched_getaffinity(0), set(), None, "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    cpu = int(value)
                elif key == "physical id":
                    package = value
                elif key == "core id" and cpu in allowed:
                    cores.add((package, value))
        return len(cores) or None
    except (OSError, ValueError):
        return None


def macs(fn) -> int:
    """Multiply-adds of one call of fn, as FlopCounterMode counts them (FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def timed(fn, device, repeats: int) -> float:
    """Median seconds of fn over `repeats` calls after one warm-up call (bench/timing.measure)."""
    return statistics.median(measure(lambda length=None: fn(), device, warmup=1, repeats=repeats,
                                     budget=float("inf"), warm_length=None))


def passes(cfg, batch: int, length: int, device, seed: int = 0) -> dict:
    """{name: fn} of the four CNN passes at the config's sizes on B x T frames."""
    g = torch.Generator().manual_seed(seed)
    wm = build_world_model(cfg, act_dim=4).to(device)  # its encoder and decoder: world_models/nets.py
    enc, dec, S, feat_size = wm.encoder, wm.decoder, cfg.env.image_size, wm.feat_size
    frames = torch.randint(0, 256, (batch, length, S, S, 3), generator=g, dtype=torch.uint8)
    frames = frames.to(device)
    feat = torch.randn(batch, length, feat_size, generator=g).to(device).requires_grad_()
    d_embed = torch.randn(batch, length, enc.out_size, generator=g).to(device)
    d_image = torch.randn(batch, length, S, S, 3, generator=g).to(device)

    def enc_fwd():
        with torch.no_grad():
            enc(frames)

    def enc_bwd():
        enc(frames).backward(d_embed)

    def dec_fwd():
        with torch.no_grad():
            dec(feat.detach())

    def dec_bwd():
        dec(feat).backward(d_image)
    return {"encoder forward": enc_fwd, "encoder forward+backward": enc_bwd,
            "decoder forward": dec_fwd, "decoder forward+backward": dec_bwd}


def gemm_rate(n: int, device, repeats: int) -> float:
    """G multiply-adds/s of an (n, n) x (n, n) float32 matmul."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return n ** 3 / timed(lambda: a @ b, device, repeats) / 1e9


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":  # full float32 on both sides of the comparison
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = config_for(args.size, "rssm", {})  # the CNN is the same for every backbone
    info = machine(device)
    ghz = args.ghz or clock_ghz()
    cores = min(args.threads, physical_cores() or args.threads)
    theory = cores * ghz * args.macs_per_cycle if ghz and device.type == "cpu" else None
    gemm = gemm_rate(args.gemm, device, args.repeats)
    rows = []
    for name, fn in passes(cfg, args.batch, args.length, device).items():
        count = macs(fn)
        sec = timed(fn, device, args.repeats)
        rate = count / sec / 1e9
        rows.append({"pass": name, "gmacs": round(count / 1e9, 3), "seconds": round(sec, 4),
                     "gmacs_per_s": round(rate, 1), "of_gemm": round(rate / gemm, 3),
                     "of_theory": round(rate / theory, 3) if theory else None})
        print(f"{name}: {count / 1e9:.2f} G multiply-adds in {sec:.3f} s = {rate:.1f} G/s "
              f"({100 * rate / gemm:.0f}% of the matmul's {gemm:.1f} G/s"
              + (f", {100 * rate / theory:.0f}% of the theoretical {theory:.1f} G/s)" if theory
                 else ")"), flush=True)
    return {"machine": info, "size": args.size, "batch": args.batch, "length": args.length,
            "image_size": cfg.env.image_size, "cnn_depth": cfg.wm.cnn_depth,
            "threads": args.threads, "cores": cores, "ghz": ghz,
            "clock": "given (--ghz)" if args.ghz else "/proc/cpuinfo snapshot",
            "macs_per_cycle": args.macs_per_cycle,
            "theory_gmacs_per_s": round(theory, 1) if theory else None,
            "gemm": args.gemm, "gemm_gmacs_per_s": round(gemm, 1), "passes": rows}


def render(res: dict) -> str:
    m = res["machine"]
    theory = (f"{res['theory_gmacs_per_s']:g} G/s theoretical ({res['cores']} cores x "
              f"{res['ghz']:.2f} GHz ({res['clock']}) x {res['macs_per_cycle']} multiply-adds "
              "per cycle)"
              if res["theory_gmacs_per_s"] else "no theoretical figure (GPU, or no clock known)")
    lines = [f"## CNN passes against the peak: size `{res['size']}`", "",
             f"Machine: {m.get('gpu') or m['cpu']} ({m['cores']} cores visible, {res['threads']} "
             f"torch threads), torch {m['torch']}, commit {m['commit']}, load average "
             f"{m['loadavg_start'][0]:.1f} at start. {res['batch']} x {res['length']} frames of "
             f"{res['image_size']}x{res['image_size']}, CNN depth {res['cnn_depth']}; median of "
             "the timed repeats after one warm-up.",
             f"Peak: {theory}; a {res['gemm']}x{res['gemm']} float32 matmul reached "
             f"{res['gemm_gmacs_per_s']:g} G/s.", "",
             "| pass | G multiply-adds | s | G multiply-adds/s | of the matmul | of theoretical |",
             "|---|---|---|---|---|---|"]
    for r in res["passes"]:
        share = f"{100 * r['of_theory']:.0f}%" if r["of_theory"] is not None else "—"
        lines.append(f"| {r['pass']} | {r['gmacs']:g} | {r['seconds']:g} | {r['gmacs_per_s']:g} | "
                     f"{100 * r['of_gemm']:.0f}% | {share} |")
    return "\n".join(lines) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.cnn", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=list(SIZES), default="paper",
                   help="configs.yaml size block (paper = the defaults: 64x64, depth 32)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", choices=["cpu", "cuda"],
                   default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ghz", type=float, default=None, help="clock for the theoretical peak")
    p.add_argument("--macs-per-cycle", type=int, default=16,
                   help="float32 multiply-adds per core per cycle (AVX2, 2 FMA units: 16)")
    p.add_argument("--gemm", type=int, default=2048, help="matmul size for the practical peak")
    p.add_argument("--out", default="reports/bench_cnn")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    res = run(args)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cnn.md").write_text(render(res))
    (out / "cnn.json").write_text(json.dumps(res, indent=1))
    print(render(res) + f"\nwrote {out / 'cnn.md'} and {out / 'cnn.json'}")
    return res


if __name__ == "__main__":
    main()
