"""NVIDIA's real TensorRT Python bindings, importable on a machine without TensorRT's libraries.

PyPI has the bindings alone as small wheels (``tensorrt-bindings`` for 8.6, ``tensorrt-cu12-bindings``
for 10.x and 11.x): NVIDIA's pybind11 module ``tensorrt_bindings``, linked against ``libnvinfer.so.N``,
``libnvonnxparser.so.N`` and friends, which come from ``tensorrt-cu12-libs`` (a placeholder on PyPI
that downloads from NVIDIA's own index). The module calls only about ten C entry points of those
libraries (``createInferBuilder_INTERNAL``, ``getPluginRegistry``, ...). So a stub library that
defines those entry points (each returning NULL), under the names the module links against, lets
the real module import: its classes, methods, properties, enums and pybind signatures can then be
inspected, Python subclasses of its ILogger / calibrators constructed, and ``trt.Builder(logger)``
fails the way real TensorRT without a GPU does (``factory function returned nullptr``).

Each version is installed once (``pip install --no-deps --target``) into a cached folder under
``~/.cache/adtr-edge/`` (keyed by the wheel version and the Python version); the stub is compiled at
test time with the system C compiler from the symbols ``nm -D --undefined-only`` lists, so it always
matches the wheel.

    python -m tests.trt_bindings          # install every version (what .ci/run does before pytest)
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
CACHE = Path(os.environ.get("ADTR_EDGE_CACHE", Path.home() / ".cache" / "adtr-edge"))
REPO = Path(__file__).resolve().parents[1]
DONE = ".adtr-edge-complete"  # written last: a folder without it is half-made and is reinstalled


@dataclass(frozen=True)
class Release:
    """One TensorRT version the toolkit supports, as a bindings-only wheel."""

    label: str  # what the tests are named after
    requirement: str

    @property
    def folder(self) -> Path:
        return CACHE / f"trt-bindings-{self.requirement.replace('==', '-')}-py{PY}"


# JetPack 6.0's 8.6, JetPack 6.1/6.2's 10.3, the newest 10.x, 11.1 (the 11.x the stand-ins simulate:
# DLA refused before 11.4) and the newest 11.x on PyPI (8.5, JetPack 5's version, has no wheel).
# Pinned, so the cached folders stay valid and a new release is a choice.
RELEASES = (
    Release("8.6", "tensorrt-bindings==8.6.1"),
    Release("10.3", "tensorrt-cu12-bindings==10.3.0"),
    Release("10.16", "tensorrt-cu12-bindings==10.16.1.11"),
    Release("11.1", "tensorrt-cu12-bindings==11.1.0.106"),
    Release("11.4", "tensorrt-cu12-bindings==11.4.0.106"),
)


class Unavailable(RuntimeError):
    """The real bindings cannot be used here (the reason is the message, one line)."""


def ensure_installed(release: Release, log=print) -> Path:
    """The cached folder holding ``tensorrt_bindings`` of ``release``; installed on the first call."""
    folder = release.folder
    if (folder / DONE).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer; the others wait and reuse it
        if (folder / DONE).is_file():
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        log(f"installing {release.requirement} into {folder} (once)")
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--target", str(folder), release.requirement]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        except subprocess.CalledProcessError as e:
            lines = [ln for ln in (e.stderr or e.stdout or "").strip().splitlines() if not ln.startswith("WARNING")]
            raise Unavailable(f"pip cannot install {release.requirement}: {(lines or ['no output'])[-1]}") from None
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(f"pip cannot install {release.requirement}: {e}") from None
        if not (folder / "tensorrt_bindings").is_dir():
            raise Unavailable(f"{release.requirement} installed no tensorrt_bindings package")
        (folder / DONE).write_text(release.requirement + "\n")
    return folder


def extension(folder: Path) -> Path:
    found = sorted((folder / "tensorrt_bindings").glob("tensorrt*.so"))
    if not found:
        raise Unavailable(f"{folder}: no tensorrt*.so in tensorrt_bindings")
    return found[0]


def _tool(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout
    except FileNotFoundError:
        raise Unavailable(f"{cmd[0]} is not installed (binutils and a C compiler are needed for the stub library)") from None
    except subprocess.CalledProcessError as e:
        raise Unavailable(f"{' '.join(cmd[:3])} failed: {(e.stderr or '').strip()[-200:]}") from None


def missing_symbols(so: Path) -> list[str]:
    """The functions ``so`` imports that nothing loaded in this process defines (TensorRT's own).

    Versioned symbols (``@GLIBC_2.2.5``, ``@GLIBCXX_3.4``) come from the C/C++ runtime and weak ones
    may stay undefined; Python's C API and libc resolve in this interpreter's global namespace."""
    here = ctypes.CDLL(None)
    names = []
    for line in _tool(["nm", "-D", "--undefined-only", str(so)]).splitlines():
        parts = line.split()
        if len(parts) != 2 or parts[0] != "U" or "@" in parts[1]:
            continue
        if not hasattr(here, parts[1]):
            names.append(parts[1])
    return names


def needed_libraries(so: Path) -> list[str]:
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", _tool(["readelf", "-d", str(so)]))


def build_stub(so: Path, out: Path) -> Path:
    """A folder for LD_LIBRARY_PATH: one stub library defining ``so``'s TensorRT entry points (NULL),
    linked under each library name ``so`` needs that this machine does not have."""
    symbols = missing_symbols(so)
    if not symbols:
        raise Unavailable(f"{so} imports no TensorRT entry points (nm found none): not the expected bindings")
    out.mkdir(parents=True, exist_ok=True)
    src = out / "trtstub.c"
    # Every entry point returns a pointer in TensorRT's C API; NULL is what a failed create returns.
    src.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in symbols))
    lib = out / "libtrtstub.so"
    _tool([os.environ.get("CC", "cc"), "-shared", "-fPIC", "-o", str(lib), str(src)])
    for name in needed_libraries(so):
        try:
            ctypes.CDLL(name)
        except OSError:
            link = out / name
            if not link.exists():
                link.symlink_to(lib.name)
    return out


def environment(folder: Path, stub_dir: Path) -> dict:
    """The environment of a subprocess that imports the real module (``tensorrt_bindings``)."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join([str(stub_dir)] + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def main() -> int:
    failed = 0
    for release in RELEASES:
        try:
            print(f"TensorRT {release.label} bindings: {ensure_installed(release)}")
        except Unavailable as e:
            print(f"TensorRT {release.label} bindings unavailable: {e}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
