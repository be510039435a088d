"""``--config FILE``: a command's options kept in a file (``stream`` and ``train``).

The file is a flat mapping of option names to values: ``min-consecutive: 3``, ``source: [left=rtsp://...]``
(``min_consecutive`` reads the same; an argument such as ``stream``'s MODEL_DIR is ``model-dir``).
YAML is the primary format: PyYAML (the ``yaml`` extra) reads it on every Python the runtime
supports, 3.8 included, it keeps comments, and ``--sources`` lists are YAML already. TOML is read
where the standard library has ``tomllib`` (Python 3.11+) or ``tomli`` is installed, JSON always.

The values become the command's defaults (click's ``default_map``, set by the eager ``--config``
callback before any other option is read), so an option given on the command line wins without
further code. Each value is checked before anything runs: an unknown key, a value of the wrong
type or out of the option's range is one ``AdtrError`` naming the file and the key.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import typer

from .errors import AdtrError

FORMATS = (".yaml", ".yml", ".toml", ".json")


def _toml() -> Any:
    """The TOML parser: the standard library's tomllib (3.11+), else tomli (the same code, on 3.8-3.10).
    Imported by name, so the module stays 3.8-valid where tomllib does not exist."""
    for name in ("tomllib", "tomli"):
        try:
            return importlib.import_module(name)
        except ImportError:
            pass
    return None


def read_text(path: Path, option: str) -> str:
    """The file's text; a missing or unreadable file is one AdtrError naming ``option`` (--config, --sources)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdtrError(f"{option} {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AdtrError(f"{option} {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None


