"""Build the backbone and transformer engines of one export folder into ``engines/<name>/``.

Composable lazy loaders in the Polygraphy spirit: ``NetworkFromOnnx`` (builder, network, parser),
``EngineConfig`` (builder config for one graph's plan) and ``BuildSerializedEngine`` (the plan
bytes) do nothing until called, so a plan can be printed and checked before any GPU work.

Precision per graph (``plan_precisions``): ``int8``/``best`` = INT8 backbone + FP16 transformer
(transformers lose accuracy under INT8 PTQ); LayerNorm/Softmax stay in FP32. On 8.x-10.x this is
builder flags + per-layer constraints (+ a calibrator or Q/DQ for INT8); on 11.x networks are
strongly typed, so FP16 is a float16 copy of the ONNX graph and INT8 needs a Q/DQ graph.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from ..errors import AdtrError
from ..fileio import sha256_bytes, sha256_file, write_bytes_atomic
from ..folder import engine_file, read_export
from ..metadata import BACKBONE, GRAPHS, TARGET_CPU, TRANSFORMER, quantization_target
from . import calibration as calib
from . import onnx_tools
from .onnx_tools import float_plan
from .manifest import EngineKey, Profile, existing_entry_matches, read_manifest, write_manifest
from .trt_api import LogSink, TrtApi, process_logger

PRECISIONS = ("fp32", "fp16", "int8", "best")
GRAPH_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class BuildOptions:
    precision: str = "fp16"
    backbone_precision: str | None = None
    transformer_precision: str | None = None
    calib_images: Path | None = None
    calib_batches: int = 16
    calib_batch_size: int | None = None  # default: the profile's opt batch
    calib_dir: Path | None = None  # default: calibration/<name>
    recalibrate: bool = False
    workspace_mb: int = 1024
    profile: Profile = field(default_factory=Profile)
    dla_core: int | None = None
    timing_cache: Path | None = None
    build_log: Path | None = None
    force: bool = False
    keep_float: str = "auto"  # implicit INT8 of the backbone: layers kept FP16 (onnx_tools.float_plan)

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise AdtrError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        for opt, v in (("--backbone-precision", self.backbone_precision), ("--transformer-precision", self.transformer_precision)):
            if v is not None and v not in GRAPH_PRECISIONS:
                raise AdtrError(f"{opt} {v!r}: choose one of {', '.join(GRAPH_PRECISIONS)}")
        if self.workspace_mb < 16:
            raise AdtrError(f"--workspace {self.workspace_mb} MiB is too small (>= 16)")
        if self.calib_batches < 1:
            raise AdtrError(f"--calib-batches {self.calib_batches}: must be >= 1")
        if self.dla_core is not None and self.dla_core < 0:
            raise AdtrError(f"--dla-core {self.dla_core}: must be >= 0")


@dataclass
class GraphPlan:
    graph: str
    precision: str  # fp32 | fp16 | int8 (what the engine computes in, LayerNorm/Softmax aside)
    int8_source: str | None = None  # "calibrator" | "qdq"
    strongly_typed: bool = False
    convert_fp16: bool = False  # 11.x: build from a float16 copy of the graph
    fp16_flag: bool = False
    int8_flag: bool = False
    pin_sensitive: bool = False  # LayerNorm/Softmax pinned to FP32 by layer constraints
    dla_core: int | None = None
    fp16_nodes: list[str] = field(default_factory=list)  # implicit INT8: layers kept FP16 (--keep-float plan)
    notes: list[str] = field(default_factory=list)

    def flags(self) -> dict:
        d = {"int8_source": self.int8_source, "strongly_typed": self.strongly_typed, "convert_fp16": self.convert_fp16,
             "fp16": self.fp16_flag, "int8": self.int8_flag, "pin_sensitive": self.pin_sensitive, "dla_core": self.dla_core}
        if self.fp16_nodes:
            d["fp16_nodes"] = sha256_bytes("\n".join(self.fp16_nodes).encode())
        return d


def plan_precisions(api: TrtApi, options: BuildOptions, qdq: dict[str, bool]) -> dict[str, GraphPlan]:
    """Decide per graph how to reach the requested precision on this TensorRT version (GPU-free)."""
    options.validate()
    base = {"fp32": ("fp32", "fp32"), "fp16": ("fp16", "fp16"), "int8": ("int8", "fp16"), "best": ("int8", "fp16")}
    wanted = dict(zip(GRAPHS, base[options.precision]))
    explicit = {BACKBONE: options.backbone_precision, TRANSFORMER: options.transformer_precision}
    plans = {}
    for graph in GRAPHS:
        p = explicit[graph] or wanted[graph]
        plan = GraphPlan(graph, p, strongly_typed=not api.weakly_typed)
        if qdq.get(graph):
            if not api.supports_qdq:
                raise AdtrError(
                    f"{graph}.onnx is quantised (Q/DQ) but TensorRT {api.version_string} cannot build Q/DQ graphs; "
                    f"build the unquantised export with --precision int8 (calibrator) instead"
                )
            if p != "int8":
                plan.notes.append(f"{graph} has Q/DQ nodes: it runs INT8 whatever --precision says")
            plan.precision, plan.int8_source = "int8", "qdq"
        elif p == "int8" and not api.has_calibrators:
            if explicit[graph] is None and options.precision == "best":
                plan.precision = "fp16"
                plan.notes.append(f"TensorRT {api.version_string} has no calibrator: {graph} falls back to FP16 (run adtr-edge quantize for INT8)")
            else:
                raise AdtrError(
                    f"TensorRT {api.version_string} builds INT8 only from Q/DQ graphs: run "
                    f"'adtr-edge quantize <export> --calib-images DIR --out DIR' and build that folder"
                )
        elif p == "int8":
            plan.int8_source = "calibrator"
        if api.weakly_typed:
            plan.fp16_flag = plan.precision in ("fp16", "int8")  # FP16 too, so unquantised layers need not run FP32
            plan.int8_flag = plan.precision == "int8"
            plan.pin_sensitive = plan.precision in ("fp16", "int8")
        else:
            plan.convert_fp16 = plan.precision == "fp16"
        plans[graph] = plan
    if options.dla_core is not None:
        api.check_dla()
        p = options.profile
        if not p.min == p.opt == p.max:
            raise AdtrError(f"--dla-core needs a static batch profile (DLA has no dynamic shapes): pass the same "
                            f"--min-batch/--opt-batch/--max-batch, got {p.min}/{p.opt}/{p.max}")
        bb = plans[BACKBONE]
        if bb.precision == "fp32":
            raise AdtrError("--dla-core needs an FP16 or INT8 backbone (DLA has no FP32)")
        bb.dla_core = options.dla_core
        bb.notes.append(f"backbone on DLA core {options.dla_core} with GPU fallback")
    return plans


# -- loaders ---------------------------------------------------------------------------------------


class NetworkFromOnnx:
    """Lazily: Builder -> network (explicit batch / strongly typed per version) -> parsed ONNX."""

    def __init__(self, api: TrtApi, path: Path, logger, strongly_typed: bool = False):
        self.api, self.path, self.logger, self.strongly_typed = api, Path(path), logger, strongly_typed

    def __call__(self):
        builder = self.api.trt.Builder(self.logger)
        network = self.api.create_network(builder, strongly_typed=self.strongly_typed and self.api.weakly_typed)
        parser = self.api.parse_onnx(network, self.logger, self.path)
        return builder, network, parser


class EngineConfig:
    """Lazily: the builder config of one graph's plan (precision, profile, DLA, timing cache)."""

    def __init__(self, api: TrtApi, plan: GraphPlan, input_name: str, profile: Profile, workspace_mb: int,
                 sensitive_names: set[str] | None = None, timing_cache: Path | None = None,
                 calibrator_factory: Callable[[], object] | None = None, calib_batch: int | None = None):
        self.api, self.plan, self.input_name, self.profile = api, plan, input_name, profile
        self.workspace_mb, self.sensitive_names = workspace_mb, sensitive_names or set()
        self.timing_cache, self.calibrator_factory, self.calib_batch = timing_cache, calibrator_factory, calib_batch
        self.pinned: list[str] = []
        self.pinned_fp16: list[str] = []
        self.dla_fallback: list[str] = []  # layers meant for the DLA that run on the GPU
        self.calibrator = None

    def _input_tail(self, network) -> tuple[int, ...]:
        for i in range(network.num_inputs):
            t = network.get_input(i)
            if t.name == self.input_name:
                dims = tuple(int(d) for d in t.shape)
                if any(d < 0 for d in dims[1:]):
                    raise AdtrError(f"input {self.input_name!r} has dynamic non-batch dims {dims}; only 'batch' may be dynamic")
                return dims[1:]
        raise AdtrError(f"network has no input named {self.input_name!r} (not an adtr-edge graph?)")

    def __call__(self, builder, network):
        api, plan, trt = self.api, self.plan, self.api.trt
        config = builder.create_builder_config()
        api.set_workspace(config, self.workspace_mb)
        tail = self._input_tail(network)
        prof = builder.create_optimization_profile()
        prof.set_shape(self.input_name, (self.profile.min, *tail), (self.profile.opt, *tail), (self.profile.max, *tail))
        api.add_profile(config, prof, f"{self.input_name!r} batch {self.profile.min}/{self.profile.opt}/{self.profile.max} "
                                      f"(shape {tail}); check --min-batch/--opt-batch/--max-batch")
        api.set_precision_flags(config, plan.fp16_flag, plan.int8_flag, obey_constraints=plan.pin_sensitive)
        if plan.pin_sensitive:
            self.pinned = pin_sensitive_layers(api, network, self.sensitive_names)
        if plan.fp16_nodes:  # the mixed-precision plan: constraints obeyed, these layers out of INT8
            self.pinned_fp16 = pin_layers(api, network, set(plan.fp16_nodes), "fp16")
        if plan.int8_source == "calibrator":
            calib_prof = builder.create_optimization_profile()
            shape = (self.calib_batch, *tail)
            calib_prof.set_shape(self.input_name, shape, shape, shape)
            self.calibrator = self.calibrator_factory()
            api.set_calibrator(config, self.calibrator, calib_prof)
        if plan.dla_core is not None:
            api.use_dla(config, plan.dla_core)
            self.dla_fallback = api.dla_fallback_layers(config, network)
        if self.timing_cache is not None:
            data = Path(self.timing_cache).read_bytes() if Path(self.timing_cache).is_file() else b""
            api.load_timing_cache(config, data)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        return config

    def save_timing_cache(self, config) -> None:
        if self.timing_cache is not None:
            write_bytes_atomic(self.timing_cache, self.api.serialize_timing_cache(config))


