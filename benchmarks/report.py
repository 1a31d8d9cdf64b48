"""Regenerate bench.md (and its PNG plots) from the results files alone.

For every subject and device the newest run (by date, full runs preferred over --quick ones) is
shown as a table with its device, driver, torch/triton versions, commit and date, followed by a
paragraph computed from the numbers. Ratios are only ever taken within one run.

    python benchmarks/report.py            # writes bench.md and benchmarks/results/*.png
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

from common import ROOT, RESULTS_DIR, read_rows

SUBJECTS = ["generate", "decode", "vs_reference", "vs_reference_open", "cpu_options", "vs_autoregressive",
            "kernels", "attention", "train"]
TITLES = {
    "generate": "End-to-end generation",
    "decode": "VAE decoding within and past the window (chunked)",
    "vs_reference": "Against stable-audio-tools' own generation path",
    "vs_reference_open": "Stable Audio Open against stable-audio-tools' own generation path",
    "cpu_options": "CPU options for Stable Audio Open: time and quality against fp32",
    "vs_autoregressive": "Against an autoregressive baseline (MusicGen configuration)",
    "kernels": "Triton kernels against torch eager and torch.compile",
    "attention": "Attention backends",
    "train": "Training throughput",
}


def preset_of(r: Dict) -> Optional[str]:
    return r.get("preset") or r.get("fastaudio_preset")


def table_key(r: Dict) -> Optional[str]:
    """What tells tables of one device apart: the preset, and for Stable Audio Open against the
    reference also the reference's dtype (fp32 and bf16 runs are different comparisons)."""
    preset = preset_of(r)
    if r.get("subject") == "vs_reference_open" and r.get("reference_dtype", "fp32") != "fp32":
        return f"{preset}, reference in {r['reference_dtype']}"
    return preset


def latest_runs(rows: List[Dict]) -> Dict[Tuple[str, Optional[str]], List[Dict]]:
    """(device, preset) → the rows of its newest run (full runs before quick ones): a CPU run of
    SA1.0's shape and one of the small preset are different tables, neither replaces the other."""
    by_run = defaultdict(list)
    for r in rows:
        by_run[(r.get("device", "?"), table_key(r), r.get("run_id") or r.get("date"))].append(r)
    best: Dict[Tuple[str, Optional[str]], tuple] = {}
    for (device, preset, run), rs in by_run.items():
        key = (not any(r.get("quick") for r in rs), max(r.get("date", "") for r in rs))
        if (device, preset) not in best or key > best[(device, preset)][0]:
            best[(device, preset)] = (key, rs)
    return {d: v[1] for d, v in best.items()}


def subject_rows(subject: str) -> List[Dict]:
    """Rows of one table: generation and decode-scaling rows share the generate results file."""
    if subject == "decode":
        return [r for r in read_rows("generate") if r.get("what") == "decode"]
    rows = read_rows(subject)
    if subject == "generate":
        rows = [r for r in rows if r.get("what", "generate") == "generate"]
    return rows


