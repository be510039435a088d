"""What to benchmark: model folders (read by adtr_edge.folder), the backend that runs each, and
PyTorch eager on a checkpoint behind the runtime's Backend contract."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import AdtrError
from ..folder import (
    CHECKPOINT,
    ONNX_KINDS,
    QDQ,
    TENSORRT,
    ModelFolder,
    engine_entries,
    read_model_folder,
)
from ..metadata import BACKBONE, GRAPHS, TARGET_CPU, TRANSFORMER, quantization_target
from ..postprocessing import Thresholds
from ..runtime import registry
from ..runtime.backends.base import Backend
from .flops import count_graph_flops


def backend_choices() -> tuple[str, ...]:
    """``bench --backend``'s values: "all", then every backend the registry offers to bench."""
    return registry.backend_choices(registry.BENCH)


@dataclass
class Target:
    """One thing to benchmark: a folder and the backend that runs it."""

    path: Path
    kind: str  # a kind of adtr_edge.folder.KINDS
    backend: str  # a name of adtr_edge.runtime.registry.BACKENDS
    precision: str
    available: bool = True
    reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.path.name} ({self.backend}, {self.precision})"


def _precision(folder: ModelFolder) -> str:
    if folder.kind == CHECKPOINT:
        return "fp32"
    if folder.kind == QDQ or folder.meta.raw.get("quantization"):
        # the TensorRT form runs its Q/DQ unfused on ONNX Runtime (exact rounding, not a speed figure)
        return "int8-cpu" if quantization_target(folder.meta.raw) == TARGET_CPU else "int8-qdq-emulated"
    if folder.kind == TENSORRT:
        return "+".join(sorted({e.precision for e in engine_entries(folder).values()}))
    return "fp32"


def resolve_targets(model_dirs: Sequence[str | Path], backend: str = "all") -> list[Target]:
    """What to run for each folder. ``backend="all"``: each folder's own backend, unavailable ones
    kept as skipped entries with the reason; an explicit backend must run the folder's kind and be
    available."""
    registry.check_choice(registry.BENCH, backend)
    if not model_dirs:
        raise AdtrError("give at least one model folder")
    targets = []
    for d in model_dirs:
        folder = read_model_folder(d)  # every kind the toolkit writes (the table in adtr_edge.folder)
        entry = registry.backend(folder.backend if backend == "all" else backend)
        if folder.kind not in entry.kinds:
            raise AdtrError(f"{folder.path}: a {folder.kind} folder runs on {folder.backend}, not --backend {backend}")
        ok, why = entry.available()
        if not ok and backend != "all":
            raise AdtrError(f"{folder.path}: --backend {backend} cannot run here: {why}")
        targets.append(Target(folder.path, folder.kind, entry.name, _precision(folder), ok, "" if ok else why))
    return targets


class TorchBackend(Backend):
    """PyTorch eager on a checkpoint folder, behind the runtime's Backend contract, so the same
    measurement loop times it next to ONNX Runtime and TensorRT (benchmarks only)."""

    name = "torch"

    def __init__(self, checkpoint: str | Path, *, threads: int | None = None, device: str = "cpu"):
        import torch  # noqa: PLC0415

        from ..export.onnx_export import checkpoint_metadata  # noqa: PLC0415
        from ..train.checkpoint import load_checkpoint  # noqa: PLC0415

        if threads is not None:
            torch.set_num_threads(int(threads))
        self.torch, self.device = torch, torch.device(device)
        model, ckpt = load_checkpoint(checkpoint, device=self.device)
        for p in model.parameters():  # inference only (and torch's FLOP counter trips on grad-less views)
            p.requires_grad_(False)
        thresholds = ckpt.thresholds or Thresholds(1.0, 0.0, 2.0, "uncalibrated")
        super().__init__(checkpoint_metadata(model, ckpt, thresholds))
        self.model, self.graph = model, model.transformer_graph()

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        pass

    def _run_backbone(self, images: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model.backbone(self.torch.from_numpy(np.ascontiguousarray(images)).to(self.device)).cpu().numpy()

    def _run_transformer(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.inference_mode():
            amap, score = self.graph(self.torch.from_numpy(np.ascontiguousarray(features)).to(self.device))
        return amap.cpu().numpy(), score.cpu().numpy()

    def count_flops(self) -> dict[str, int]:
        """FLOPs per frame by torch's own counter (matmul/conv family), a cross-check of ``count_flops``."""
        from torch.utils import flop_counter  # noqa: PLC0415

        def cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs):
            return flop_counter.sdpa_flop_count(query, key, value)

        # torch's counter has no formula for the CPU kernel of scaled_dot_product_attention (it
        # counts the CUDA ones), so the attention matmuls of the fused path would count as 0.
        mapping = {}
        cpu_op = getattr(self.torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if cpu_op is not None:
            mapping[cpu_op] = cpu_sdpa

        h, w = self.meta.input_size
        images = self.torch.zeros((1, h, w, 3), dtype=self.torch.uint8, device=self.device)
        out = {}
        # no_grad, not inference_mode: the counter hooks autograd, which inference tensors lack.
        with self.torch.no_grad():
            with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as fc:
                features = self.model.backbone(images)
            out[BACKBONE] = int(fc.get_total_flops())
            with flop_counter.FlopCounterMode(display=False, custom_mapping=mapping) as fc:
                self.graph(features)
            out[TRANSFORMER] = int(fc.get_total_flops())
        return out


def open_backend(target: Target, threads: int | None = None) -> Backend:
    entry = registry.backend(target.backend)
    options = {entry.threads: threads} if entry.threads and threads is not None else {}
    return entry.open(target.path, **options)


def graph_flops(target: Target) -> dict | None:
    """Per-graph FLOPs per frame of an ONNX folder (None for engines and checkpoints)."""
    if target.kind not in ONNX_KINDS:
        return None
    folder = read_model_folder(target.path, accept=ONNX_KINDS)
    out = {g: count_graph_flops(folder.graph_file(g)).to_dict() for g in GRAPHS}
    out["per_frame"] = sum(out[g]["total"] for g in GRAPHS)
    return out