def pin_sensitive_layers(api: TrtApi, network, names: set[str]) -> list[str]:
    """Pin LayerNorm/Softmax layers (by type, and by the ONNX node names of a decomposed
    LayerNorm) to FP32."""
    return pin_layers(api, network, names, "fp32", by_type=api.sensitive_layer_types())


def pin_layers(api: TrtApi, network, names: set[str], precision: str, by_type: set | None = None) -> list[str]:
    """Pin the layers made from the ONNX nodes ``names`` (the parser names a node's layers after the
    node, adding '_<n>' to extra ones), and any layer of a type in ``by_type``, to ``precision``."""
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        base, _, suffix = layer.name.rpartition("_")
        by_name = layer.name in names or (suffix.isdigit() and base in names)
        if (by_type and layer.type in by_type) or by_name:
            api.pin_layer(layer, precision)
            pinned.append(layer.name)
    return pinned


class BuildSerializedEngine:
    """Lazily: network + config -> serialized plan bytes (and the timing cache saved back).

    ``sink`` is the capture of the process logger for this build: its last error explains a failed
    build. TensorRT swallows exceptions raised inside calibrator callbacks (it prints them and
    carries on: no more batches, no cache written), so the calibrator keeps the first one and it is
    raised here, after the build, as the cause of the failure.
    """

    def __init__(self, api: TrtApi, network_loader: NetworkFromOnnx, config_loader: EngineConfig, sink: LogSink | None = None):
        self.api, self.network_loader, self.config_loader, self.sink = api, network_loader, config_loader, sink

    def __call__(self) -> bytes:
        builder, network, _parser = self.network_loader()
        config = self.config_loader(builder, network)
        try:
            plan = self.api.build(builder, network, config)
        except AdtrError as e:
            self._raise_calibrator_error()
            errors = self.sink.errors if self.sink is not None else []
            raise AdtrError(f"{e}: {errors[-1]}" if errors else str(e)) from None
        finally:
            release = getattr(self.config_loader.calibrator, "release", None)
            if release is not None:
                release()
        self._raise_calibrator_error()
        self.config_loader.save_timing_cache(config)
        return plan

    def _raise_calibrator_error(self) -> None:
        error = getattr(self.config_loader.calibrator, "error", None)
        if error is not None:
            where, exc = error
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AdtrError(f"{self.network_loader.path.name}: INT8 calibration failed in {where}: {detail}") from exc


