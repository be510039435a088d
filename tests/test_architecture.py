"""The shape of the house (docs/ARCHITECTURE.md, issue 14): no import cycles, no arrow that points
up a floor, a light ``adtr-edge --help``, and the short public top level. The facts come from
scripts/import_graph.py, which also prints them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph)

def test_no_import_cycles():
    assert import_graph.cycles(import_graph.imports(import_graph.modules())) == []


def test_no_upward_arrows_and_no_room_cycles():
    graph = import_graph.imports(import_graph.modules())
    assert import_graph.upward(graph) == []
    assert import_graph.room_cycles(graph) == []


def test_every_module_has_a_floor():
    for name in import_graph.modules():
        assert 0 <= import_graph.floor(name) < len(import_graph.FLOORS), name


def test_the_graph_script_sees_a_cycle_and_an_upward_arrow(tmp_path):
    """The checks above can fail: a two-module loop and a contract importing the runtime are found."""
    pkg = tmp_path / "adtr_edge"
    (pkg / "runtime").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "runtime" / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("from .metadata import X\n")
    (pkg / "metadata.py").write_text("from . import errors\n\ndef f():\n    from .runtime import detector\n")
    (pkg / "runtime" / "detector.py").write_text("X = 1\n")
    graph = import_graph.imports(import_graph.modules(tmp_path))
    assert ["adtr_edge.errors", "adtr_edge.metadata"] in import_graph.cycles(graph)
    assert ("adtr_edge.metadata", "adtr_edge.runtime.detector") in import_graph.upward(graph)


def _loaded_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    return set(out.stdout.split())


def test_the_cli_app_imports_no_torch_onnx_or_tensorrt():
    """``adtr-edge --help`` builds the typer app: every command must keep its heavy imports inside."""
    loaded = _loaded_after("import adtr_edge.cli")
    assert not loaded & {"torch", "onnx", "onnxruntime", "tensorrt", "timm", "matplotlib"}


def test_help_runs_without_loading_the_heavy_libraries():
    code = ("import sys\nfrom adtr_edge.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n")
    loaded = _loaded_after(code)
    assert "adtr_edge.cli" in loaded and not loaded & {"torch", "onnx", "onnxruntime", "tensorrt"}


# What ``adtr-edge --help`` lists, in its order (the names users type; moving a command to its area
# keeps them).
COMMANDS = ("train", "refit-head", "eval", "export", "export-triton", "inspect", "generate-data", "check-data",
            "build-engine", "quantize", "quantize-matched", "stream", "swap", "demo", "bench", "finetune", "version", "review")


def _command_names(app) -> list:
    from typer.main import get_command_name

    return ([c.name or get_command_name(c.callback.__name__) for c in app.registered_commands]
            + [g.name for g in app.registered_groups])


def test_every_command_registers_once_through_its_area():
    """One route: each area module's ``register(app)`` adds its commands; ``adtr_edge.cli`` only lists the areas."""
    import ast
    import importlib

    import typer

    from adtr_edge import cli

    by_area = {}
    for name in cli.AREA_MODULES:
        area_app = typer.Typer()
        importlib.import_module(name).register(area_app)
        by_area[name] = _command_names(area_app)
        assert by_area[name], f"{name} registers no command"
    names = [n for area in by_area.values() for n in area]
    assert len(names) == len(set(names)), names  # no command twice, none in two areas
    assert sorted(_command_names(cli.app)) == sorted(names)  # the app holds the areas' commands and nothing else
    # A module that adds commands (app.command, add_typer) is a listed area, and cli.py adds none itself.
    adding = set()
    for module, path in import_graph.modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("command", "add_typer"):
                adding.add(module)
    assert adding == set(cli.AREA_MODULES), adding ^ set(cli.AREA_MODULES)


def test_help_lists_the_commands(capsys):
    import re

    from adtr_edge.cli import main

    assert main(["--help"]) == 0
    panel = capsys.readouterr().out.split("Commands")[1]
    assert tuple(re.findall(r"^│ (\S+) ", panel, flags=re.M)) == COMMANDS


def test_public_top_level():
    import adtr_edge
    from adtr_edge import AdtrError, Detection, Detector, ModelFolder, read_model_folder
    from adtr_edge.folder import ModelFolder as folder_cls
    from adtr_edge.runtime.detector import Detection as det_result
    from adtr_edge.runtime.detector import Detector as det_cls

    assert Detector is det_cls and Detection is det_result and ModelFolder is folder_cls
    assert callable(read_model_folder) and issubclass(AdtrError, Exception)
    assert set(adtr_edge.__all__) == {"AdtrError", "Detection", "Detector", "ModelFolder", "__version__", "read_model_folder"}
    assert adtr_edge.__version__ and "Detector" in dir(adtr_edge)


def test_importing_the_package_stays_light():
    loaded = _loaded_after("import adtr_edge")
    assert not loaded & {"numpy", "cv2", "onnxruntime", "torch"}
    assert {m for m in loaded if m.startswith("adtr_edge")} == {"adtr_edge", "adtr_edge.errors", "adtr_edge.version"}


def test_an_unknown_top_level_name_is_an_attribute_error():
    import adtr_edge
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Detektor'"):
        adtr_edge.Detektor  # noqa: B018


def test_no_module_over_500_lines():
    """docs/ARCHITECTURE.md's target: no module over ~500 lines (bench.py was 907 before issue 14)."""
    big = [(m, n) for m, n in import_graph.largest(import_graph.modules(), n=3) if n > 500]
    assert not big, big


def test_the_evaluation_package_sits_on_two_floors():
    """evaluation/ holds contracts (metrics, the bootstrap, overlays) and the evaluation of a
    checkpoint: each module is its own room, so the runtime may read an overlay and the training a
    metric, while a contract that imported the training side would point up."""
    assert import_graph.floor("adtr_edge.evaluation.metrics") == import_graph.floor("adtr_edge.metadata")
    assert import_graph.floor("adtr_edge.evaluation.evaluate") == import_graph.floor("adtr_edge.train.loop")
    graph = {"adtr_edge.evaluation.metrics": {"adtr_edge.train.loop"},
             "adtr_edge.runtime.events": {"adtr_edge.evaluation.visualize"},
             "adtr_edge.train.head_select": {"adtr_edge.evaluation.metrics"},
             "adtr_edge.evaluation.evaluate": {"adtr_edge.train.checkpoint", "adtr_edge.evaluation.metrics"}}
    assert import_graph.upward(graph) == [("adtr_edge.evaluation.metrics", "adtr_edge.train.loop")]