def table(rows: List[Dict], cols: List[str], headers: Optional[List[str]] = None) -> str:
    headers = headers or cols
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, float):
                v = f"{v:.0f}" if abs(v) >= 1e4 else f"{v:.4g}"  # never 1.317e+04 in a table
            elif isinstance(v, list):
                v = "×".join(str(x) for x in v)
            cells.append("–" if v is None else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def provenance(rs: List[Dict]) -> str:
    r = rs[0]
    quick = " — **quick smoke run**" if any(x.get("quick") for x in rs) else ""
    kind = "" if r.get("device_kind") == "cuda" else " — **CPU figures, not GPU timings**"
    # one run can span processes and commits (a rerun of one measurement): name them all
    commits = ", ".join(dict.fromkeys(str(x.get("commit")) for x in rs))
    dates = sorted(str(x.get("date")) for x in rs)
    when = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return (f"*{r.get('device')}; driver {r.get('driver')}; torch {r.get('torch')}; "
            f"triton {r.get('triton')}; commit {commits}; {when}{kind}{quick}*\n\n")


def _ms(ms: float) -> str:
    return f"{ms / 1e3:.3g} s" if ms >= 1e3 else f"{ms:.3g} ms"


def para_generate(rs):
    longest = max(rs, key=lambda r: (r["window_s"], -r["seconds"]))
    best = min((r for r in rs if r["window_s"] == longest["window_s"]), key=lambda r: r["seconds"])
    text = (f"The longest window measured, {best['window_s']:g} s with {best['steps']} steps and "
            f"guidance {best['cfg_scale']:g}, renders in {best['seconds']:.3g} s ({best['mode']}): a "
            f"real-time factor of {best['rtf']:.3g}×, {_ms(best['ms_per_step'])} per sampler step, "
            f"{100 * best['mfu']:.2g} % of the measured matmul peak in the U-Net. Sampling takes "
            f"{100 * best['sampling_s'] / best['seconds']:.0f} % of the time, decoding "
            f"{100 * best['decode_s'] / best['seconds']:.0f} %."
            + (f" The attention core (QKᵀ, PV) is {100 * best['attention_share']:.0f} % of the U-Net's "
               f"FLOPs at this length, growing with its square." if best.get("attention_share") else ""))
    same = sorted((r for r in rs if r["mode"] == best["mode"]), key=lambda r: r["window_s"])
    if len(same) > 1:  # how cost grows with duration, in the same mode
        a, b = same[0], same[-1]
        longer = b["frames"] / a["frames"]  # cost follows latent frames (windows round up to 16)
        text += (f" From {a['window_s']:g} s to {b['window_s']:g} s ({a['frames']} to {b['frames']} "
                 f"latent frames, {longer:.3g}×) a sampler step takes "
                 f"{b['ms_per_step'] / a['ms_per_step']:.3g}× the time and decoding "
                 f"{b['decode_s'] / a['decode_s']:.3g}× (linear in frames would be {longer:.3g}×)"
                 + (f"; the attention share goes from {100 * a['attention_share']:.1f} % to "
                    f"{100 * b['attention_share']:.1f} %" if a.get("attention_share") and b.get("attention_share")
                    else "") + ".")
        if a.get("peak_memory_mb") and b.get("peak_memory_mb"):
            what = ("the process's peak RSS, never reset, windows in ascending order"
                    if a.get("device_kind") != "cuda" else "peak CUDA memory allocated")
            text += (f" Peak memory ({what}) goes from {a['peak_memory_mb']:.0f} MB to "
                     f"{b['peak_memory_mb']:.0f} MB.")
    return text + "\n"


def para_decode(rs):
    rs = sorted(rs, key=lambda r: r["seconds_audio"])
    a, b = rs[0], rs[-1]
    if len(rs) == 1:
        return (f"Decoding {a['seconds_audio']:.4g} s of audio in {a['chunk_frames']}-frame chunks takes "
                f"{a['decode_s']:.4g} s, {a['decode_rtf']:.3g}× real time.\n")
    growth = b["decode_s"] / a["decode_s"]
    longer = b["frames"] / a["frames"]
    mem = [r["peak_memory_mb"] for r in rs if r.get("peak_memory_mb") is not None]
    text = (f"From {a['seconds_audio']:.3g} s to {b['seconds_audio']:.3g} s of audio "
            f"({longer:.3g}× the latent frames) decoding takes {growth:.3g}× the "
            f"time (linear would be {longer:.3g}×), "
            f"{b['decode_rtf']:.3g}× real time at the longest.")
    if len(mem) == len(rs):
        text += f" Peak memory goes from {mem[0]:g} MB to {mem[-1]:g} MB."
    else:
        text += " Peak memory is only recorded per length on a GPU."
    return text + "\n"


# the issue's targets for the same-run ratio to stable-audio-tools, end to end
REFERENCE_TARGETS = {"cpu": 1.5, "gpu": 3.0}


def para_vs_reference(rs):
    e2e = [r for r in rs if r.get("what") == "end_to_end"]
    if not e2e:
        return ""
    on_gpu = any(r.get("device_kind") == "cuda" for r in rs)
    target = REFERENCE_TARGETS["gpu" if on_gpu else "cpu"]
    step = {r.get("execution"): r["speedup"] for r in rs if r.get("what") == "unet_step"}
    lines = []
    for r in e2e:
        mode = r.get("execution")
        line = (f"{mode or '?'}: {r['speedup']:.3g}× end to end "
                f"({r['reference_s']:.3g} s vs {r['fastaudio_s']:.3g} s")
        if "speedup_min" in r:
            line += f"; single repetitions {r['speedup_min']:.3g}–{r['speedup_max']:.3g}×"
        line += ")"
        if mode in step:
            line += f", {step[mode]:.3g}× per guided U-Net step"
        lines.append(line)
    best = max(e2e, key=lambda r: r["speedup"])
    verdict = "meets" if best["speedup"] >= target else "misses"
    if best.get("speedup_min", target) < target <= best.get("speedup_max", 0):
        verdict += (" (the target lies inside the spread of single repetitions: this machine's noise "
                    "decides which side of it a run lands)")
    return ("Against stable-audio-tools in the same process, fastaudio runs " + "; ".join(lines) +
            f". The best, {best['speedup']:.3g}×, {verdict} the {target:g}× target for this kind of "
            "device.\n")


def para_vs_reference_open(rs):
    """Targets (issue 23, SAO Small on a CPU): end to end <= the clip's length and >= 3x the
    reference; decoding >= 3x. Otherwise: how the DiT step grows with the window."""
    out = []
    e2e = [r for r in rs if r["what"] == "end_to_end"]
    dec = {r["variant"]: r for r in rs if r["what"] == "decode"}
    step = {r["variant"]: r for r in rs if r["what"] == "step"}
    for r in e2e:
        v = r["variant"]
        line = (f"{v} ({r['dtype']} DiT, {r['decoder_dtype']} decoder, {r['execution']}): end to end "
                f"{r['fastaudio_s']:.3g} s against {r['reference_s']:.3g} s, {r['speedup']:.3g}× "
                f"(single repetitions {r['speedup_min']:.3g}–{r['speedup_max']:.3g}×)")
        if v in dec:
            line += f"; decoding {dec[v]['speedup']:.3g}×"
        if v in step:
            line += f"; DiT step {step[v]['speedup']:.3g}×"
        if "target_speedup" in r:
            need = r["reference_s"] / r["target_speedup"]
            faster = r["fastaudio_s"] <= r["target_seconds"]
            fast_enough = r["speedup"] >= r["target_speedup"]
            line += (f". Targets: ≤ {r['target_seconds']:.3g} s "
                     + ("met" if faster else f"missed by {r['fastaudio_s'] - r['target_seconds']:.3g} s")
                     + f", ≥ {r['target_speedup']:g}× "
                     + ("met" if fast_enough else f"missed ({r['fastaudio_s']:.3g} s against the "
                                                  f"{need:.3g} s it needs)"))
            if v in dec and "target_speedup" in dec[v]:
                d = dec[v]
                line += (", decoding ≥ 3× " + ("met" if d["speedup"] >= d["target_speedup"] else
                                               f"missed ({d['speedup']:.3g}×)"))
        out.append(line)
    steps = [r for r in rs if r["what"] == "step"]
    windows = sorted({r["window_s"] for r in steps})
    if len(windows) > 1:
        for v in sorted({r["variant"] for r in steps}):
            pts = sorted((r["window_s"], r["frames"], r["reference_s"], r["fastaudio_s"])
                         for r in steps if r["variant"] == v)
            a, b = pts[0], pts[-1]
            out.append(f"{v}: from {a[0]:g} s to {b[0]:g} s ({b[1] / a[1]:.3g}× the latent frames) "
                       f"the DiT step grows {b[3] / a[3]:.3g}× ({a[3]:.3g} → {b[3]:.3g} s; the "
                       f"reference's {b[2] / a[2]:.3g}×, {a[2]:.3g} → {b[2]:.3g} s), "
                       + ", ".join(f"{w:g} s {ref / ours:.3g}×" for w, _, ref, ours in pts)
                       + " against the reference")
    notes = sorted({r["note"] for r in rs if r.get("note")})
    text = ". ".join(out) + ("." if out else "")
    if notes:
        text += " Note: " + "; ".join(notes) + "."
    return text + "\n"


def para_cpu_options(rs):
    try:
        sys.path.insert(0, ROOT)
        from fastaudio.cpu_fast import SNR_THRESHOLD_DB
    except ImportError:
        SNR_THRESHOLD_DB = 30.0
    base = next((r for r in rs if r.get("snr_db") is None), None)
    ok = [r for r in rs if r.get("snr_db") is not None and r["snr_db"] >= SNR_THRESHOLD_DB]
    text = ""
    if base:
        text += (f"The quality reference is {base['option']} (fp32): {base['total_s']:.3g} s for "
                 f"{base['seconds_audio']:.3g} s of audio. ")
    if ok:
        best = min(ok, key=lambda r: r["total_s"])
        text += (f"The fastest option at or above {SNR_THRESHOLD_DB:g} dB is {best['option']}: "
                 f"{best['total_s']:.3g} s ({best['rtf']:.3g}× real time"
                 + (f", {base['total_s'] / best['total_s']:.3g}× the fp32 eager run" if base else "")
                 + f"), SNR {best['snr_db']:.3g} dB, latents within {best['latent_rel_err']:.2g}. ")
    bad = [r for r in rs if r.get("snr_db") is not None and r["snr_db"] < SNR_THRESHOLD_DB]
    if bad:
        text += ("Below the threshold: " + ", ".join(f"{r['option']} ({r['snr_db']:.3g} dB, "
                                                     f"{r['total_s']:.3g} s)" for r in bad) + ".")
    return text + "\n"


def para_ar(rs):
    lines = [f"{r['seconds']:g} s: MusicGen-{r['musicgen']}{' (scaled down)' if r.get('scaled_down') else ''} "
             f"{r['musicgen_s']:.3g} s, fastaudio {r['fastaudio_s']:.3g} s → {r['speedup']:.3g}×"
             for r in rs]
    return "Measured in one process: " + "; ".join(lines) + ".\n"


def para_kernels(rs):
    out = []
    for op in sorted({r["op"] for r in rs}):
        ops = [r for r in rs if r["op"] == op]
        tri = [r for r in ops if r["variant"] == "triton"]
        if not tri:
            continue
        for t in tri:
            eager = next((r for r in ops if r["variant"] == "eager" and r["shape"] == t["shape"]), None)
            if eager:
                frac = t.get("bandwidth_fraction", t.get("peak_fraction"))
                out.append(f"{op} {'×'.join(map(str, t['shape']))}: {eager['ms'] / t['ms']:.2g}× eager"
                           + (f", {100 * frac:.0f} % of peak" if frac is not None else ""))
    if not out:
        return ("No Triton rows: this run had no GPU, so only the PyTorch CPU paths were timed "
                "(for reference, not comparison).\n")
    return "Ours vs eager (same run): " + "; ".join(out) + ".\n"


def para_train(rs):
    return "Per stage: " + "; ".join(f"{r['stage']} ({r['variant']}) {r['samples_per_s']:.3g} samples/s"
                                     for r in rs) + ".\n"


def para_attention(rs):
    fwd = [r for r in rs if r.get("pass") == "fwd"]
    if not fwd:
        return ""
    best = max(fwd, key=lambda r: r.get("tflops", 0))
    return (f"Fastest forward: {best['backend']} at {best['kind']} L{best['Lq']}×{best['Lk']} D{best['D']}, "
            f"{best['tflops']:.3g} TFLOP/s.\n")


COLUMNS = {
    "generate": (["preset", "mode", "window_s", "steps", "dtype", "seconds", "text_s", "sampling_s", "decode_s",
                  "ms_per_step", "rtf", "mfu", "attention_share", "peak_memory_mb"], para_generate),
    "decode": (["preset", "seconds_audio", "frames", "dtype", "chunk_frames", "decode_s", "decode_rtf",
                "peak_memory_mb"], para_decode),
    "vs_reference": (["preset", "what", "seconds_audio", "steps", "dtype", "reference_s", "fastaudio_s",
                      "speedup", "speedup_min", "speedup_max", "execution"], para_vs_reference),
    "vs_reference_open": (["preset", "window_s", "what", "variant", "dtype", "decoder_dtype", "reference_dtype",
                           "steps", "repeats", "reference_s", "fastaudio_s", "speedup", "speedup_min",
                           "speedup_max", "reference_peak_rss_mb", "fastaudio_peak_rss_mb",
                           "reference_rss_growth_mb", "fastaudio_rss_growth_mb", "parity_rel_err",
                           "target_met"], para_vs_reference_open),
    "cpu_options": (["option", "seconds_audio", "steps", "execution", "dtype", "decoder_dtype", "quantize", "decode_chunk_frames",
                     "threads", "repeats", "total_s", "sampling_s", "decode_s", "ms_per_step", "rtf",
                     "snr_db", "latent_rel_err", "decoder_snr_db", "peak_rss_mb", "rss_growth_mb", "warmup_s"],
                    para_cpu_options),
    "vs_autoregressive": (["musicgen", "musicgen_params_m", "seconds", "musicgen_s", "musicgen_rtf",
                           "fastaudio_preset", "fastaudio_s", "fastaudio_rtf", "speedup"], para_ar),
    "kernels": (["op", "shape", "variant", "dtype", "ms", "gbs", "bandwidth_fraction", "tflops",
                 "peak_fraction"], para_kernels),
    "attention": (["backend", "kind", "B", "H", "Lq", "Lk", "D", "dtype", "pass", "ms", "tflops",
                   "peak_fraction"], para_attention),
    "train": (["preset", "stage", "variant", "batch", "sample", "step_s", "samples_per_s", "peak_memory_mb"],
              para_train),
}


def newest_per_measurement(rs: List[Dict]) -> List[Dict]:
    """Within one run, a later row of the same measurement (window, what, variant) replaces an
    earlier one: a rerun of a disturbed measurement says so in its note."""
    keep: Dict[tuple, Dict] = {}
    for r in sorted(rs, key=lambda r: r.get("date", "")):
        keep[(r.get("window_s"), r.get("what"), r.get("variant"))] = r
    order = {"step": 0, "sampling": 1, "decode": 2, "end_to_end": 3}
    first = {}
    for r in rs:  # variants in the order they were measured
        first.setdefault(r.get("variant"), len(first))
    kept = [r for r in rs if keep[(r.get("window_s"), r.get("what"), r.get("variant"))] is r]
    return sorted(kept, key=lambda r: (r.get("window_s") or 0, first[r.get("variant")],
                                       order.get(r.get("what"), 9)))


def _open_row(r: Dict) -> Dict:
    """A single DiT forward or a decode has no sampler steps: show none."""
    return dict(r, steps=None) if r.get("what") in ("step", "decode") else r


ROW_VIEW = {"vs_reference_open": _open_row}


def plot(device: str, runs: Dict[str, List[Dict]], path: str) -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drew = False
    gen = runs.get("generate", [])
    for preset, mode in sorted({(r["preset"], r["mode"]) for r in gen}):
        pts = sorted((r["window_s"], r["seconds"]) for r in gen
                     if r["mode"] == mode and r["preset"] == preset)
        steps = {r["steps"] for r in gen if r["preset"] == preset}
        ax.plot(*zip(*pts), "o-", label=f"fastaudio {preset} ({mode}, {'/'.join(map(str, sorted(steps)))} steps)")
        drew = True
    ref = [r for r in runs.get("vs_reference", []) if r["what"] == "end_to_end"]
    if ref:
        ax.plot([r["seconds_audio"] for r in ref], [r["reference_s"] for r in ref], "s",
                label=f"stable-audio-tools ({ref[0]['preset']}, {ref[0]['steps']} steps)")
        drew = True
    ar = runs.get("vs_autoregressive", [])
    if ar:
        pts = sorted((r["seconds"], r["musicgen_s"]) for r in ar)
        ax.plot(*zip(*pts), "^-", label=f"MusicGen-{ar[0]['musicgen']} ({ar[0]['musicgen_params_m']:.0f} M)")
        drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.set_xlabel("duration (s)")
    ax.set_ylabel("latency (s)")
    ax.set_yscale("log")
    ax.set_title(f"Latency vs duration — {device}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render() -> str:
    parts = ["# fastaudio benchmarks\n\n",
             "Generated by `python benchmarks/report.py` from `benchmarks/results/*.jsonl`; every number "
             "below comes from a benchmark run whose device, driver, versions, commit and date are "
             "printed above its table. Regenerate everything with `python benchmarks/run_all.py`.\n\n"]
    per_device: Dict[str, Dict[str, List[Dict]]] = defaultdict(dict)
    # which subjects have GPU rows at all, read from the files: the reader sees the gaps first
    rows_of = {s: subject_rows(s) for s in SUBJECTS}  # each results file read once
    gpu = {s: [r for r in rows_of[s] if r.get("device_kind") == "cuda"] for s in SUBJECTS}
    gpu_full = [TITLES[s] for s in SUBJECTS if any(not r.get("quick") for r in gpu[s])]
    gpu_quick = [TITLES[s] for s in SUBJECTS if gpu[s] and TITLES[s] not in gpu_full]
    gpu_none = [TITLES[s] for s in SUBJECTS if not gpu[s]]
    parts.append("GPU coverage of these files: full runs for " + (", ".join(gpu_full) or "nothing")
                 + "; quick smoke runs only for " + (", ".join(gpu_quick) or "nothing")
                 + "; no GPU row at all for " + (", ".join(gpu_none) or "nothing") + ".\n\n")
    for subject in SUBJECTS:
        rows = rows_of[subject]
        if not rows:
            continue
        parts.append(f"## {TITLES[subject]}\n\n")
        cols, para = COLUMNS[subject]
        runs = latest_runs(rows)
        for (device, preset), rs in sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            if subject == "vs_reference_open":
                rs = newest_per_measurement(rs)
            per_device[device].setdefault(subject, []).extend(rs)
            several = len({p for d, p in runs if d == device}) > 1
            title = f"{device}, preset {preset}" if several else device
            shown = [ROW_VIEW[subject](r) for r in rs] if subject in ROW_VIEW else rs
            parts.append(f"### {title}\n\n" + provenance(rs) + table(shown, cols))
            try:
                parts.append("\n" + para(rs) + "\n")
            except (KeyError, ValueError, ZeroDivisionError) as e:
                parts.append(f"\n(summary unavailable: {e})\n\n")
    plots = []
    for device, runs in sorted(per_device.items()):
        safe = "".join(c if c.isalnum() else "_" for c in device)[:60]
        path = plot(device, runs, os.path.join(RESULTS_DIR, f"latency_{safe}.png"))
        if path:
            plots.append(f"![latency vs duration, {device}]({os.path.relpath(path, ROOT)})\n")
    if plots:
        parts.append("## Latency against duration\n\n" + "\n".join(plots))
    return "".join(parts)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(ROOT, "bench.md"))
    a = p.parse_args(argv)
    text = render()
    sys.path.insert(0, ROOT)
    from fastaudio.atomic import atomic_write_text
    atomic_write_text(a.out, text)
    print(f"wrote {a.out}")
    return text


if __name__ == "__main__":
    main(sys.argv[1:])
