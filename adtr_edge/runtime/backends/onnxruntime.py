"""ONNX Runtime backend: the two exported graphs in two InferenceSessions.

Runs everywhere (CPU), on CUDA where onnxruntime-gpu provides CUDAExecutionProvider, and runs the
INT8 folders of ``adtr-edge quantize`` unchanged.

A ``--target tensorrt`` folder runs with ONNX Runtime's Q/DQ fusion off, so it computes what the
engine would (``metadata.onnxruntime_config`` says why); the fast CPU form is ``--target cpu``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from ...errors import AdtrError
from ...metadata import ANOMALY_MAP, BACKBONE, FEATURES, IMAGES, METADATA_KEY, SCORE, TRANSFORMER, ModelMeta, onnxruntime_config
from ...int8.matched import check_matched_backbone
from ...folder import ONNX_KINDS, check_meta_agrees, read_model_folder, verify_graph_files
from .base import Backend

log = logging.getLogger(__name__)

# What each graph must expose: (inputs, outputs) by name, with the ONNX element type of each.
EXPECTED_IO = {
    BACKBONE: ({IMAGES: "tensor(uint8)"}, {FEATURES: "tensor(float)"}),
    TRANSFORMER: ({FEATURES: "tensor(float)"}, {ANOMALY_MAP: "tensor(float)", SCORE: "tensor(float)"}),
}


def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, the CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider",) if p in available]
    return providers + ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    """Backend over an ONNX export folder.

    ``intra_op_threads``: threads per session (None = ONNX Runtime's default, one per core);
    ``providers``: explicit execution providers, e.g. ``["CPUExecutionProvider"]``.
    ``spinning``: whether idle intra-op threads spin (None = ONNX Runtime's default, on). Off, they
    sleep: on a busy or shared CPU a spinning pool of N threads burns N cores' worth of scheduler
    share for one thread's work (docs/benchmarks.md section 9).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        intra_op_threads: int | None = None,
        providers: Sequence[str] | None = None,
        spinning: bool | None = None,
    ):
        folder = read_model_folder(model_dir, accept=ONNX_KINDS, purpose="the onnxruntime backend")
        if intra_op_threads is not None and int(intra_op_threads) < 1:
            raise AdtrError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        verify_graph_files(folder)
        check_matched_backbone(folder.meta.raw, folder.graph_file(BACKBONE))  # a quantisation-matched head, on its own backbone
        super().__init__(folder.meta)
        self.folder = folder
        self.intra_op_threads = None if intra_op_threads is None else int(intra_op_threads)
        self.requested_providers = list(providers) if providers else None
        self.config = onnxruntime_config(folder.meta.raw)  # session entries the folder's graphs need
        self.spinning = None if spinning is None else bool(spinning)
        self.sessions: dict = {}

    # -- lifecycle -------------------------------------------------------------------------
    def _activate(self) -> None:
        import onnxruntime as ort

        providers = self.requested_providers or default_providers()
        opts = ort.SessionOptions()
        if self.intra_op_threads is not None:
            opts.intra_op_num_threads = self.intra_op_threads
        for key, value in self.config.items():
            opts.add_session_config_entry(key, value)
        if self.config:
            log.info("TensorRT-form INT8 folder: Q/DQ run unfused (exact rounding, as TensorRT computes it)")
        if self.spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        sessions = {}
        for graph in (BACKBONE, TRANSFORMER):
            path = self.folder.graph_file(graph)
            try:
                sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            except Exception as e:  # onnxruntime raises its own exception types for bad graphs
                raise AdtrError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]})") from None
            self._check_session(sess, graph, path)
            sessions[graph] = sess
        self.sessions = sessions
        self.providers = sessions[BACKBONE].get_providers()
        log.info("onnxruntime %s, providers %s", ort.__version__, self.providers)

    def _deactivate(self) -> None:
        self.sessions = {}

    def _check_session(self, sess, graph: str, path: Path) -> None:
        custom = sess.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in custom:
            raise AdtrError(f"{path}: no adtr-edge metadata in the graph (was it made by 'adtr-edge export'?)")
        graph_meta = ModelMeta.from_json(custom[METADATA_KEY], str(path))
        check_meta_agrees(graph_meta, self.meta, graph, str(path))
        want_in, want_out = EXPECTED_IO[graph]
        for kind, wanted, have in (("input", want_in, sess.get_inputs()), ("output", want_out, sess.get_outputs())):
            types = {t.name: t.type for t in have}
            for name, dtype in wanted.items():
                if name not in types:
                    raise AdtrError(f"{path}: {graph} graph has no {kind} '{name}' (has {sorted(types)})")
                if types[name] != dtype:
                    raise AdtrError(f"{path}: {kind} '{name}' is {types[name]}, expected {dtype}")
        if graph == BACKBONE:
            shape = next(t.shape for t in sess.get_inputs() if t.name == IMAGES)
            h, w = self.meta.input_size
            fixed = [d if isinstance(d, int) else None for d in shape[1:]]
            if len(shape) != 4 or fixed not in ([h, w, 3], [None, None, None]):
                raise AdtrError(f"{path}: input '{IMAGES}' has shape {shape}, metadata says (batch, {h}, {w}, 3)")

    # -- stages ----------------------------------------------------------------------------
    def _run_backbone(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        (features,) = self.sessions[BACKBONE].run([FEATURES], {IMAGES: images})
        return features

    def _run_transformer(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features = np.ascontiguousarray(features, dtype=np.float32)
        anomaly_map, score = self.sessions[TRANSFORMER].run([ANOMALY_MAP, SCORE], {FEATURES: features})
        return anomaly_map, score.reshape(-1)
