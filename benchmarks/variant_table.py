"""Gather the rows of several ``benchmarks/accuracy.py`` runs into one Markdown table.

    python benchmarks/variant_table.py runs/v/*/results.json > runs/v/table.md

Each row keeps its budget (CPU seconds of training), the split it was scored on, the accuracy and
the two collapse figures, so variants trained under one budget can be read side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def table(paths: list[Path]) -> str:
    lines = ["| variant | split | train s | image AUROC | pixel AUROC | AUPRO | following | pass-through | command |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in paths:
        doc = json.loads(p.read_text(encoding="utf-8"))
        for r in doc["rows"]:
            lines.append(f"| {r['method']} | {doc.get('split', 'all')} | {r['train_seconds']} | {fmt(r['image_auroc'])} | "
                         f"{fmt(r['pixel_auroc'])} | {fmt(r['aupro'])} | {fmt(r.get('input_following'))} | "
                         f"{fmt(r.get('defect_pass_through'))} | `{doc['command']}` |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    print(table(ap.parse_args().results), end="")


if __name__ == "__main__":
    main()