# -- the whole build -------------------------------------------------------------------------------


@dataclass
class BuildReport:
    folder: Path
    plans: dict[str, GraphPlan]
    built: list[str]
    skipped: list[str]
    calibration: dict[str, str]
    manifest: dict


def describe_plan(api: TrtApi, plans: dict[str, GraphPlan], options: BuildOptions, out: Path, calib_dir: Path) -> list[str]:
    lines = [f"TensorRT {api.version_string} ({'weakly' if api.weakly_typed else 'strongly'} typed builds) -> {out}",
             f"batch profile min/opt/max = {options.profile.min}/{options.profile.opt}/{options.profile.max}, workspace {options.workspace_mb} MiB"]
    for g, p in plans.items():
        how = p.int8_source or ("float16 graph copy" if p.convert_fp16 else "builder flags" if p.fp16_flag else "as exported")
        lines.append(f"  {g}: {p.precision} ({how}){'; LayerNorm/Softmax pinned FP32' if p.pin_sensitive else ''}")
        lines.extend(f"    note: {n}" for n in p.notes)
    if any(p.int8_source == "calibrator" for p in plans.values()):
        lines.append(f"calibration caches: {calib_dir}")
    if options.timing_cache:
        lines.append(f"timing cache: {options.timing_cache}")
    if options.build_log:
        lines.append(f"build log: {options.build_log}")
    return lines


