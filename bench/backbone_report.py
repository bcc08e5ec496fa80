"""The report of the backbone benchmark (bench/backbones.py): bench.md (tables against RSSM-TBTT)
and bench.png (seconds per training step against T, imagination throughput)."""
from __future__ import annotations

import pathlib

from bench.backbone_cases import ACTION_MODES
from bench.timing import PHASES


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
            over = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()
                             if k != "ac.actor_grad") or "—"  # the agent's mode: its own column
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
        lines += ["", "Failed cases:"] + [f"- {r['kind']} {r['backbone']} T={r['length']}"
                                          f"{' ' + r['action_mode'] if 'action_mode' in r else ''}"
                                          f": {r['error']}" for r in errors]
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


def _by_mode(results, phases: bool = False) -> dict:
    """{action mode: {backbone: agent record}} in the order the modes ran."""
    out = {}
    for r in results:
        if r["kind"] == "agent" and (not phases or "phases" in r):
            out.setdefault(r.get("action_mode", "onehot"), {})[r["backbone"]] = r
    return out


def _agent_table(results, names) -> list[str]:
    modes = _by_mode(results)
    if not modes:
        return []
    lines = ["", "### One Agent.update (world model + actor-critic), per action mode", "",
             "| action mode | backbone | B x T | s/update | updates/s | x RSSM | mem |",
             "|---|---|---|---|---|---|---|"]
    for mode, rows in modes.items():
        for b in names:
            if b in rows:
                r = rows[b]
                val, ratio, mem = _cells(r, rows.get("rssm"))
                sec = _num(r["median_s"]) if "error" not in r else "err"
                lines.append(_row([ACTION_MODES[mode]["label"], b, f"{r['batch']} x {r['length']}",
                                   sec, val, ratio, mem]))
    return lines


def _phase_table(results, names) -> list[str]:
    modes = _by_mode(results, phases=True)
    if not modes:
        return []
    lines = ["", "### One Agent.update by phase: seconds under torch.profiler (share)", "",
             "| action mode | backbone | " + " | ".join(PHASES) + " | profiled total |",
             "|---|---|" + "---|" * (len(PHASES) + 1)]
    for mode, rows in modes.items():
        for b in names:
            if b in rows:
                ph = rows[b]["phases"]
                total = sum(ph.values()) or 1.0
                cells = [f"{_num(ph[k])} ({100 * ph[k] / total:.0f}%)" if k in ph else "-"
                         for k in PHASES]
                lines.append(_row([ACTION_MODES[mode]["label"], b, *cells, _num(total)]))
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
