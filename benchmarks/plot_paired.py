"""Paired differences with their 95% intervals, one row per comparison (a forest plot; docs 1.1, 1.5, 4.6).

    python benchmarks/plot_paired.py --out docs/img/paired_differences.png \
        --row "default seed 0 - Gaussian=runs/boot-l2-seeds.json#0" \
        --row "INT8 cpu matched - FP32=runs/eval-cpu-matched-vs-fp32/report.json" [--floor -1]

Each ``--row LABEL=FILE[#i]`` reads either a ``paired_bootstrap.py --json`` file (its row ``i``,
default 0: ADTR minus the baseline) or an ``adtr-edge eval --against`` report.json (the target minus
the reference). One panel per metric, in AUROC points; a grey line at 0 and, with ``--floor``, a
dashed line at that many points (issue #11's -1 for the deployed forms).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adtr_edge.evaluation.plots import figure, write_figure
from adtr_edge.evaluation.significance import METRIC_NAMES

METRICS = tuple(METRIC_NAMES.items())


def differences(spec: str) -> tuple[str, dict]:
    """LABEL=FILE[#i] -> (label, {metric: (estimate, low, high)} in points)."""
    label, sep, ref = spec.partition("=")
    path, _, index = ref.partition("#")
    if not sep or not Path(path).is_file():
        raise SystemExit(f"--row {spec!r}: use LABEL=FILE[#i] with an existing file")
    doc = json.loads(Path(path).read_text())
    if "against" in doc:  # adtr-edge eval --against
        raw = {m: tuple(doc["against"][m]["difference"]) for m, _ in METRICS if m in doc["against"]}
    elif "rows" in doc:  # paired_bootstrap.py --json
        d = doc["rows"][int(index or 0)]["difference"]
        raw = {m: (d[m]["estimate"], d[m]["low"], d[m]["high"]) for m, _ in METRICS if m in d}
    else:
        raise SystemExit(f"--row {spec!r}: {path} is neither an 'eval --against' report nor a paired_bootstrap.py result")
    return label, {m: tuple(100 * v for v in t) for m, t in raw.items()}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", action="append", required=True, metavar="LABEL=FILE[#i]")
    ap.add_argument("--floor", type=float, default=None, help="draw a dashed line at this difference, in points")
    ap.add_argument("--title", default="Paired differences in points, with 95% bootstrap intervals")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    rows = [differences(r) for r in args.row]
    fig = figure(14, 0.9 + 0.45 * len(rows))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    ys = list(range(len(rows)))[::-1]
    for ax, (key, name) in zip(axes, METRICS):
        for y, (label, diff) in zip(ys, rows):
            if key in diff:
                est, low, high = diff[key]
                ax.errorbar(est, y, xerr=[[est - low], [high - est]], fmt="o", color="C0" if low > 0 or high < 0 else "C7", capsize=3)
        ax.axvline(0.0, color="grey", linewidth=1)
        if args.floor is not None:
            ax.axvline(args.floor, color="C3", linestyle="--", linewidth=1)
        ax.set(xlabel=f"{name}, points", yticks=ys, yticklabels=[r[0] for r in rows] if ax is axes[0] else [])
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(args.title + " (blue: the interval excludes 0)")
    return write_figure(fig, args.out, rect=(0, 0, 1, 0.9))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