def build_command(onnx_dir: Path, name: str, out_root: Path, o: BuildOptions) -> str:
    parts = ["adtr-edge", "build-engine", str(onnx_dir), "--name", name, "--out", str(out_root), "--precision", o.precision]
    for flag, v in (("--backbone-precision", o.backbone_precision), ("--transformer-precision", o.transformer_precision),
                    ("--calib-images", o.calib_images), ("--dla-core", o.dla_core)):
        if v is not None:
            parts += [flag, str(v)]
    parts += ["--min-batch", str(o.profile.min), "--opt-batch", str(o.profile.opt), "--max-batch", str(o.profile.max)]
    return shlex.join(parts)


def build_engines(onnx_dir: Path, out_root: Path = Path("engines"), name: str | None = None,
                  options: BuildOptions | None = None, *, api: TrtApi | None = None, cuda=None,
                  log: Callable[[str], None] = print) -> BuildReport:
    """Build (or reuse) both engines; write the engine folder's manifest last."""
    from ..cuda import make_cuda_runtime  # noqa: PLC0415
    from .trt_api import load_api  # noqa: PLC0415

    options = options or BuildOptions()
    options.validate()
    onnx_dir = Path(onnx_dir)
    export = read_export(onnx_dir, purpose="build-engine")
    meta = export.meta
    if quantization_target(meta.raw) == TARGET_CPU:
        raise AdtrError(f"{onnx_dir}: quantised for ONNX Runtime on the CPU (uint8 activations, dynamic INT8), which "
                        "TensorRT cannot build; make the TensorRT form with 'adtr-edge quantize --target tensorrt'")
    name = name or onnx_dir.resolve().name
    out = Path(out_root) / name
    api = api or load_api()
    cuda = cuda or make_cuda_runtime()  # cuda-python, else pycuda (the calibrator copies through it)
    gpu = cuda.device_info()
    graphs = {g: export.graph_file(g) for g in GRAPHS}
    models = {g: onnx_tools.load(p) for g, p in graphs.items()}
    plans = plan_precisions(api, options, {g: onnx_tools.has_qdq(m) for g, m in models.items()})
    if plans[BACKBONE].int8_source == "calibrator":  # Q/DQ folders carry their plan as the nodes left float
        stages = (meta.raw.get("features") or {}).get("stages") or []
        plans[BACKBONE].fp16_nodes = float_plan(models[BACKBONE], options.keep_float, stages)
    _check_importable(api, graphs, models)
    calib_dir = Path(options.calib_dir) if options.calib_dir else Path("calibration") / name
    for line in describe_plan(api, plans, options, out, calib_dir):
        log(line)
    if plans[BACKBONE].int8_source == "calibrator" and (meta.raw.get("model") or {}).get("score") == "mahalanobis":
        # TensorRT's own calibrator (entropy) cannot run without a GPU, so its accuracy under the
        # Mahalanobis head is unmeasured; the Q/DQ forms are measured on the CPU with exact rounding.
        log("note: TensorRT's own INT8 calibration has not been measured under a Mahalanobis head; the Q/DQ forms of "
            "'adtr-edge quantize' / 'quantize-matched' have (docs/benchmarks.md section 4.3: within 0.1 AUROC points)")

    calib_batch = options.calib_batch_size or options.profile.opt
    store = calib.CacheStore(calib_dir)
    image_paths: list[Path] | None = None
    old = _previous_engines(out)
    engines, built, skipped, calib_used = {}, [], [], {}
    logger = process_logger(api)
    sink = LogSink(options.build_log, verbose=options.build_log is not None)
    try:
        with logger.capture(sink):
            for g in GRAPHS:
                plan = plans[g]
                onnx_sha = sha256_file(graphs[g])
                cache_key = None
                if plan.int8_source == "calibrator":
                    if options.calib_images is None:
                        raise AdtrError(f"{g}: INT8 with TensorRT {api.version_string} needs --calib-images DIR (normal images)")
                    if image_paths is None:
                        image_paths = calib.calibration_images(Path(options.calib_images), options.calib_batches * calib_batch)
                    cache_key = calib.make_key(g, onnx_sha, calib.image_list_sha(image_paths), meta.preprocess,
                                               backbone_sha=sha256_file(graphs[BACKBONE]) if g == TRANSFORMER else None,
                                               trt_version=api.version_string)
                key = _engine_key(api, gpu, options, plan, g, onnx_sha, cache_key, calib_batch)
                if not options.force and not options.recalibrate and existing_entry_matches(out, g, key):
                    engines[g] = old[g]
                    skipped.append(g)
                    log(f"{g}: engine up to date (key {key.digest[:12]}), skipped; --force rebuilds")
                    continue
                calibrator_factory = None
                if cache_key is not None:
                    cached = store.lookup(cache_key, recalibrate=options.recalibrate)
                    calib_used[g] = str(store.path(cache_key))
                    calibrator_factory = _calibrator_factory(api, cuda, g, graphs, image_paths, meta, calib_batch,
                                                             cached, store, cache_key, log)
                t0 = time.perf_counter()
                plan_bytes, config_loader = _build_plan(api, plan, graphs[g], models[g], options, logger, sink,
                                                        calibrator_factory, calib_batch)
                path = write_bytes_atomic(engine_file(out, g), plan_bytes)
                engines[g] = _engine_entry(path, plan_bytes, onnx_sha, plan, options, key, config_loader,
                                           calib_used.get(g), time.perf_counter() - t0)
                if config_loader.dla_fallback:
                    log(f"{g}: {len(config_loader.dla_fallback)} layers cannot run on DLA core {plan.dla_core} and fall back "
                        f"to the GPU: {', '.join(config_loader.dla_fallback)}")
                built.append(g)
                log(f"{g}: built {plan.precision} engine in {engines[g]['build_seconds']} s -> {path}")
    finally:
        sink.close()
    meta_doc = dict(meta.raw)
    meta_doc.pop("graph", None)
    manifest_path = write_manifest(
        out, name=name, source=str(onnx_dir), meta=meta_doc, trt_version=api.version_string,
        gpu={"name": gpu.name, "compute_capability": gpu.compute_capability}, engines=engines,
        build_command=build_command(onnx_dir, name, Path(out_root), options),
    )
    return BuildReport(out, plans, built, skipped, calib_used, json.loads(manifest_path.read_text()))


