"""The gain curve of learning from the line: what k reviewed defects and k reviewed false alarms add.

    python benchmarks/review_gain.py --data ../shared/data/magnetic_tile --model runs/mt-default \
        --out runs/review-gain/mt --results runs/review-gain/mt.jsonl --k 0,5,10,20,40 --draws 3 --modes masks,labels
    python benchmarks/review_gain.py --plot runs/review-gain/mt.jsonl --png docs/img/review_gain_mt.png
    python benchmarks/review_gain.py --table runs/review-gain/mt.jsonl

It plays the operator of a line that runs MODEL (a normal-only checkpoint). The test split is cut by
``adtr_edge.data.datasets.validation_split`` into the validation part and the held-out rest, as
every benchmark cuts it; every review is drawn from the validation part only:

* k defects, the first k of a random order of the validation defects (one order per draw, so a
  draw's 10 include its 5), reviewed once with their masks painted
  (``masks``) and once with the image label alone (``labels``): the same defects in both modes;
* the k validation normals MODEL scores highest (its false alarms, or where it raises none, its
  nearest misses), reviewed as "not a defect".

They are written into a fresh review folder with ``adtr_edge.runtime.review.ReviewFolder`` (what the
web view writes) and fine-tuned with ``adtr_edge.finetune.finetune`` (what ``adtr-edge finetune``
runs) at the command's defaults. The gate gets ``--against-data`` the validation images that were not
reviewed (a folder of links): with a handful of reviews the 30% held out cannot rank on their own.
A model the gate refuses is still scored (``promoted`` says what the gate decided).

Every model (MODEL itself at k = 0, then each fine-tuned one) is scored on the untouched held-out
part: image AUROC, pixel AUROC and AUPRO (where the dataset has masks) and the false-positive rate of
its own shipped threshold on the held-out normals. One JSON line per run is appended to --results as
it finishes; a run already there is skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from adtr_edge.data.datasets import ImageSet, guard_not_trained_on, load_dataset, validation_split
from adtr_edge.errors import AdtrError
from adtr_edge.evaluation.evaluate import report_for, score_imageset, torch_predictor
from adtr_edge.finetune import FinetuneRefused, finetune
from adtr_edge.preprocessing import preprocess_spec, read_image, read_mask
from adtr_edge.runtime.review import ReviewFolder

MODES = ("masks", "labels")
METRICS = ("image_auroc", "pixel_auroc", "aupro", "false_positive_rate")
NAMES = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO",
         "false_positive_rate": "false-alarm rate at the threshold (held-out normals)"}


def score_model(checkpoint: Path, images: ImageSet) -> tuple:
    """(Scored, report) of ``checkpoint`` on ``images`` at its own shipped threshold."""
    from adtr_edge.train.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(checkpoint, device="cpu")
    guard_not_trained_on(images, ckpt.extra.get("train_paths", []))
    scored = score_imageset(torch_predictor(model, "cpu"), images, preprocess_spec(ckpt.model_config), progress=False)
    return scored, report_for(scored, ckpt.thresholds)


def figures(report: dict) -> dict:
    at = report.get("at_threshold") or {}
    return {"image_auroc": report.get("image_auroc"), "pixel_auroc": report.get("pixel_auroc"), "aupro": report.get("aupro"),
            "false_positive_rate": at.get("false_positive_rate"), "false_alarms": at.get("fp"),
            "held_out_normals": (at.get("fp") or 0) + (at.get("tn") or 0), "threshold": at.get("threshold")}


def link_dataset(images: ImageSet, folder: Path) -> Path:
    """``images`` as an MVTec-layout test split of links (what ``--against-data`` reads)."""
    (folder / "train" / "good").mkdir(parents=True, exist_ok=True)
    for s in images:
        group = folder / "test" / s.defect
        group.mkdir(parents=True, exist_ok=True)
        os.symlink(s.path.resolve(), group / s.path.name)
        if s.mask_path is not None:
            masks = folder / "ground_truth" / s.defect
            masks.mkdir(parents=True, exist_ok=True)
            os.symlink(s.mask_path.resolve(), masks / f"{s.path.stem}_mask.png")
    return folder


def write_reviews(folder: Path, test: ImageSet, defects: list, normals: list, masks: bool, model: Path, val_scores: dict,
                  threshold: float) -> None:
    """The operator's reviews, through the review folder's own API."""
    reviews = ReviewFolder(folder, option="--review")
    for i in defects:
        s = test[i]
        image = read_image(s.path)
        mask = np.where(read_mask(s.mask_path), 255, 0).astype(np.uint8) if masks and s.mask_path is not None else None
        reviews.add(image, "defect", label=s.defect, mask=mask, source="review-gain", frame=int(i), name=s.path.name,
                    score=val_scores.get(i), threshold=threshold, model={"path": str(model)})
    for i in normals:
        s = test[i]
        reviews.add(read_image(s.path), "normal", source="review-gain", frame=int(i), name=s.path.name,
                    score=val_scores.get(i), threshold=threshold, model={"path": str(model)})


def done_runs(results: Path) -> set:
    if not results.is_file():
        return set()
    out = set()
    for line in results.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out.add((r["dataset"], r["mode"], r["k"], r["draw"]))
    return out


def append(results: Path, row: dict) -> None:
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    print(json.dumps(row), flush=True)


def sweep(args) -> int:
    data, model, out, results = Path(args.data), Path(args.model), Path(args.out), Path(args.results)
    name = args.name or data.name
    test = load_dataset(data, "test")
    val_idx, held_idx = validation_split(test)
    held = test.subset(held_idx)
    val_defects = [i for i in val_idx if int(test.labels[i]) == 1]
    val_normals = [i for i in val_idx if int(test.labels[i]) == 0]
    has_masks = any(test[i].mask_path is not None for i in val_defects)
    modes = [m for m in args.modes.split(",") if m]
    if "masks" in modes and not has_masks:
        print(f"{data}: no masks in the validation defects; the masks mode is left out", file=sys.stderr)
        modes = [m for m in modes if m != "masks"]
    ks = [int(k) for k in args.k.split(",") if k]
    too_many = [k for k in ks if k > min(len(val_defects), len(val_normals))]
    if too_many:
        raise SystemExit(f"--k {too_many}: the validation part has {len(val_defects)} defects and {len(val_normals)} normals")
    header = {"dataset": name, "data": str(data), "model": str(model), "validation_defects": len(val_defects),
              "validation_normals": len(val_normals), "held_out_images": len(held), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} CPUs", "threads": args.threads}
    done = done_runs(results)
    out.mkdir(parents=True, exist_ok=True)

    # The base model: its false alarms on the validation normals (what the operator sees first) and its held-out figures.
    base_cache = out / "base-validation-scores.json"
    if base_cache.is_file():
        cached = json.loads(base_cache.read_text())
        val_scores, threshold = {int(k): v for k, v in cached["scores"].items()}, cached["threshold"]
    else:
        scored, rep = score_model(model, test.subset(val_normals))
        val_scores = {i: float(s) for i, s in zip(val_normals, scored.scores)}
        threshold = (rep.get("at_threshold") or {}).get("threshold")
        base_cache.write_text(json.dumps({"scores": val_scores, "threshold": threshold}))
    false_alarm_order = sorted(val_normals, key=lambda i: -val_scores[i])
    if 0 in ks and (name, "base", 0, 0) not in done:
        t0 = time.perf_counter()
        _, rep = score_model(model, held)
        append(results, {**header, "mode": "base", "k": 0, "draw": 0, **figures(rep), "score_seconds": round(time.perf_counter() - t0, 1),
                         "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    plan = [(mode, k, draw) for mode in modes for draw in range(args.draws) for k in ks if k > 0]
    if args.runs:  # an explicit order (the most wanted first, for a sweep that may be cut short)
        plan = [(m, int(k), int(d)) for m, k, d in (r.split(":") for r in args.runs.split(",") if r)]
        unknown = [m for m, _, _ in plan if m not in modes]
        if unknown:
            raise SystemExit(f"--runs: modes {sorted(set(unknown))} not among --modes {modes}")
    for mode, k, draw in plan:
        if (name, mode, k, draw) in done:
            continue
        # One order of the validation defects per draw: a draw's k reviews are its first k (the line
        # reviews more as it runs), the same in both modes.
        defects = sorted(int(i) for i in np.random.default_rng(draw).permutation(val_defects)[:k])
        normals = false_alarm_order[:k]
        run = out / f"{mode}-k{k}-d{draw}"
        if run.exists():
            shutil.rmtree(run)
        reviews, gate, new = run / "reviews", run / "gate", run / "model"
        write_reviews(reviews, test, defects, normals, mode == "masks", model, val_scores, threshold)
        reviewed = set(defects) | set(normals)
        link_dataset(test.subset([i for i in val_idx if i not in reviewed]), gate)
        t0 = time.perf_counter()
        try:
            settings = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("alpha", args.alpha)) if v is not None}
            report = finetune(model, reviews, new, data=args.train_data, against_data=gate, device="cpu", log=print, **settings)
            scored_dir = new
        except FinetuneRefused:
            scored_dir = new.with_name(new.name + ".refused")
            report = json.loads((scored_dir / "finetune.json").read_text())
        wall = time.perf_counter() - t0
        t1 = time.perf_counter()
        _, rep = score_model(scored_dir, held)
        row = {**header, "mode": mode, "k": k, "draw": draw, **figures(rep),
               "finetune_seconds": round(wall, 1), "train_seconds": round(sum(p["seconds"] for p in report["passes"]), 1),
               "score_seconds": round(time.perf_counter() - t1, 1),
               "promoted": report["promoted"], "gate_worse": report["worse"], "gate_images": report["gate_images"],
               "gate_difference": report["difference"], "reviews": report["reviews"], "tuning": report["tuning"],
               "held_out_reviews": report["held_out"], "passes": report["passes"], "settings": report["settings"],
               "reviewed_defects": [test[i].path.name for i in defects],
               "reviewed_false_alarms": [test[i].path.name for i in normals],
               "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        append(results, row)
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)
    return 0


def read_rows(paths: list) -> list:
    rows = []
    for p in paths:
        rows += [json.loads(line) for line in Path(p).read_text().splitlines() if line.strip()]
    return rows


def curve(rows: list, dataset: str, mode: str, metric: str) -> list:
    """(k, mean, lowest, highest, draws) per k of one mode; k = 0 is the base model, shared by both modes."""
    out = []
    base = [r[metric] for r in rows if r["dataset"] == dataset and r["mode"] == "base" and r.get(metric) is not None]
    if base:
        out.append((0, base[0], base[0], base[0], 1))
    for k in sorted({r["k"] for r in rows if r["dataset"] == dataset and r["mode"] == mode}):
        v = [r[metric] for r in rows if r["dataset"] == dataset and r["mode"] == mode and r["k"] == k and r.get(metric) is not None]
        if v:
            out.append((k, statistics.mean(v), min(v), max(v), len(v)))
    return out


def plot(rows: list, png: Path) -> int:
    """Each metric against k, one line per mode (mean of the draws, the band from lowest to highest)."""
    from adtr_edge.evaluation.plots import figure, style_panel, write_figure

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    metrics = [m for m in METRICS if any(r.get(m) is not None for r in rows)]
    fig = figure(3.2 * len(metrics), 2.8 * len(datasets))
    colours = {"masks": "tab:blue", "labels": "tab:orange"}
    for row, dataset in enumerate(datasets):
        for col, metric in enumerate(metrics):
            ax = fig.add_subplot(len(datasets), len(metrics), row * len(metrics) + col + 1)
            for mode in MODES:
                c = curve(rows, dataset, mode, metric)
                if len(c) < 2:
                    continue
                k, mean, lo, hi, n = (np.array(x) for x in zip(*c))
                draws = f"{int(n[1:].min())}-{int(n[1:].max())}" if n[1:].min() != n[1:].max() else f"{int(n[1:].min())}"
                ax.plot(k, mean, marker="o", color=colours[mode], label=f"{mode} ({draws} draws)")
                ax.fill_between(k, lo, hi, color=colours[mode], alpha=0.2)
            if not ax.lines:
                ax.set_visible(False)
                continue
            ks = sorted({int(x) for line in ax.lines for x in line.get_xdata()})
            base = [r[metric] for r in rows if r["dataset"] == dataset and r["mode"] == "base" and r.get(metric) is not None]
            if base:
                ax.axhline(base[0], color="0.5", linestyle="--", linewidth=1, label="normal-only model")
            ax.set_xticks(ks)
            if col == 0:
                ax.legend(fontsize=7, loc="best")
            style_panel(ax, title=f"{dataset}: {NAMES[metric] if metric != 'false_positive_rate' else 'false-alarm rate'}",
                        xlabel="k reviewed defects (+ k normals)")
    return write_figure(fig, png)


def table(rows: list) -> str:
    """Markdown: per dataset, mode and k the mean [lowest, highest] of each metric over the draws."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        metrics = [m for m in METRICS if any(r.get(m) is not None for r in rows if r["dataset"] == dataset)]
        base = next((r for r in rows if r["dataset"] == dataset and r["mode"] == "base"), None)
        held = (base or rows[0])["held_out_images"]
        lines += [f"**{dataset}** ({held} held-out images; mean of the draws [lowest, highest])", "",
                  "| reviews | draws | " + " | ".join(NAMES[m] for m in metrics) + " | promoted | fine-tune wall s |",
                  "|---|---|" + "---|" * len(metrics) + "---|---|"]
        if base:
            lines.append("| none (the normal-only model) | - | " + " | ".join(fmt(m, base[m]) for m in metrics) + " | - | - |")
        for mode in MODES:
            for k in sorted({r["k"] for r in rows if r["dataset"] == dataset and r["mode"] == mode}):
                rs = [r for r in rows if r["dataset"] == dataset and r["mode"] == mode and r["k"] == k]
                cells = []
                for m in metrics:
                    v = [r[m] for r in rs if r.get(m) is not None]
                    cells.append(fmt(m, statistics.mean(v)) + (f" [{fmt(m, min(v))}, {fmt(m, max(v))}]" if len(v) > 1 else ""))
                wall = statistics.mean(r["finetune_seconds"] for r in rs)
                what = "painted defects" if mode == "masks" else "image-labelled defects"
                lines.append(f"| {k} {what} + {k} normals | {len(rs)} | " + " | ".join(cells)
                             + f" | {sum(bool(r['promoted']) for r in rs)}/{len(rs)} | {wall:.0f} |")
        lines.append("")
    return "\n".join(lines)


