"""Accuracy against inference time for training recipes at several input sizes (docs section 1.2).

    python benchmarks/plot_recipe_cost.py --timing runs/tradeoffs-presets.json --out docs/img/recipe_cost.png \
        --point "fast at 224 px=runs/fast224/val/results.json" ... [--half-of "default at 256 px"]

``--timing`` is what ``tradeoffs.py --presets ... --json`` wrote (median ms per configuration);
each ``--point LABEL=RESULTS`` is an ``accuracy.py`` results.json for the configuration LABEL
names: its ADTR row (a trained recipe, or a ``--rescore`` run's shipped-head row, beta 1) is a
filled marker, its Gaussian row, when the run has one, a hollow marker at the same time. A dashed
line marks half of the ``--half-of`` configuration's time. One panel per metric.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adtr_edge.evaluation.plots import figure, style_panel, write_figure
from adtr_edge.evaluation.significance import METRIC_NAMES

METRICS = tuple(METRIC_NAMES.items())


def adtr_row(rows: list[dict]) -> dict:
    for row in rows:
        if row["method"].startswith("ADTR") or row["method"].startswith("reconstruction scaled towards the mean, beta 1"):
            return row
    raise SystemExit("no ADTR row (a trained recipe or a --rescore run) in the results")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timing", required=True)
    ap.add_argument("--point", action="append", required=True, metavar="LABEL=RESULTS_JSON")
    ap.add_argument("--half-of", default="default at 256 px")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    configs = json.loads(Path(args.timing).read_text())["configs"]
    ms = {name: c["ms"]["p50"] for name, c in configs.items()}
    fig = figure(14, 4)
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    for i, item in enumerate(args.point):
        label, _, path = item.partition("=")
        if label not in ms:
            raise SystemExit(f"--point {label!r}: not a configuration of {args.timing} ({', '.join(ms)})")
        rows = json.loads(Path(path).read_text())["rows"]
        ours, gauss = adtr_row(rows), next((r for r in rows if r["method"] == "gaussian"), None)
        for ax, (key, _) in zip(axes, METRICS):
            ax.plot(ms[label], ours[key], "o", color=f"C{i}", markersize=8, label=f"ADTR {label}")
            if gauss:
                ax.plot(ms[label], gauss[key], "o", markerfacecolor="none", color=f"C{i}", markersize=8,
                        label=f"Gaussian, {label} features")
    for ax, (_, name) in zip(axes, METRICS):
        if args.half_of in ms:
            ax.axvline(ms[args.half_of] / 2, linestyle="--", color="grey", linewidth=1, label=f"half of {args.half_of}")
        style_panel(ax, xlabel="ms per frame (ONNX Runtime, 1 thread)", ylabel=name)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.99, 0.5), fontsize="small")
    fig.suptitle("Validation split: accuracy against inference time (filled: ADTR, hollow: Gaussian on the same features)")
    return write_figure(fig, args.out, rect=(0, 0, 1, 0.94))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
