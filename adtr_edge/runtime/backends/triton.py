"""Triton backend: the two graphs run on a Triton Inference Server (``adtr-edge export-triton``).

One request per batch goes to the repository's ensemble: ``images`` uint8 (N, H, W, 3) BGR in, as
the backbone graph takes it (normalisation is inside that graph), ``anomaly_map`` and ``score``
out; the server's dynamic batching merges the requests of many streams. gRPC by default, HTTP
optional (``tritonclient[grpc]`` / ``tritonclient[http]``, the ``triton`` extra).

The local model folder stays the source of truth for preprocessing and thresholds: on connecting
(and after every reconnect, since the server that comes back may hold something else) the server's
ensemble and the two members it chains are read back, and their adtr-edge parameters must name the
same ONNX graph digests, threshold and metadata, or the backend refuses with one line.

A lost server (connection refused, deadline exceeded, model not ready while it reloads) is retried
with exponential back-off for up to ``reconnect_s`` seconds; the batch in flight is sent again, so
a file source loses no frame. Each outage is counted (``counters``) and reported as a gap
(``take_gaps``), which the pipeline puts in the summary and the events.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

import numpy as np

from ...errors import AdtrError
from ...export.triton_repo import DEFAULT_NAME, P_DIGEST, P_META, P_THRESHOLD, onnx_digests
from ...folder import ESSENTIAL_META_KEYS, ModelFolder, read_model_folder
from ...metadata import ANOMALY_MAP, BACKBONE, FEATURES, IMAGES, SCORE, TRANSFORMER, ModelMeta
from ..sources import ReconnectPolicy
from .base import Backend, InferResult

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http")
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
DEFAULT_TIMEOUT_S = 10.0  # per request
DEFAULT_RECONNECT_S = 60.0  # how long a lost server is retried (0 = forever)
# gRPC status codes and HTTP-side messages that mean "the server is (momentarily) not there".
_RETRY_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")
# Triton answers "Request for unknown model" / "... is not ready" / "no available versions" while
# it (re)loads the repository after a restart.
_RETRY_TEXT = ("unknown model", "not ready", "no available versions", "failed to connect", "connection refused",
               "connection reset", "socket closed", "timed out", "deadline", "unavailable")


def available() -> tuple[bool, str]:
    try:
        import tritonclient.grpc  # noqa: F401
    except Exception as e:
        return False, f"cannot import tritonclient.grpc ({e.__class__.__name__}: {e}); pip install 'adtr-edge[triton]'"
    return True, "tritonclient is importable"


def parse_server(server: Optional[str], protocol: str) -> tuple[str, str]:
    """(protocol, host:port) from ``--server`` (host, host:port, grpc://host:port or http://host:port)."""
    if not server:
        raise AdtrError("--backend triton needs --server HOST[:PORT] (the Triton server's gRPC or HTTP address)")
    if protocol not in PROTOCOLS:
        raise AdtrError(f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    text = server.strip()
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme not in PROTOCOLS:
            raise AdtrError(f"--server {server!r}: scheme {scheme!r}, use grpc:// or http://")
        protocol = scheme
    text = text.rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORTS[protocol])
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        raise AdtrError(f"--server {server!r}: expected HOST[:PORT], e.g. localhost:{DEFAULT_PORTS[protocol]}")
    return protocol, f"{host}:{int(port)}"


def _retryable(e: Exception) -> bool:
    if isinstance(e, (OSError, TimeoutError)):  # the HTTP client's refused / reset / timed-out sockets
        return True
    status = e.status() if callable(getattr(e, "status", None)) else None
    text = str(_message(e)).lower()
    if status and any(str(status).endswith(s) for s in _RETRY_STATUS):
        return True
    return any(t in text for t in _RETRY_TEXT)


def _message(e: Exception):
    """tritonclient's exceptions carry their text in a ``message()`` method."""
    return e.message() if callable(getattr(e, "message", None)) else str(e)


def _one_line(e: Exception) -> str:
    return (str(_message(e)).strip().splitlines() or [e.__class__.__name__])[0][:300]


class TritonBackend(Backend):
    """Backend over a Triton server serving a repository exported from ``model_dir``.

    ``server``: HOST[:PORT] or grpc://... / http://...; ``model_name``: the ensemble (default
    ``adtr``); ``timeout_s``: per request; ``reconnect_s``: how long to keep retrying a lost server
    (0 = forever)."""

    name = "triton"

    def __init__(self, model_dir, *, server: Optional[str] = None, protocol: str = "grpc", model_name: str = DEFAULT_NAME,
                 timeout_s: float = DEFAULT_TIMEOUT_S, reconnect_s: float = DEFAULT_RECONNECT_S):
        self.protocol, self.address = parse_server(server, protocol)
        if timeout_s <= 0:
            raise AdtrError(f"--server-timeout must be > 0 seconds, got {timeout_s}")
        if reconnect_s < 0:
            raise AdtrError(f"--server-reconnect must be >= 0 seconds (0 = forever), got {reconnect_s}")
        folder = read_model_folder(model_dir)
        if folder.meta is None:
            raise AdtrError(f"{folder.path}: is {folder.spec.what}; the triton backend needs the export or engine folder the repository was made from")
        super().__init__(folder.meta)
        self.folder: ModelFolder = folder
        self.digests = onnx_digests(folder)
        self.model_name = model_name
        self.timeout_s = float(timeout_s)
        self.reconnect_s = float(reconnect_s)
        self.url = f"{self.protocol}://{self.address}"
        self.client = None
        self.members: dict = {}  # graph -> the ensemble's member model, read by _check_server on every (re)connect
        self.reconnects = 0
        self.gap_s = 0.0
        self._gaps: list[dict] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.wire_bytes = {"sent": 0, "received": 0}  # tensor payload bytes (protocol framing excluded)

    # -- connection ------------------------------------------------------------------------
    def _client_module(self):
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as mod
            else:
                import tritonclient.http as mod
        except ImportError as e:
            raise AdtrError(f"--backend triton --protocol {self.protocol} needs tritonclient[{self.protocol}] ({e}); "
                            "pip install 'adtr-edge[triton]'") from None
        return mod

    def _connect(self) -> None:
        mod = self._client_module()
        if self.protocol == "grpc":
            self.client = mod.InferenceServerClient(self.address)
        else:
            self.client = mod.InferenceServerClient(self.address, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
        self._mod = mod

    def _rpc(self, method: str, *args, **kwargs):
        fn = getattr(self.client, method)
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        return fn(*args, **kwargs)

    def _config(self, model: str) -> dict:
        doc = self._rpc("get_model_config", model, **({"as_json": True} if self.protocol == "grpc" else {}))
        return doc.get("config", doc)  # gRPC wraps it in {"config": ...}

    def _check_server(self) -> None:
        """The server's ensemble and its members are the local model (digests, threshold, metadata)."""
        if not self._rpc("is_model_ready", self.model_name):
            raise _NotReady(f"model {self.model_name!r} not ready")
        ensemble = self._config(self.model_name)
        steps = [s.get("model_name") for s in (ensemble.get("ensemble_scheduling") or {}).get("step", [])]
        where = f"triton model {self.model_name!r} at {self.url}"
        if ensemble.get("platform") != "ensemble" or len(steps) != 2:
            raise AdtrError(f"{where}: not an adtr-edge ensemble of two models (platform {ensemble.get('platform')!r}); "
                            "serve a repository made by 'adtr-edge export-triton'")
        for model, config in ((self.model_name, ensemble), (steps[0], self._config(steps[0])), (steps[1], self._config(steps[1]))):
            self._check_parameters(f"triton model {model!r} at {self.url}", config)
        self.members = {BACKBONE: steps[0], TRANSFORMER: steps[1]}

    def _check_parameters(self, where: str, config: dict) -> None:
        params = {k: (v or {}).get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        if P_META not in params:
            raise AdtrError(f"{where}: carries no adtr-edge parameters; serve a repository made by 'adtr-edge export-triton'")
        local = self.folder.path
        for graph in (BACKBONE, TRANSFORMER):
            theirs, ours = params.get(P_DIGEST[graph], ""), self.digests[graph]
            if theirs != ours:
                raise AdtrError(f"{where}: is another model: its {graph} graph sha256 {theirs[:12]}... differs from {local} "
                                f"({ours[:12]}...); export the repository from {local} or load the folder it was made from")
        threshold = float(self.meta.thresholds.threshold)
        try:
            theirs_t = float(params.get(P_THRESHOLD, "nan"))
        except ValueError:
            theirs_t = float("nan")
        if not theirs_t == threshold:
            raise AdtrError(f"{where}: threshold {params.get(P_THRESHOLD)} differs from {local} ({threshold!r}); "
                            "re-export the repository from that folder")
        try:
            server_meta = ModelMeta.from_json(params[P_META], where).raw
        except AdtrError as e:
            raise AdtrError(str(e)) from None
        for key in ESSENTIAL_META_KEYS:
            if server_meta.get(key) != self.meta.raw.get(key):
                raise AdtrError(f"{where}: metadata '{key}' differs from {local}; the server holds another export")

    def _activate(self) -> None:
        self._closing.clear()
        self._connect()
        try:
            live = self._rpc("is_server_live")
        except Exception as e:
            if not _retryable(e):
                raise
            raise AdtrError(f"triton server {self.url} unreachable: {_one_line(e)}") from None
        if not live:
            raise AdtrError(f"triton server {self.url} is not live")
        try:
            self._check_server()
        except _NotReady as e:
            raise AdtrError(f"triton server {self.url}: {e} (is the repository from 'adtr-edge export-triton' loaded?)") from None
        except AdtrError:
            raise
        except Exception as e:
            raise AdtrError(f"triton server {self.url}: cannot read model {self.model_name!r}: {_one_line(e)}") from None
        log.info("triton %s: model %r matches %s", self.url, self.model_name, self.folder.path)

    def _deactivate(self) -> None:
        self._closing.set()
        self._close_client()

    def _close_client(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a dead channel can raise; nothing is left to release
                pass

    # -- retries ---------------------------------------------------------------------------
    def _with_reconnect(self, call: Callable[[], InferResult]) -> InferResult:
        try:
            return call()
        except AdtrError:
            raise
        except Exception as e:
            if not _retryable(e):
                raise AdtrError(f"triton server {self.url}: request to {self.model_name!r} failed: {_one_line(e)}") from None
            first = e
        lost_at, lost_wall = time.monotonic(), time.time()
        log.warning("triton server %s lost (%s); reconnecting", self.url, _one_line(first))
        last = first
        for delay in ReconnectPolicy(initial_delay=0.1, max_delay=2.0, max_attempts=None).delays():  # ends by return or raise
            waited = time.monotonic() - lost_at
            if self.reconnect_s and waited >= self.reconnect_s:
                # The outage ends the stream, but it is still an outage: counted and reported
                # like one that ended, so the summary and the events say how long nothing ran.
                self._add_gap(lost_wall, waited, first, recovered=False)
                raise AdtrError(f"triton server {self.url} lost for {waited:.1f} s and did not come back: {_one_line(last)}")
            if self._closing.wait(delay):
                self._add_gap(lost_wall, time.monotonic() - lost_at, first, recovered=False)
                raise AdtrError(f"triton backend closed while reconnecting to {self.url}")
            try:
                self._close_client()
                self._connect()
                if not self._rpc("is_server_ready"):
                    raise _NotReady("server not ready")
                self._check_server()  # what came back may be another model
                result = call()
            except AdtrError:
                raise
            except Exception as e:
                if not _retryable(e) and not isinstance(e, _NotReady):
                    raise AdtrError(f"triton server {self.url}: request to {self.model_name!r} failed: {_one_line(e)}") from None
                last = e
                continue
            gap = time.monotonic() - lost_at
            self._add_gap(lost_wall, gap, first, recovered=True)
            log.warning("triton server %s back after %.2f s", self.url, gap)
            return result

    def _add_gap(self, start: float, seconds: float, error: Exception, recovered: bool) -> None:
        with self._lock:
            self.reconnects += int(recovered)
            self.gap_s += seconds
            self._gaps.append({"start": start, "seconds": seconds, "reason": _one_line(error), "server": self.url,
                               "recovered": recovered})

    def counters(self) -> dict:
        with self._lock:
            return {"reconnects": self.reconnects, "gap_s": round(self.gap_s, 3)}

    def take_gaps(self) -> list:
        with self._lock:
            gaps, self._gaps = self._gaps, []
        return gaps

    # -- inference -------------------------------------------------------------------------
    def _ensemble(self, images: np.ndarray) -> InferResult:
        mod = self._mod
        t0 = time.perf_counter()
        inp = mod.InferInput(IMAGES, list(images.shape), "UINT8")
        if self.protocol == "grpc":
            inp.set_data_from_numpy(images)
            outputs = [mod.InferRequestedOutput(ANOMALY_MAP), mod.InferRequestedOutput(SCORE)]
            reply = self.client.infer(self.model_name, [inp], outputs=outputs, client_timeout=self.timeout_s)
        else:
            inp.set_data_from_numpy(images, binary_data=True)
            outputs = [mod.InferRequestedOutput(ANOMALY_MAP, binary_data=True), mod.InferRequestedOutput(SCORE, binary_data=True)]
            reply = self.client.infer(self.model_name, [inp], outputs=outputs)
        anomaly_map, score = reply.as_numpy(ANOMALY_MAP), reply.as_numpy(SCORE)
        if anomaly_map is None or score is None:
            raise AdtrError(f"triton model {self.model_name!r} at {self.url}: reply lacks '{ANOMALY_MAP}' or '{SCORE}'")
        self.wire_bytes["sent"] += images.nbytes
        self.wire_bytes["received"] += anomaly_map.nbytes + score.nbytes
        # Both stages run on the server: the round trip is reported as one "triton" stage (no
        # backbone / transformer times: this client cannot measure them apart).
        return InferResult(anomaly_map, score.reshape(-1).astype(np.float32, copy=False),
                           {"triton": (time.perf_counter() - t0) * 1e3})

    def infer(self, images: np.ndarray) -> InferResult:
        if not self.is_active:
            self.activate()
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return self._with_reconnect(lambda: self._ensemble(images))

    def _member(self, graph: str, inputs: dict, outputs: list) -> list:
        mod, model = self._mod, self.members[graph]  # no config request per inference
        tensors = []
        for name, arr in inputs.items():
            t = mod.InferInput(name, list(arr.shape), "UINT8" if arr.dtype == np.uint8 else "FP32")
            t.set_data_from_numpy(arr)
            tensors.append(t)
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        reply = self.client.infer(model, tensors, outputs=[mod.InferRequestedOutput(o) for o in outputs], **kwargs)
        return [reply.as_numpy(o) for o in outputs]

    def _run_backbone(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        return self._with_reconnect(lambda: self._member(BACKBONE, {IMAGES: images}, [FEATURES])[0])

    def _run_transformer(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features = np.ascontiguousarray(features, dtype=np.float32)
        anomaly_map, score = self._with_reconnect(lambda: self._member(TRANSFORMER, {FEATURES: features}, [ANOMALY_MAP, SCORE]))
        return anomaly_map, score.reshape(-1)


class _NotReady(Exception):
    """The server answers but the model is not (yet) loaded: part of a restart, so retried."""
