"""A Triton Inference Server model repository from a model folder (``adtr-edge export-triton``).

Layout (``name`` defaults to ``adtr``)::

    REPO/
      adtr_backbone/     config.pbtxt, 1/model.onnx | 1/model.plan | 1/model.py + 1/model.onnx
      adtr_transformer/  config.pbtxt, 1/...
      adtr/              config.pbtxt (ensemble: images -> backbone -> transformer -> anomaly_map, score), 1/

The wire format is the backbone graph's own input: ``images`` uint8 (N, H, W, 3) BGR. Normalisation
is inside backbone.onnx (``adtr_edge.preprocessing``), so the server adds no preprocessing of its
own and a client sends 3 bytes per pixel instead of 12.

Flavours: ``python`` (Triton's python backend running ONNX Runtime on the CPU: for servers without
the ONNX Runtime backend, and the one a CPU-only test machine can serve), ``onnxruntime_onnx`` (the
ONNX Runtime backend of the full Triton image, GPU or CPU) and ``tensorrt_plan`` (engines from
``adtr-edge build-engine``; they run only on the GPU and TensorRT version that built them).

Every config carries the adtr-edge metadata in ``parameters`` (the metadata JSON, the threshold and
the digests of both ONNX graphs), so a client can check it talks to the model it has locally
(``adtr_edge.runtime.backends.triton``).

This module writes text only; it needs neither tritonclient nor onnxruntime.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import AdtrError
from ..fileio import staged_folder
from ..folder import ONNX_KINDS, TENSORRT, ModelFolder, engine_entries, read_model_folder, recorded_sha256, verify_engine_files, verify_graph_files
from ..metadata import ANOMALY_MAP, BACKBONE, FEATURES, GRAPHS, IMAGES, SCORE, TRANSFORMER, onnxruntime_config

FLAVOURS = ("python", "onnxruntime_onnx", "tensorrt_plan")
KINDS = ("auto", "cpu", "gpu")
DEFAULT_NAME = "adtr"
VERSION = "1"  # the one version folder written; Triton serves the latest
REPO_MANIFEST = "adtr_edge_repository.json"  # what was exported from what (Triton ignores root files)
PYTHON_MODEL_SOURCE = Path(__file__).with_name("triton_python_model.py")

# Parameter keys every model of the repository carries (values are strings, as Triton's are).
P_META = "adtr_edge_meta"
P_THRESHOLD = "adtr_edge_threshold"
P_DIGEST = {BACKBONE: "adtr_edge_backbone_onnx_sha256", TRANSFORMER: "adtr_edge_transformer_onnx_sha256"}
P_GRAPH = "adtr_edge_graph"
P_FLAVOUR = "adtr_edge_flavour"
P_THREADS = "intra_op_threads"  # read by the python flavour's model.py
# JSON of the ONNX Runtime session config entries the graphs need (metadata.onnxruntime_config),
# applied by the python flavour's model.py exactly as the in-process backend applies them.
P_SESSION_CONFIG = "onnxruntime_session_config"


@dataclass(frozen=True)
class TritonOptions:
    flavour: str = "python"
    name: str = DEFAULT_NAME
    max_batch: Optional[int] = None  # None: 8, or the engine profile's max for tensorrt_plan
    instances: int = 1
    kind: str = "auto"  # auto: KIND_CPU for python, KIND_GPU for the others
    queue_delay_us: int = 2000
    threads: int = 0  # python flavour: ONNX Runtime intra-op threads per instance (0 = its default)


def member_names(name: str) -> Dict[str, str]:
    return {BACKBONE: f"{name}_{BACKBONE}", TRANSFORMER: f"{name}_{TRANSFORMER}"}


def _check_options(opts: TritonOptions) -> None:
    if opts.flavour not in FLAVOURS:
        raise AdtrError(f"--flavour {opts.flavour!r}: choose one of {', '.join(FLAVOURS)}")
    if opts.kind not in KINDS:
        raise AdtrError(f"--kind {opts.kind!r}: choose one of {', '.join(KINDS)}")
    if not opts.name or not all(c.isalnum() or c in "_-" for c in opts.name):
        raise AdtrError(f"--name {opts.name!r}: use letters, digits, '_' or '-' (it names folders and models)")
    if opts.max_batch is not None and opts.max_batch < 1:
        raise AdtrError(f"--max-batch must be >= 1, got {opts.max_batch}")
    if opts.instances < 1:
        raise AdtrError(f"--instances must be >= 1, got {opts.instances}")
    if opts.queue_delay_us < 0:
        raise AdtrError(f"--queue-delay-us must be >= 0, got {opts.queue_delay_us}")
    if opts.threads < 0:
        raise AdtrError(f"--threads must be >= 0, got {opts.threads}")


def onnx_digests(folder: ModelFolder) -> Dict[str, str]:
    """The sha256 of each ONNX graph a folder runs: the graphs of an export, or the graphs an
    engine folder's engines were built from. The same on both sides of the wire, whatever the flavour."""
    recorded = recorded_sha256(folder) if folder.is_onnx else None
    out = {}
    for graph in GRAPHS:
        digest = recorded[graph] if recorded is not None else engine_entries(folder)[graph].onnx_sha256
        if not digest:
            raise AdtrError(f"{folder.path}: the manifest records no ONNX sha256 for graph '{graph}'")
        out[graph] = str(digest)
    return out


