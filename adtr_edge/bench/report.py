"""Reports of a bench run: the table rows, Markdown, and the JSON/Markdown files (atomic writes)."""

from __future__ import annotations

from pathlib import Path

from ..fileio import write_json_atomic, write_text_atomic
from ..metadata import BACKBONE, TRANSFORMER


def _fmt(x, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def table_rows(report: dict) -> list[list[str]]:
    """One row per (target, batch): label, batch, stage means (p95), total, images/s, GFLOP/s, RSS peak."""
    rows = []
    for run in report["runs"]:
        if run["status"] != "ok":
            rows.append([run["label"], "-", f"skipped: {run['reason']}"] + [""] * 7)
            continue
        for b in run["batches"]:
            if b.get("status") != "ok":
                rows.append([run["label"], str(b["batch"]), f"skipped: {b['reason']}"] + [""] * 7)
                continue
            st = b["stages_ms"]

            def cell(name):
                s = st.get(name)
                if not s:
                    return "-"
                gpu = st.get(f"{name}_gpu")
                text = f"{_fmt(s['mean'])} ({_fmt(s['p95'])})"
                return text + (f" gpu {_fmt(gpu['mean'])}" if gpu else "")

            ach = b.get("achieved_gflops") or {}
            frac = ach.get("fraction_of_gemm_peak")
            rows.append([run["label"], str(b["batch"]), cell("preprocess"), cell("backbone"), cell("transformer"),
                         cell("postprocess"), cell("total"), _fmt(b["throughput_ips"], 1),
                         f"{_fmt(ach.get('model'), 1)}" + (f" ({frac * 100:.0f}%)" if frac is not None else ""),
                         _fmt(run["memory"]["rss_peak_mb"], 0)])
    return rows


TABLE_HEADER = ["model", "batch", "preprocess", "backbone", "transformer", "postprocess", "total", "img/s",
                "GFLOP/s (of peak)", "RSS peak MB"]


def to_markdown(report: dict) -> str:
    m, peak = report["machine"], report["gemm_peak"]
    s = report["settings"]
    lines = [
        "# adtr-edge bench",
        "",
        f"- command: `{report['command']}`",
        f"- date: {report['date']}",
        f"- machine: {m['cpu']}, {m['usable_cores']} usable cores, Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["libraries"].items()),
        f"- settings: batches {s['batches']}, {s['warmup']} warm-up + {s['iters']} timed iterations, threads "
        f"{s['threads'] or 'default'}, camera frame {s['frame_size'][1]}x{s['frame_size'][0]}",
        f"- float32 GEMM peak: {peak['gflops']} GFLOP/s ({peak['engine']}, n={peak['n']})",
        "",
        "Stage cells: mean (p95) ms per batch; `gpu` = device compute time where the backend measures it.",
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|" + "---|" * len(TABLE_HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    flops = [(r["label"], r["flops"]) for r in report["runs"] if r.get("flops")]
    if flops:
        lines += ["", "| model | backbone GFLOPs | transformer GFLOPs | per frame GFLOPs |", "|---|---|---|---|"]
        for name, f in flops:
            lines.append(f"| {name} | {f[BACKBONE]['total'] / 1e9:.3f} | {f[TRANSFORMER]['total'] / 1e9:.3f} | {f['per_frame'] / 1e9:.3f} |")
        lines += ["", report["flops_note"] + "."]
    mem = [(r["label"], r["memory"]) for r in report["runs"] if r.get("memory")]
    if mem:
        lines += ["", "| model | RSS before MB | RSS peak MB | delta MB | GPU used MB | peak measured by |", "|---|---|---|---|---|---|"]
        for name, mm in mem:
            lines.append(f"| {name} | {_fmt(mm['rss_before_mb'], 0)} | {_fmt(mm['rss_peak_mb'], 0)} | {_fmt(mm['rss_delta_mb'], 0)} | "
                         f"{_fmt(mm.get('gpu_used_active_mb'), 0)} | {mm['peak_source']} |")
    return "\n".join(lines) + "\n"


def write_reports(report: dict, json_path: str | Path | None = None, markdown_path: str | Path | None = None) -> None:
    if json_path is not None:
        write_json_atomic(json_path, report)
    if markdown_path is not None:
        write_text_atomic(markdown_path, to_markdown(report))
