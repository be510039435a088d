"""HOST:PORT parsing, binding, and uvicorn on a thread of its own.

The socket is bound here, synchronously, before the server thread starts: a port in use or a host
that is not this machine's is one ``AdtrError`` line at start, not a traceback in a thread later.
The bound socket is handed to uvicorn, which runs its own asyncio loop on the thread, so no
request is ever served on the inference or sink thread.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from typing import Tuple

from ...errors import AdtrError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"  # only this machine, unless the user names a host


def parse_address(text: str, option: str) -> Tuple[str, int]:
    """'HOST:PORT', '[v6]:PORT', ':PORT' or 'PORT' -> (host, port); host defaults to localhost."""
    s = str(text).strip()
    host, sep, port_s = s.rpartition(":")
    if not sep:
        host, port_s = "", s
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_s)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise AdtrError(f"{option} {text!r}: expected HOST:PORT with a port 0-65535, e.g. 127.0.0.1:8080")
    return host, port


def bind(host: str, port: int, option: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # Lets a restarted stream reuse a port whose old connections linger in TIME_WAIT; a port that
    # another process listens on is still refused (Linux semantics).
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(64)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise AdtrError(f"{option} {host}:{port}: the port is in use (another stream or server?); choose another port") from None
        if e.errno == errno.EACCES:
            raise AdtrError(f"{option} {host}:{port}: permission denied (ports below 1024 need root)") from None
        raise AdtrError(f"{option} {host}:{port}: cannot listen there ({e.strerror or e})") from None
    except (socket.gaierror, OverflowError) as e:
        sock.close()
        raise AdtrError(f"{option} {host}:{port}: not an address of this machine ({e})") from None
    sock.setblocking(False)
    return sock


class HttpServer:
    """Serves an ASGI ``app`` on ``address`` from a daemon thread until ``close``."""

    def __init__(self, app, address: str, option: str, start_timeout: float = 10.0):
        import uvicorn

        host, port = parse_address(address, option)
        self.sock = bind(host, port, option)
        self.host, self.port = host, self.sock.getsockname()[1]
        # h11 + asyncio: pure-Python pieces uvicorn always has (no uvloop/httptools build on a device).
        config = uvicorn.Config(app, http="h11", loop="asyncio", lifespan="off", log_level="warning",
                                access_log=False, timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"http[{self.port}]", daemon=True)
        self._error: BaseException | None = None
        self._thread.start()
        deadline = time.monotonic() + start_timeout
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            self.close()
            raise AdtrError(f"{option} {host}:{port}: the server did not start ({self._error or 'timed out'})")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as e:  # reported by the constructor or logged: never kills the stream
            self._error = e
            log.error("web server on port %d stopped: %s", self.port, e)

    def close(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)
        try:
            self.sock.close()
        except OSError:
            pass