def parse_json(text: str, path: Path, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AdtrError(f"{option} {path}: not valid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None


def parse_yaml(text: str, path: Path, option: str, missing: str) -> Any:
    """``text`` through PyYAML's safe loader; ``missing`` ends the error where PyYAML is not installed
    (what to install, or what to write instead)."""
    try:
        import yaml  # noqa: PLC0415 - optional: only YAML files need it
    except ImportError:
        raise AdtrError(f"{option} {path}: reading YAML needs PyYAML{missing}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise AdtrError(f"{option} {path}: not valid YAML{where} ({problem})") from None


def _parse(path: Path) -> Any:
    """The file's document; a missing, unreadable or malformed file is one AdtrError."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise AdtrError(f"--config {path}: use a .yaml (or .yml, .toml, .json) file")
    text = read_text(path, "--config")
    if suffix == ".json":
        return parse_json(text, path, "--config") if text.strip() else {}
    if suffix == ".toml":
        toml = _toml()
        if toml is None:
            raise AdtrError(f"--config {path}: reading TOML needs Python 3.11+ or tomli (pip install tomli); "
                            "or write the file as YAML")
        try:
            return toml.loads(text)
        except toml.TOMLDecodeError as e:
            raise AdtrError(f"--config {path}: not valid TOML ({str(e).splitlines()[0]})") from None
    doc = parse_yaml(text, path, "--config", " (pip install 'adtr-edge[yaml]')")
    return {} if doc is None else doc  # an empty file sets nothing


def option_key(param: Any) -> str:
    """The key a file uses for ``param``: its long option without the dashes, or the argument's name."""
    for opt in getattr(param, "opts", ()):
        if opt.startswith("--"):
            return opt[2:]
    return (param.name or "").replace("_", "-")


def _declared(command: Any) -> Dict[str, Tuple[Any, Any]]:
    """Parameter name -> (annotation, typer.Option/Argument info) of the command's function.

    The checks read the function's own annotations, not click's parameter types: older typer builds
    click parameters, newer typer (0.29) its own copy of them, and both convert to these types."""
    fn = inspect.unwrap(command.callback)  # typer wraps the function with functools.update_wrapper
    hints = typing.get_type_hints(fn)
    return {name: (hints.get(name), p.default) for name, p in inspect.signature(fn).parameters.items()}


def _shape(annotation: Any) -> Tuple[Any, bool]:
    """``Optional[List[str]]`` -> (str, True): the element type, and whether the option repeats."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is Union and len(args) == 1:
        return _shape(args[0])
    if typing.get_origin(annotation) in (list, List, tuple, Tuple):
        return (args[0] if args else str), True
    return annotation, False


_NAMES = {bool: "true or false", int: "an integer", float: "a number", Path: "a path", str: "a string"}


def _check_one(value: Any, kind: Any, info: Any, where: str) -> Any:
    """One value as the option's own type takes it from the command line, or an AdtrError."""
    expected = _NAMES.get(kind, "a string")
    if kind is bool:
        ok = isinstance(value, bool)
    elif isinstance(value, bool):  # YAML's true/false: never a number, a path or a name
        ok = False
    elif kind is int:
        ok = isinstance(value, int)
    elif kind is float:
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, (str, int, float))
        if ok:
            value = str(value)  # `camera: 0`, `metrics: 9100`: the command line's text for the same
    if not ok:
        raise AdtrError(f"{where} must be {expected}, got {value!r}")
    low, high = getattr(info, "min", None), getattr(info, "max", None)
    if kind in (int, float) and ((low is not None and value < low) or (high is not None and value > high)):
        bounds = " and ".join(b for b in (f">= {low}" if low is not None else "", f"<= {high}" if high is not None else "") if b)
        raise AdtrError(f"{where} must be {bounds}, got {value!r}")
    return value


def resolve(command: Any, doc: Any, path: Path) -> Dict[str, Any]:
    """``doc`` (a parsed config file) as a default map for ``command``: parameter name -> checked value."""
    if not isinstance(doc, dict):
        raise AdtrError(f"--config {path}: must be a mapping of option names to values, got {type(doc).__name__}")
    known = {option_key(p): p for p in command.params if p.name not in ("config", "help") and not getattr(p, "hidden", False)}
    declared = _declared(command)
    out: Dict[str, Any] = {}
    seen: Dict[str, str] = {}
    for raw_key, value in doc.items():
        key = str(raw_key).replace("_", "-")
        param = known.get(key)
        if param is None:
            near = difflib.get_close_matches(key, list(known), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; see '{command.name} --help'"
            raise AdtrError(f"--config {path}: unknown key '{raw_key}'{hint}")
        if key in seen:
            raise AdtrError(f"--config {path}: '{raw_key}' sets the same option as '{seen[key]}'")
        seen[key] = str(raw_key)
        flag = "--" + key if getattr(param, "opts", None) and any(o.startswith("--") for o in param.opts) else key.upper().replace("-", "_")
        where = f"--config {path}: '{raw_key}' ({flag})"
        if value is None:
            raise AdtrError(f"{where} has no value; leave the key out for the default")
        annotation, info = declared[param.name]
        kind, repeats = _shape(annotation)
        if repeats:
            items = value if isinstance(value, list) else [value]
            out[param.name] = [_check_one(v, kind, info, where) for v in items]
        elif isinstance(value, (list, dict)):
            raise AdtrError(f"{where} takes one value, got a {'list' if isinstance(value, list) else 'mapping'}")
        else:
            out[param.name] = _check_one(value, kind, info, where)
    return out


def _load(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **resolve(ctx.command, _parse(value), value)}
    return value


def config_option() -> Any:
    """The ``--config FILE`` option; eager, so its values are in place before the other options are read."""
    return typer.Option(
        None, "--config", is_eager=True, callback=_load, show_default=False, metavar="FILE",
        help="Options from a YAML file (or TOML, JSON): keys are the option names (min-consecutive: 3); "
             "options on the command line win. Unknown keys and wrong types are errors.")


def _source(ctx: Any, name: str) -> str:
    # By name: newer typer has its own ParameterSource enum, older typer click's.
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else ""


def command_line_wins(ctx: Any, values: Dict[str, Any]) -> Dict[str, Any]:
    """Options that exclude each other (``--camera``/``--source``/``--sources``): once one is on the
    command line, those the config file set are dropped, so the command line replaces the file's
    choice instead of clashing with it."""
    if not any(_source(ctx, n) == "COMMANDLINE" for n in values):
        return values
    return {n: (None if _source(ctx, n) == "DEFAULT_MAP" else v) for n, v in values.items()}