def _check_importable(api: TrtApi, graphs: dict, models: dict) -> None:
    """TensorRT 8.5 has no LayerNormalization importer: say so before any build starts."""
    if api.has_normalization_layer:
        return
    for g, m in models.items():
        if any(n.op_type == "LayerNormalization" for n in m.graph.node):
            raise AdtrError(f"{graphs[g]}: TensorRT {api.version_string} cannot import LayerNormalization; "
                            f"re-export at ONNX opset 16 (decomposed LayerNorm) for JetPack 5")


def _previous_engines(out: Path) -> dict:
    """The engine entries of an earlier build in ``out`` (reused when their key matches), else {}."""
    if not (out / "manifest.json").is_file():
        return {}
    try:
        return read_manifest(out)["engines"]
    except AdtrError:
        return {}


def _engine_key(api: TrtApi, gpu, options: BuildOptions, plan: GraphPlan, graph: str, onnx_sha: str, cache_key,
                calib_batch: int) -> EngineKey:
    """Everything the engine of ``graph`` depends on (the cache key of manifest.EngineKey)."""
    return EngineKey(
        graph=graph, onnx_sha256=onnx_sha,
        calibration_sha256=sha256_bytes(cache_key.filename.encode() + json.dumps(cache_key.__dict__, sort_keys=True).encode()) if cache_key else None,
        trt_version=api.version_string, gpu_name=gpu.name, compute_capability=gpu.compute_capability,
        precision=plan.precision, profile=(options.profile.min, options.profile.opt, options.profile.max),
        flags=dict(plan.flags(), calib_batch=calib_batch if cache_key else None),
    )


