"""What the scripts in ``benchmarks/`` share: untrained-but-real models, the options and output every
speed script has, ONNX Runtime sessions on random input.

Speed does not depend on training: the graphs of an untrained model have the same operators,
shapes and weights layout as a trained one. So a script builds ``build_model(cfg)`` with the
bundled ImageNet Lite0 weights, saves a checkpoint with placeholder thresholds, and exports it with
the real exporter. Results are cached in a work folder keyed by the config, so reruns are quick.
torch, onnx and onnxruntime are imported by the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..config import ModelConfig, TrainConfig
from ..postprocessing import Thresholds

REPO = Path(__file__).resolve().parents[2]  # the checkout, for an editable install
DEFAULT_WORK = REPO / "runs" / "bench-models"


def config_key(cfg: ModelConfig) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def make_checkpoint(cfg: ModelConfig, work: Path = DEFAULT_WORK) -> Path:
    """A checkpoint folder of an untrained model with Lite0 ImageNet weights (cached)."""
    from ..model import build_model
    from ..train.checkpoint import META_FILE, Checkpoint, save_checkpoint

    folder = Path(work) / f"ckpt-{config_key(cfg)}"
    if (folder / META_FILE).is_file():
        return folder
    model = build_model(cfg).eval()
    ckpt = Checkpoint(model_config=cfg, train_config=TrainConfig(), thresholds=Thresholds(1.0, 0.0, 2.0, "placeholder"),
                      extra={"weights_source": model.backbone.weights_source, "purpose": "speed benchmark, untrained"})
    return save_checkpoint(folder, model, ckpt)


def export_opset() -> int:
    """The opset for the TensorRT installed here (16 below 8.6, i.e. JetPack 5; else 17)."""
    from ..engine.trt_api import installed_version
    from ..export.opset import choose_opset

    return choose_opset(None, installed_version())


def make_export(cfg: ModelConfig, work: Path = DEFAULT_WORK, opset: int | None = None) -> tuple[Path, Path]:
    """(checkpoint folder, ONNX export folder) for ``cfg`` (cached per config and opset).

    ``opset`` defaults to what the installed TensorRT can import (``export_opset``)."""
    from ..export.onnx_export import export_checkpoint

    opset = export_opset() if opset is None else opset
    ckpt = make_checkpoint(cfg, work)
    out = Path(work) / f"export-{config_key(cfg)}" if opset == 17 else Path(work) / f"export-{config_key(cfg)}-opset{opset}"
    if not (out / "manifest.json").is_file():
        export_checkpoint(ckpt, out, opset=opset, force=True)
    return ckpt, out


def quantize_available() -> bool:
    try:
        from ..int8 import quantize  # noqa: F401
    except ImportError:
        return False
    return hasattr(quantize, "quantize_export")


def make_int8(export: Path, work: Path = DEFAULT_WORK, calib_count: int = 32) -> Path | None:
    """Q/DQ INT8 sibling of ``export`` (calibrated on generated texture images), or None when
    ``adtr_edge.int8.quantize`` is not in this build."""
    if not quantize_available():
        return None
    from ..data.generate import generate_sample_dataset
    from ..int8.quantize import quantize_export

    out = Path(work) / f"{export.name}-int8"
    if (out / "manifest.json").is_file():
        return out
    category = Path(work) / "calib-data" / "tiles"
    if not (category / "train" / "good").is_dir():
        category = generate_sample_dataset(category.parent, n_train=calib_count, n_test_good=1, n_test_defect=1,
                                           size=(256, 256), seed=1)
    quantize_export(export, category / "train" / "good", out, calib_count=calib_count, batch_size=8, log=lambda m: None)
    return out


def from_checkout(relpath: str):
    """A module of the checkout outside the package, loaded from its file (``tests/mqtt_broker.py``:
    the broker and fake model the tests use), so a script that borrows it needs no ``sys.path`` edit.
    It must import only installed packages."""
    import importlib.util
    import sys

    name = "adtr_checkout." + relpath[:-3].replace("/", ".")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / relpath)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[name]


class LoopingCapture:
    """cv2.VideoCapture that rewinds at the end until ``total`` frames were read (a long run from
    a short file; every frame is still decoded, as from a camera)."""

    def __init__(self, path: str, api: int, total: int):
        import cv2

        self.cv2, self.cap, self.total, self.read_count = cv2, cv2.VideoCapture(path, api), total, 0

    def isOpened(self):
        return self.cap.isOpened()

    def get(self, prop):
        return self.cap.get(prop)

    def read(self):
        if self.read_count >= self.total:
            return False, None
        ok, image = self.cap.read()
        if not ok:
            self.cap.set(self.cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self.cap.read()
        self.read_count += ok
        return ok, image

    def release(self):
        self.cap.release()


def add_common_args(ap) -> None:
    """--threads / --work / --json: the options every speed benchmark shares."""
    ap.add_argument("--threads", type=int, default=None, help="default: all usable cores")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--json", type=Path, default=None)


def parse_and_start(ap, argv: list[str]):
    """Parse the options, print the header; returns (args, threads)."""
    import os

    args = ap.parse_args(argv[1:])
    start(argv)
    return args, args.threads or len(os.sched_getaffinity(0))


def finish(args, results: dict) -> int:
    """Write the results JSON when --json was given."""
    if args.json:
        from ..fileio import write_json_atomic

        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")
    return 0


def start(argv: list[str]) -> None:
    """Print the command line, machine and date: the first lines of every benchmark's output."""
    from .machine import header_lines

    for line in header_lines(["python", *argv]):
        print(line)
    print(flush=True)


def ort_session(model, threads: int | None, providers=("CPUExecutionProvider",)):
    """An ONNX Runtime session on ``model``: a path, serialised bytes or an in-memory ModelProto."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(source, sess_options=opts, providers=list(providers))


def random_feed(session, seed: int = 0) -> dict:
    """Random input for a session's first input at batch 1: uint8 images for a backbone, float
    features for a transformer (dynamic dimensions become 1)."""
    import numpy as np

    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, shape, dtype=np.uint8) if "uint8" in inp.type else rng.standard_normal(shape).astype(np.float32)
    return {inp.name: x}


def stats_row(name: str, samples: list[float], batch: int) -> str:
    import numpy as np

    a = np.asarray(samples)
    return (f"| {name} | {batch} | {a.mean():.2f} | {np.percentile(a, 50):.2f} | {np.percentile(a, 95):.2f} | "
            f"{batch * 1e3 / np.median(a):.1f} |")


STATS_HEADER = "| variant | batch | mean ms | p50 ms | p95 ms | img/s (from p50) |\n|---|---|---|---|---|---|"