def _source_folder(model_dir: Path, flavour: str) -> ModelFolder:
    if flavour == "tensorrt_plan":
        folder = read_model_folder(model_dir, accept=(TENSORRT,), purpose="--flavour tensorrt_plan")
        verify_engine_files(folder.path, folder.manifest)
        return folder
    folder = read_model_folder(model_dir, accept=ONNX_KINDS, purpose=f"--flavour {flavour}")
    verify_graph_files(folder)
    return folder


def _check_session_config(folder: ModelFolder, opts: TritonOptions) -> None:
    """Triton's ONNX Runtime backend takes a fixed list of session options, not config entries, so a
    folder whose graphs need one (TensorRT-form INT8: Q/DQ unfused, or it saturates on x86 CPUs)
    cannot run correctly there on the CPU. On the GPU the CUDA provider runs the Q/DQ pairs as written."""
    kind = opts.kind if opts.kind != "auto" else "gpu"
    if opts.flavour == "onnxruntime_onnx" and kind == "cpu" and onnxruntime_config(folder.meta.raw):
        raise AdtrError(f"{folder.path}: a TensorRT-form INT8 folder needs ONNX Runtime's session.disable_quant_qdq, which "
                        "Triton's onnxruntime backend cannot set on the CPU; use --flavour python, or quantise with --target cpu")


def _max_batch(folder: ModelFolder, opts: TritonOptions) -> int:
    if folder.kind != TENSORRT:
        return opts.max_batch or 8
    # An engine accepts only the batch sizes of its optimisation profile.
    profile_max = min(e.profile[2] for e in engine_entries(folder).values())
    if opts.max_batch is not None and opts.max_batch > profile_max:
        raise AdtrError(f"--max-batch {opts.max_batch}: the engines in {folder.path} take batches up to {profile_max} "
                        "(rebuild with a larger --max-batch in 'adtr-edge build-engine')")
    return opts.max_batch or profile_max