def _engine_entry(path: Path, plan_bytes: bytes, onnx_sha: str, plan: GraphPlan, options: BuildOptions, key: EngineKey,
                  config_loader: EngineConfig, calibration_cache: str | None, seconds: float) -> dict:
    """The manifest entry of one built engine: its file, digests, precision, profile and key."""
    return {
        "file": path.name, "sha256": sha256_bytes(plan_bytes), "onnx_sha256": onnx_sha,
        "precision": plan.precision, "profile": options.profile.as_list(), "input": calib.input_name(plan.graph),
        "key": key.digest, "key_fields": key.to_dict(), "pinned_fp32": config_loader.pinned,
        "pinned_fp16": config_loader.pinned_fp16,
        "calibration_cache": calibration_cache, "build_seconds": round(seconds, 2),
        "notes": plan.notes, "dla_core": plan.dla_core, "dla_gpu_fallback": config_loader.dla_fallback,
    }


def _build_plan(api: TrtApi, plan: GraphPlan, graph_path: Path, model, options: BuildOptions, logger, sink,
                calibrator_factory, calib_batch: int):
    """One engine's plan bytes (from a float16 copy of the graph on strongly typed TensorRT), and
    the config loader that built it (its pinned layers and DLA fallbacks go into the manifest)."""
    with tempfile.TemporaryDirectory(prefix="adtr-trt-") as tmp:
        source = graph_path
        if plan.convert_fp16:
            source = Path(tmp) / f"{plan.graph}.fp16.onnx"
            onnx.save(onnx_tools.convert_to_fp16(model), str(source))
        network_loader = NetworkFromOnnx(api, source, logger, strongly_typed=plan.strongly_typed)
        config_loader = EngineConfig(api, plan, calib.input_name(plan.graph), options.profile, options.workspace_mb,
                                     set(onnx_tools.sensitive_nodes(model)), options.timing_cache,
                                     calibrator_factory, calib_batch)
        return BuildSerializedEngine(api, network_loader, config_loader, sink)(), config_loader


def _calibrator_factory(api, cuda, graph, graphs, image_paths, meta, calib_batch, cached, store, cache_key, log):
    """Deferred: batches are only prepared when TensorRT has no matching cache to read."""

    def factory():
        if cached is not None:
            log(f"{graph}: reusing calibration cache {cached}")
            batches = []
        else:
            log(f"{graph}: calibrating on {len(image_paths) // calib_batch} batches of {calib_batch}")
            batches = calib.backbone_batches(image_paths, meta.preprocess, calib_batch)
            if graph == TRANSFORMER:
                batches = calib.transformer_batches(graphs[BACKBONE], batches)
        return calib.make_entropy_calibrator(api, cuda, batches, calib.input_name(graph), cached,
                                             lambda data: store.write(cache_key, data))

    return factory
