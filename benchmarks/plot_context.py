"""Draw what following normal variation costs: accuracy against input following, one point per predictor.

    python benchmarks/plot_context.py --probe runs/context-probe-mt-val.json \
        --model "ADTR default=runs/l2/val-default/results.json" --model "restoration, mask 3=runs/restore/m3/results.json" \
        --out docs/img/context_following.png

Points: the linear context predictors of ``context_probe.py`` (removed on 2026-12-07, at commit
3771b6e; its --json files are the input) and ADTR checkpoints scored by
``accuracy.py`` on the same split. The x axis is the input following on held-out normals (0 = the
per-location mean), the label gives the defect pass-through; the grey line is the per-location mean
under the same head (the Gaussian baseline with the shipped image score). A predictor that explains
more of a normal image without passing defects would sit up and to the right of it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from adtr_edge.evaluation.plots import figure, style_panel, write_figure
from adtr_edge.evaluation.significance import METRIC_NAMES

METRICS = tuple(METRIC_NAMES.items())


def read_json(spec: str, flag: str) -> dict:
    path = Path(spec)
    if not path.is_file():
        raise SystemExit(f"{flag} {spec!r}: no such file")
    return json.loads(path.read_text())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", required=True, help="context_probe.py --json file")
    ap.add_argument("--model", action="append", default=[], metavar="LABEL=FILE", help="accuracy.py results.json of one ADTR run")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    probe = read_json(args.probe, "--probe")
    reference, *linear = probe["rows"]
    points = [(f"linear context, {'ring ' + str(r['ring']) if 'ring' in r else 'far ' + str(r['far'])}, {r['space']}", r, "s")
              for r in linear]
    for spec in args.model:
        label, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"--model {spec!r}: use LABEL=FILE")
        row = next((r for r in read_json(path, "--model")["rows"] if r.get("input_following") is not None), None)
        if row is None:
            raise SystemExit(f"--model {spec!r}: no ADTR row with the collapse figures")
        points.append((label, row, "o"))
    fig = figure(15.0, 4.2)
    for i, (key, name) in enumerate(METRICS):
        ax = fig.add_subplot(1, len(METRICS), i + 1)
        ax.axhline(reference[key], color="grey", linewidth=1.5, label="per-location mean, same head")
        for c, (label, row, marker) in enumerate(points):
            ax.plot(row["input_following"], row[key], marker, color=f"C{c}", label=label)
            ax.annotate(f"{row['defect_pass_through']:.2f}", (row["input_following"], row[key]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        style_panel(ax, i == 0, title=f"{name} (labels: defect pass-through)", xlabel="input following, held-out normals", ylabel=name)
    return write_figure(fig, args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
