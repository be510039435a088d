"""Draw head_select.py results: each metric against the shrinkage, synthetic defects against real ones.

    python benchmarks/plot_head_select.py --run "magnetic tile (val split)=runs/head-select-mt-val.json" \
        --run "generated tiles=runs/head-select-gen.json" --out docs/img/head_select.png

One panel per run: solid lines are the real test defects, dashed lines the synthetic defects on the
held-out normals (what training sees), the dotted line the configured shrinkage and the solid
grey line the one the rule chose.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adtr_edge.evaluation.plots import figure, style_panel, write_figure
from adtr_edge.evaluation.significance import METRIC_NAMES

METRICS = tuple(METRIC_NAMES.items())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=FILE")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    runs = []
    for spec in args.run:
        label, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"--run {spec!r}: use LABEL=FILE with a head_select.py --json file")
        runs.append((label, json.loads(Path(path).read_text())))
    fig = figure(6.0 * len(runs), 4.2)
    for i, (label, run) in enumerate(runs):
        ax = fig.add_subplot(1, len(runs), i + 1)
        lam = [r["shrinkage"] for r in run["rows"]]
        for c, (key, name) in enumerate(METRICS):
            ax.plot(lam, [r["real"][key] for r in run["rows"]], "-o", color=f"C{c}", markersize=3, label=f"{name}, real")
            ax.plot(lam, [r["synthetic"][key] for r in run["rows"]], "--", color=f"C{c}", label=f"{name}, synthetic")
        d = run["decision"]
        ax.axvline(d["configured"], color="grey", linestyle=":", linewidth=1)
        ax.axvline(d["shrinkage"], color="grey", linewidth=1.5)
        style_panel(ax, i == 0, title=f"{label}: chosen {d['shrinkage']:g} (best synthetic {d['best']:g}, ahead {d['best_ahead']:.0%})",
                    xlabel="shrinkage towards the average variance", ylabel="metric")
    return write_figure(fig, args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