def fmt(metric: str, v) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if metric == "false_positive_rate" else f"{v:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="the dataset (MVTec layout) MODEL was trained on")
    ap.add_argument("--model", help="the normal-only checkpoint the line runs (adtr-edge train's --out)")
    ap.add_argument("--train-data", default=None, help="finetune's --data (default: the dataset MODEL records)")
    ap.add_argument("--out", help="working folder (review folders, gate links and models of the run in progress)")
    ap.add_argument("--results", help="JSON Lines file, one line appended per finished run")
    ap.add_argument("--name", default=None, help="the dataset's name in the results (default: the folder's)")
    ap.add_argument("--k", default="0,5,10,20,40", help="reviewed defects (and as many reviewed false alarms) per run")
    ap.add_argument("--draws", type=int, default=3, help="draws of the reviewed defects per k (seeds 0..draws-1)")
    ap.add_argument("--modes", default="masks,labels", help="masks (painted regions), labels (image labels only)")
    ap.add_argument("--runs", default=None, help="MODE:K:DRAW,... in this order instead of every mode x draw x k")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--epochs", type=int, default=None, help="finetune's --epochs (default: the command's)")
    ap.add_argument("--lr", type=float, default=None, help="finetune's --lr (default: the command's)")
    ap.add_argument("--alpha", type=float, default=None, help="finetune's --alpha (default: the command's)")
    ap.add_argument("--keep", action="store_true", help="keep each run's review folder and model")
    ap.add_argument("--plot", nargs="+", default=None, metavar="JSONL", help="plot these results (to --png)")
    ap.add_argument("--png", default="review_gain.png")
    ap.add_argument("--table", nargs="+", default=None, metavar="JSONL", help="print these results as a Markdown table")
    args = ap.parse_args()
    if args.plot:
        return plot(read_rows(args.plot), Path(args.png))
    if args.table:
        print(table(read_rows(args.table)))
        return 0
    missing = [o for o in ("data", "model", "out", "results") if getattr(args, o) is None]
    if missing:
        ap.error("a sweep needs " + ", ".join(f"--{o}" for o in missing))
    import torch

    torch.set_num_threads(args.threads)
    try:
        return sweep(args)
    except AdtrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
