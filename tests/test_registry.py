"""One registry of the runtime's parts (adtr_edge/runtime/registry.py): the ``stream`` choices and
help, loading and ``bench`` all read it, so a backend added there appears in all three; every sink
class is described there once; the registry imports nothing heavy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from adtr_edge.bench.targets import backend_choices, open_backend, resolve_targets
from adtr_edge.errors import AdtrError
from adtr_edge.folder import ONNX, QDQ
from adtr_edge.runtime import loading, registry
from adtr_edge.runtime.backends.base import Backend
from adtr_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend
from adtr_edge.runtime.registry import BENCH, STREAM, BackendEntry
from adtr_edge.runtime.sinks import Sink

REPO = Path(__file__).resolve().parents[1]


class EchoBackend(OnnxRuntimeBackend):
    """ONNX Runtime under another name: a backend that exists only in the registry of one test."""

    name = "echo"
    opened: list = []

    def __init__(self, path, *, intra_op_threads=None):
        EchoBackend.opened.append({"intra_op_threads": intra_op_threads})
        super().__init__(path, intra_op_threads=intra_op_threads)


ECHO = BackendEntry("echo", "Echo", f"{__name__}:EchoBackend", "onnxruntime", (ONNX, QDQ), (STREAM, BENCH),
                    "ONNX Runtime under another name", "what ONNX Runtime reports", threads="intra_op_threads",
                    note="a test backend")


@pytest.fixture
def echo(monkeypatch):
    monkeypatch.setitem(registry.BACKENDS, "echo", ECHO)
    EchoBackend.opened.clear()
    return ECHO


def _command(register, name: str):
    app = typer.Typer()
    register(app)

    @app.callback()
    def _root() -> None:
        """Two commands make a group, as in adtr-edge."""

    return typer.main.get_command(app).commands[name]


def _param(command, flag: str):
    return next(p for p in command.params if flag in p.opts)


def _stream_command():
    from adtr_edge.runtime.cli import register

    return _command(register, "stream")


def test_a_registered_backend_appears_in_stream_loading_and_bench(echo, export_dir, tmp_path):
    from adtr_edge.bench.cli import register as register_bench
    from adtr_edge.runtime.cli import main
    from tests.runtime_fakes import write_video

    # stream: its --backend help and its check
    assert registry.backend_choices(STREAM)[-1] == "echo"
    assert "echo (a test backend)" in _param(_stream_command(), "--backend").help
    video = write_video(tmp_path / "v.mp4", [False, True])
    assert main(["stream", str(export_dir), "--source", str(video), "--backend", "echo", "--threads", "1",
                 "--summary", str(tmp_path / "s.json")]) == 0
    assert EchoBackend.opened == [{"intra_op_threads": 1}]

    # loading: chosen on request (never by auto: the folder's kind names onnxruntime), opened by the entry
    folder = loading.read_model_folder(export_dir)
    assert loading.choose_backend(folder, "echo") == ("echo", "requested; onnxruntime is importable")
    assert loading.choose_backend(folder, "auto")[0] == "onnxruntime"
    assert isinstance(loading.load_backend(export_dir, "echo"), EchoBackend) and EchoBackend.opened[-1] == {"intra_op_threads": None}

    # bench: choices, help, targets and opening with --threads
    assert "echo" in backend_choices() and "echo (a test backend)" in _param(_command(register_bench, "bench"), "--backend").help
    (target,) = resolve_targets([export_dir], "echo")
    assert target.backend == "echo" and target.available
    assert isinstance(open_backend(target, threads=2), EchoBackend) and EchoBackend.opened[-1] == {"intra_op_threads": 2}


def test_a_backend_offered_nowhere_is_refused_everywhere(monkeypatch, export_dir):
    from dataclasses import replace

    from adtr_edge.runtime.cli import main

    monkeypatch.setitem(registry.BACKENDS, "triton", replace(registry.BACKENDS["triton"], commands=()))
    assert "triton" not in registry.backend_choices(STREAM)
    with pytest.raises(AdtrError, match=r"--backend 'triton': choose one of auto, onnxruntime, tensorrt$"):
        loading.choose_backend(loading.read_model_folder(export_dir), "triton")
    with pytest.raises(AdtrError, match="choose one of all, onnxruntime, tensorrt, torch"):
        resolve_targets([export_dir], "triton")
    assert main(["stream", str(export_dir), "--source", "x.mp4", "--backend", "triton"]) == 2


def test_the_choices_and_help_as_before():
    assert registry.backend_choices(STREAM) == ("auto", "onnxruntime", "tensorrt", "triton")
    assert registry.backend_choices(BENCH) == ("all", "onnxruntime", "tensorrt", "torch")
    assert registry.backend_help(STREAM) == "auto | onnxruntime | tensorrt | triton (a Triton server, --server)."
    assert registry.backend_help(BENCH) == "all | onnxruntime | tensorrt | torch (a checkpoint folder)."


@pytest.mark.parametrize("name", list(registry.BACKENDS))
def test_every_backend_entry_names_its_class_and_probes_without_raising(name):
    entry = registry.BACKENDS[name]
    cls = entry.backend_class()
    assert issubclass(cls, Backend) and cls.name == name
    ok, why = entry.available()
    assert isinstance(ok, bool) and why
    assert entry.kinds and entry.commands and entry.help and entry.reports


def test_every_sink_class_is_described_once():
    entries = {e.sink_class(): e for e in registry.SINKS.values()}
    assert all(issubclass(cls, Sink) for cls in entries)
    assert len(entries) == len(registry.SINKS)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    from adtr_edge.runtime.delivery.base import SpoolingSink
    from adtr_edge.runtime.sinks import PerSource
    from adtr_edge.runtime.web.metrics import StreamMetrics

    parts = {SpoolingSink, PerSource, StreamMetrics}  # a base, a wrapper, a piece of the web sink
    runtime = {c for c in subclasses(Sink) if c.__module__.startswith("adtr_edge.runtime")}
    assert runtime - parts == set(entries)


def test_stream_options_take_their_help_from_the_registry():
    stream = _stream_command()
    seen: dict = {}
    for entry in (*registry.BACKENDS.values(), *registry.SINKS.values()):
        for flag, text in entry.options.items():
            assert seen.setdefault(flag, text) == text, f"{flag} has two helps"
            first = flag.split("/")[0]
            assert _param(stream, first).help == text, flag
    assert registry.option_owner("--server").name == "triton" and registry.option_owner("--cuda-graphs").name == "tensorrt"


def test_the_registry_imports_no_backend_library():
    code = "import adtr_edge.runtime.registry, sys; print(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert not loaded & {"onnxruntime", "tensorrt", "torch", "tritonclient", "starlette", "paho", "adtr_edge.runtime.backends"}


def test_the_architecture_page_lists_every_backend_and_sink():
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text[text.index("## Backends and sinks"):]
    listed = set(re.findall(r"^\| `([a-z-]+)` \|", section, flags=re.M))
    assert listed == set(registry.BACKENDS) | set(registry.SINKS)
