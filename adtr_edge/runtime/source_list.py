"""Which sources a stream reads, and under which names.

A source is named on the command line with a ``NAME=`` prefix (``--source left=rtsp://...``,
``--camera top=0``) or in a ``--sources FILE``: a JSON list (or YAML, with PyYAML installed) of
``{name, source}`` entries::

    [{"name": "left", "source": "rtsp://10.0.0.5/stream"},
     {"name": "right", "source": 1},
     {"source": "line3.mp4"}]

Without a name a source is called what ``parse_source`` calls it ("camera 0", the URL, the file),
which is also what events of a single-source stream have always carried. Names must be unique:
they key the per-source alarms, the events, the saved anomalies and the recordings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..config_file import parse_json, parse_yaml, read_text
from ..errors import AdtrError
from .sources import parse_source

# Explicit names end up in folder names, file names, MQTT topics and metric labels: keep them plain.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_PREFIX_RE = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,63})=(.+)\Z", re.DOTALL)
ENTRY_KEYS = ("name", "source")


@dataclass(frozen=True)
class NamedSource:
    """A source spelling (as ``open_source`` takes it) and its name; ``origin`` says where the
    user wrote it, for error messages."""

    spec: Any  # int camera index or a string spelling
    name: str | None = None  # None: the default name from the spec
    origin: str = "--source"

    def resolved_name(self) -> str:
        return self.name if self.name is not None else parse_source(self.spec).label


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise AdtrError(f"{where}: source name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                        "(starting with a letter or digit)")
    return name


def split_name(text: str, option: str = "--source") -> NamedSource:
    """``NAME=SPEC`` -> (NAME, SPEC); a spelling that is an existing path, or whose part before the
    first '=' is not a plain name (URLs, GStreamer pipelines), is taken whole."""
    text = str(text)
    m = _PREFIX_RE.match(text.strip())
    if m and not Path(text).exists():
        return NamedSource(m.group(2), m.group(1), f"{option} {text}")
    return NamedSource(text, None, f"{option} {text}")


def camera_entry(text: str) -> NamedSource:
    """A ``--camera`` value: ``N`` or ``NAME=N`` with N a camera index."""
    entry = split_name(text, "--camera")
    spec = str(entry.spec).strip()
    if not spec.isdigit():
        raise AdtrError(f"--camera {text!r}: expected a camera index N or NAME=N (e.g. --camera 0, --camera left=1)")
    return NamedSource(int(spec), entry.name, entry.origin)


def _parse_file(path: Path) -> Any:
    text = read_text(path, "--sources")
    if path.suffix.lower() in (".yaml", ".yml"):
        return parse_yaml(text, path, "--sources", " (pip install pyyaml), or write the list as JSON")
    return parse_json(text, path, "--sources")


def load_source_list(path: str | Path) -> list[NamedSource]:
    """The entries of a ``--sources`` file; any problem is one AdtrError naming the file and entry."""
    path = Path(path)
    doc = _parse_file(path)
    if not isinstance(doc, list):
        raise AdtrError(f"--sources {path}: expected a list of {{name, source}} entries, got {type(doc).__name__}")
    if not doc:
        raise AdtrError(f"--sources {path}: the list is empty")
    entries = []
    for i, item in enumerate(doc, 1):
        where = f"--sources {path}: entry {i}"
        if not isinstance(item, dict):
            raise AdtrError(f"{where}: expected a mapping with 'source' (and 'name'), got {item!r}")
        unknown = sorted(str(k) for k in item if k not in ENTRY_KEYS)
        if unknown:
            raise AdtrError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(ENTRY_KEYS)})")
        if "source" not in item:
            raise AdtrError(f"{where}: 'source' is missing")
        spec = item["source"]
        if isinstance(spec, bool) or not isinstance(spec, (int, str)) or (isinstance(spec, int) and spec < 0) or not str(spec).strip():
            raise AdtrError(f"{where}: 'source' must be a camera index or a non-empty string, got {spec!r}")
        name = _check_name(item["name"], where) if item.get("name") is not None else None
        entries.append(NamedSource(spec, name, where))
    return entries


def as_named(source: Any) -> list[NamedSource]:
    """``run_stream``'s ``source`` argument as a list: one spelling, a NamedSource, or a sequence of
    those or of (name, spelling) pairs."""
    if isinstance(source, NamedSource):
        return [source]
    if isinstance(source, (list, tuple)):
        out = []
        for s in source:
            if isinstance(s, NamedSource):
                out.append(s)
            elif isinstance(s, tuple) and len(s) == 2:
                out.append(NamedSource(s[1], s[0], f"source {s[0]}"))
            else:
                out.append(NamedSource(s, None, f"source {s}"))
        if not out:
            raise AdtrError("no source given (give --camera N, --source S or --sources FILE)")
        return out
    return [NamedSource(source, None, f"source {source}")]


def resolve_names(entries: Sequence[NamedSource]) -> list[tuple[str, NamedSource]]:
    """(name, entry) for each source; a name given twice is refused before anything is opened."""
    seen: dict[str, NamedSource] = {}
    out = []
    for e in entries:
        name = e.resolved_name() if e.name is None else _check_name(e.name, e.origin)
        if name in seen:
            raise AdtrError(f"two sources are named {name!r} ({seen[name].origin}; {e.origin}): "
                            "names must be unique (name each one: NAME=SOURCE, or 'name' in --sources FILE)")
        seen[name] = e
        out.append((name, e))
    return out


def file_safe(name: str) -> str:
    """A name as a file or folder name part (default names are URLs or paths)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "source"


def file_safe_names(names: Iterable[str], option: str) -> dict[str, str]:
    """name -> file-safe name, refusing two names that would share a file."""
    out: dict[str, str] = {}
    back: dict[str, str] = {}
    for n in names:
        safe = file_safe(n)
        if safe in back:
            raise AdtrError(f"{option}: sources {back[safe]!r} and {n!r} would both write to {safe!r}; name them (NAME=SOURCE)")
        out[n], back[safe] = safe, n
    return out
