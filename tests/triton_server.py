"""A real Triton Inference Server for the tests and the benchmark, from the nvidia-pytriton wheel.

The wheel bundles the ``tritonserver`` binary and its python backend (no ONNX Runtime or TensorRT
backend), so the ``python`` flavour of ``adtr-edge export-triton`` runs on it. It pins numpy < 2,
so it lives in its own virtualenv, created once and cached (keyed by the wheel version and the
Python version) under ``~/.cache/adtr-edge/``; onnxruntime is installed there too, because the
python backend runs each model.py in that virtualenv's interpreter.

Starting the server (found by trying it): a copy of the wheel's ``tritonserver`` folder with the
python backend stub of this Python version in ``backends/python/``; ``LD_LIBRARY_PATH`` with the
wheel's ``nvidia_pytriton.libs`` and the folder of the same ``libpython3.X.so`` the virtualenv
runs on; the virtualenv's ``bin`` first on ``PATH``.

    python -m tests.triton_server            # create the virtualenv (what .ci/run does)
    python -m tests.triton_server REPO       # serve REPO until Ctrl-C (ports printed)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

PYTRITON_VERSION = "0.7.0"
PY = f"{sys.version_info.major}.{sys.version_info.minor}"
CACHE = Path(os.environ.get("ADTR_EDGE_CACHE", Path.home() / ".cache" / "adtr-edge"))
VENV = CACHE / f"pytriton-{PYTRITON_VERSION}-py{PY}"
DONE = ".adtr-edge-complete"  # written last: a venv without it is half-made and is rebuilt
PACKAGES = [f"nvidia-pytriton=={PYTRITON_VERSION}", "onnxruntime>=1.16"]


class Unavailable(RuntimeError):
    """The server cannot run here (the reason is the message)."""


def _site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{PY}" / "site-packages"


def libpython_dir() -> str | None:
    """The folder of this Python's ``libpython3.X.so`` for LD_LIBRARY_PATH ("" when the loader finds it
    on its own, e.g. Debian's /usr/lib/<multiarch>); None when there is none (the stub cannot start)."""
    import ctypes.util

    libdir = sysconfig.get_config_var("LIBDIR") or ""
    for d in (libdir, os.path.join(libdir, sysconfig.get_config_var("MULTIARCH") or "")):
        if d and any((Path(d) / f"libpython{PY}{suffix}").is_file() for suffix in (".so.1.0", ".so")):
            return d
    return "" if ctypes.util.find_library(f"python{PY}") else None


def server_dir(venv: Path = VENV) -> Path:
    """The prepared copy of the wheel's tritonserver folder (with the python backend stub in place)."""
    return venv / "tritonserver"


def ensure_venv(venv: Path = VENV, log=print) -> Path:
    """The cached virtualenv with pytriton + onnxruntime and a runnable server folder; made on the
    first call (about 150 MB of wheels). Raises ``Unavailable`` with the reason when it cannot be."""
    if (venv / DONE).is_file():
        return venv
    if libpython_dir() is None:
        raise Unavailable(f"no libpython{PY}.so for this Python ({sys.executable}); the python backend stub needs it "
                          f"(Debian: apt-get install libpython{PY})")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator; the others wait and reuse it
        if (venv / DONE).is_file():
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        log(f"creating {venv} ({', '.join(PACKAGES)}; once)")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True, timeout=300)
            subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
                           check=True, capture_output=True, text=True, timeout=1800)
        except subprocess.CalledProcessError as e:
            tail = (e.stderr or e.stdout or "").strip().splitlines()[-1:] or ["no output"]
            raise Unavailable(f"cannot create the pytriton virtualenv: {' '.join(map(str, e.cmd[:4]))} failed: {tail[0]}") from None
        except (OSError, subprocess.TimeoutExpired) as e:
            raise Unavailable(f"cannot create the pytriton virtualenv: {e}") from None
        wheel = _site_packages(venv) / "pytriton" / "tritonserver"
        stub = wheel / "python_backend_stubs" / PY / "triton_python_backend_stub"
        if not stub.is_file():
            raise Unavailable(f"nvidia-pytriton {PYTRITON_VERSION} has no python backend stub for Python {PY}")
        shutil.copytree(wheel, server_dir(venv), ignore=shutil.ignore_patterns("python_backend_stubs", "__pycache__"))
        shutil.copy2(stub, server_dir(venv) / "backends" / "python" / stub.name)
        (venv / DONE).write_text(f"{PACKAGES}\n")
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """One ``tritonserver`` process serving ``repo`` on localhost; ``start``/``kill``/``stop``
    can be repeated on the same ports (the reconnect test kills it and brings it back)."""

    def __init__(self, repo: Path, venv: Path = VENV, log_dir: Path | None = None):
        self.repo = Path(repo)
        self.venv = venv
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.log_dir = Path(log_dir or tempfile.mkdtemp(prefix="tritonserver-log-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _env(self) -> dict:
        env = dict(os.environ)
        # The virtualenv runs on this same interpreter, so its libpython is this one's.
        libs = [str(_site_packages(self.venv) / "nvidia_pytriton.libs")] + [d for d in [libpython_dir()] if d]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in [env.get("LD_LIBRARY_PATH")] if p])
        env["PATH"] = os.pathsep.join([str(self.venv / "bin"), env.get("PATH", "")])
        env.pop("PYTHONPATH", None)  # the stub must see the virtualenv's packages, not the caller's
        env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "1")
        return env

    def start(self, timeout: float = 90.0) -> "TritonServer":
        srv = server_dir(self.venv)
        cmd = [str(srv / "bin" / "tritonserver"), f"--model-repository={self.repo}", f"--backend-directory={srv / 'backends'}",
               f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}", f"--metrics-port={self.metrics_port}",
               "--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--allow-metrics=false", "--allow-gpu-metrics=false", "--exit-on-error=true", "--strict-readiness=true"]
        self.starts += 1
        self.log_path = self.log_dir / f"tritonserver-{self.starts}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise Unavailable(f"tritonserver exited with {self.proc.returncode}: {self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.1)
        self.kill()
        raise Unavailable(f"tritonserver not ready after {timeout:.0f} s: {self.log_tail()}")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1.0) as r:
                return r.status == 200
        except OSError:
            return False

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        return " | ".join(text[-lines:])

    def _shm_regions(self) -> set:
        """The python backend's /dev/shm regions this server maps (a SIGKILL leaves them behind)."""
        try:
            maps = Path(f"/proc/{self.proc.pid}/maps").read_text()
        except OSError:
            return set()
        return {line.split()[-1] for line in maps.splitlines() if "/dev/shm/triton_python_backend_shm_region" in line}

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash or a pulled cable (no graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            regions = self._shm_regions()
            os.killpg(self.proc.pid, signal.SIGKILL)  # the python backend stubs die with it
            self.proc.wait(timeout=30)
            for region in regions:  # what a graceful shutdown would have removed
                with contextlib.suppress(OSError):
                    os.unlink(region)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def serving(repo: Path):
    """A started server for ``repo`` (the virtualenv is made first if needed)."""
    server = TritonServer(repo, ensure_venv())
    try:
        yield server.start()
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    try:
        venv = ensure_venv()
    except Unavailable as e:
        print(f"pytriton virtualenv unavailable: {e}", file=sys.stderr)
        return 1
    print(f"pytriton virtualenv: {venv}")
    if argv:
        with serving(Path(argv[0])) as server:
            print(f"serving {argv[0]}: grpc {server.grpc_url}, http {server.http_url} (Ctrl-C stops)", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
