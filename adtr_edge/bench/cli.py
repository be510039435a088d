"""``adtr-edge bench``: parse options, call ``adtr_edge.bench.timing.run_bench``, print a table, write files."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from ..errors import AdtrError
from ..runtime import registry


def _parse_batches(text: str) -> Tuple[int, ...]:
    try:
        batches = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise AdtrError(f"--batch {text!r}: use comma-separated integers, e.g. 1,4,8") from None
    if not batches or min(batches) < 1:
        raise AdtrError(f"--batch {text!r}: batch sizes must be >= 1")
    return batches


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from .report import TABLE_HEADER, table_rows

    peak = report["gemm_peak"]
    table = Table(title=f"adtr-edge bench - ms per batch: mean (p95); GEMM peak {peak['gflops']} GFLOP/s ({peak['engine']})")
    for h in TABLE_HEADER:
        table.add_column(h, justify="left" if h == "model" else "right")
    for row in table_rows(report):
        table.add_row(*row)
    import sys

    # A pipe or a log file gets the full table, not one squeezed to 80 columns.
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        model_dirs: List[Path] = typer.Argument(..., help="Export, Q/DQ export, engine or checkpoint folder(s), e.g. export/ export-int8/."),
        backend: str = typer.Option("all", "--backend", help=registry.backend_help(registry.BENCH)),
        batch: str = typer.Option("1,4,8", "--batch", help="Batch sizes, comma-separated."),
        warmup: int = typer.Option(5, "--warmup", help="Untimed batches before timing, per batch size."),
        iters: int = typer.Option(30, "--iters", help="Timed batches per batch size."),
        threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op threads (ONNX Runtime, torch, GEMM peak)."),
        json_out: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON to FILE."),
        markdown_out: Optional[Path] = typer.Option(None, "--markdown", help="Write the report as Markdown to FILE."),
        frame: str = typer.Option("640x480", "--frame", help="Camera frame size WxH that preprocessing resizes from."),
    ) -> None:
        """Latency per stage, throughput, memory and FLOP/s of one or more model folders."""
        from .report import write_reports
        from .timing import BenchSettings, run_bench

        try:
            w, h = (int(p) for p in frame.lower().split("x"))
        except ValueError:
            raise AdtrError(f"--frame {frame!r}: use WxH, e.g. 640x480") from None
        settings = BenchSettings(batches=_parse_batches(batch), warmup=warmup, iters=iters, threads=threads, frame_size=(h, w))
        report = run_bench(model_dirs, backend, settings, log=lambda m: typer.echo(m, err=True))
        print_table(report)
        write_reports(report, json_out, markdown_out)
        for p in (json_out, markdown_out):
            if p is not None:
                typer.echo(f"wrote {p}")