# -- config.pbtxt text ---------------------------------------------------------------------
def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dims(dims: List[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in dims) + " ]"


def _tensor(name: str, dtype: str, dims: List[int], reshape: Optional[List[int]] = None) -> str:
    body = f"    name: {_q(name)}\n    data_type: {dtype}\n    dims: {_dims(dims)}\n"
    if reshape is not None:
        body += f"    reshape: {{ shape: {_dims(reshape)} }}\n"
    return "  {\n" + body + "  }"


def _io(label: str, tensors: List[str]) -> str:
    return f"{label} [\n" + ",\n".join(tensors) + "\n]\n"


def _parameters(params: Dict[str, str]) -> str:
    return "".join(f"parameters {{\n  key: {_q(k)}\n  value: {{ string_value: {_q(v)} }}\n}}\n" for k, v in sorted(params.items()))


def _shapes(folder: ModelFolder) -> Dict[str, List[int]]:
    meta = folder.meta
    h, w = meta.input_size
    gh, gw = meta.grid
    return {IMAGES: [h, w, 3], FEATURES: [meta.channels, gh, gw], ANOMALY_MAP: [1, h, w], SCORE: [1]}


def _member_config(graph: str, model: str, folder: ModelFolder, opts: TritonOptions, max_batch: int, params: Dict[str, str]) -> str:
    shapes = _shapes(folder)
    if opts.flavour == "python":
        head = f"name: {_q(model)}\nbackend: \"python\"\n"
    elif opts.flavour == "onnxruntime_onnx":
        head = f"name: {_q(model)}\nplatform: \"onnxruntime_onnx\"\nbackend: \"onnxruntime\"\ndefault_model_filename: \"model.onnx\"\n"
    else:
        head = f"name: {_q(model)}\nplatform: \"tensorrt_plan\"\nbackend: \"tensorrt\"\ndefault_model_filename: \"model.plan\"\n"
    if graph == BACKBONE:
        inputs = [_tensor(IMAGES, "TYPE_UINT8", shapes[IMAGES])]
        outputs = [_tensor(FEATURES, "TYPE_FP32", shapes[FEATURES])]
    else:
        inputs = [_tensor(FEATURES, "TYPE_FP32", shapes[FEATURES])]
        # The graph's score is (N,): with batching Triton needs a per-item shape, so [1] outside,
        # reshaped to a scalar per item for the model.
        outputs = [_tensor(ANOMALY_MAP, "TYPE_FP32", shapes[ANOMALY_MAP]), _tensor(SCORE, "TYPE_FP32", shapes[SCORE], reshape=[])]
    kind = opts.kind if opts.kind != "auto" else ("cpu" if opts.flavour == "python" else "gpu")
    preferred = sorted({b for b in (max_batch // 2, max_batch) if b >= 1})
    text = (
        head
        + f"max_batch_size: {max_batch}\n"
        + _io("input", inputs)
        + _io("output", outputs)
        + "dynamic_batching {\n"
        + f"  preferred_batch_size: {_dims(preferred)}\n"
        + f"  max_queue_delay_microseconds: {opts.queue_delay_us}\n"
        + "}\n"
        + f"instance_group [\n  {{\n    count: {opts.instances}\n    kind: KIND_{kind.upper()}\n  }}\n]\n"
        + "version_policy: { latest: { num_versions: 1 } }\n"
    )
    member_params = dict(params, **{P_GRAPH: graph})
    if opts.flavour == "python":
        member_params[P_THREADS] = str(opts.threads)
        member_params[P_SESSION_CONFIG] = json.dumps(onnxruntime_config(folder.meta.raw), sort_keys=True)
    return text + _parameters(member_params)


def _ensemble_config(name: str, folder: ModelFolder, max_batch: int, params: Dict[str, str]) -> str:
    shapes = _shapes(folder)
    members = member_names(name)

    def step(model: str, inputs: List[str], outputs: List[str]) -> str:
        maps = "".join(f"      input_map {{ key: {_q(t)} value: {_q(t)} }}\n" for t in inputs)
        maps += "".join(f"      output_map {{ key: {_q(t)} value: {_q(t)} }}\n" for t in outputs)
        return f"    {{\n      model_name: {_q(model)}\n      model_version: -1\n{maps}    }}"

    steps = [step(members[BACKBONE], [IMAGES], [FEATURES]), step(members[TRANSFORMER], [FEATURES], [ANOMALY_MAP, SCORE])]
    return (
        f"name: {_q(name)}\nplatform: \"ensemble\"\nmax_batch_size: {max_batch}\n"
        + _io("input", [_tensor(IMAGES, "TYPE_UINT8", shapes[IMAGES])])
        + _io("output", [_tensor(ANOMALY_MAP, "TYPE_FP32", shapes[ANOMALY_MAP]), _tensor(SCORE, "TYPE_FP32", shapes[SCORE])])
        + "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
        + _parameters(dict(params, **{P_GRAPH: "ensemble"}))
    )


def repository_parameters(folder: ModelFolder, flavour: str) -> Dict[str, str]:
    """The adtr-edge parameters every model of the repository carries."""
    params = {P_META: folder.meta.to_json(), P_THRESHOLD: repr(float(folder.meta.thresholds.threshold)), P_FLAVOUR: flavour}
    for graph, digest in onnx_digests(folder).items():
        params[P_DIGEST[graph]] = digest
    return params


# -- writing -------------------------------------------------------------------------------
def _write_member(root: Path, graph: str, model: str, folder: ModelFolder, opts: TritonOptions, max_batch: int,
                  params: Dict[str, str]) -> None:
    model_dir = root / model
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True)
    source = folder.graph_file(graph)
    if opts.flavour == "tensorrt_plan":
        shutil.copyfile(source, version_dir / "model.plan")
    else:
        shutil.copyfile(source, version_dir / "model.onnx")
        if opts.flavour == "python":
            shutil.copyfile(PYTHON_MODEL_SOURCE, version_dir / "model.py")
    (model_dir / "config.pbtxt").write_text(_member_config(graph, model, folder, opts, max_batch, params), encoding="utf-8")


def export_triton(model_dir: str | os.PathLike, out: str | os.PathLike, options: Optional[TritonOptions] = None,
                  force: bool = False) -> dict:
    """Write the repository for ``model_dir`` to ``out``; returns what was written (also saved as
    ``REPO/adtr_edge_repository.json``). The repository is built in a temporary folder next to
    ``out`` and renamed onto it, so ``out`` is either the old repository or the complete new one."""
    opts = options or TritonOptions()
    _check_options(opts)
    out = Path(out)
    if out.exists() and not force:
        raise AdtrError(f"{out}: already exists (pass --force to replace it)")
    if out.exists() and not out.is_dir():
        raise AdtrError(f"{out}: exists and is not a folder")
    folder = _source_folder(Path(model_dir), opts.flavour)
    _check_session_config(folder, opts)
    max_batch = _max_batch(folder, opts)
    params = repository_parameters(folder, opts.flavour)
    members = member_names(opts.name)
    with staged_folder(out) as tmp:  # out is the old repository or the complete new one, never half of either
        for graph in GRAPHS:
            _write_member(tmp, graph, members[graph], folder, opts, max_batch, params)
        ensemble = tmp / opts.name
        (ensemble / VERSION).mkdir(parents=True)  # an ensemble has no files, but Triton wants its version folder
        (ensemble / "config.pbtxt").write_text(_ensemble_config(opts.name, folder, max_batch, params), encoding="utf-8")
        summary = {
            "format": "adtr-edge-triton/1",
            "source": str(folder.path),
            "source_kind": folder.kind,
            "flavour": opts.flavour,
            "ensemble": opts.name,
            "models": {BACKBONE: members[BACKBONE], TRANSFORMER: members[TRANSFORMER]},
            "max_batch_size": max_batch,
            "instances": opts.instances,
            "onnx_sha256": onnx_digests(folder),
            "threshold": float(folder.meta.thresholds.threshold),
            "wire": {IMAGES: ["N"] + _shapes(folder)[IMAGES], "dtype": "uint8", "layout": "NHWC", "color": "BGR"},
        }
        (tmp / REPO_MANIFEST).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for d in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700: a server in a container runs as another user
            os.chmod(d, 0o755 if d.is_dir() else 0o644)
    return summary
