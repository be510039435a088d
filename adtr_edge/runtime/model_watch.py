"""``stream --follow-model``: the model folder is a stable path (usually a symlink that a promotion
points at a new folder); when what it names changes, the stream switches to it without stopping.

A thread polls the path: the folder it resolves to and its manifest's identity (inode, size,
mtime). A change is handed to ``Pipeline.swap_model`` from this thread, never the sink thread
(the swap waits for the inference thread, which may wait for the sinks). A folder that is
refused is logged once and not retried until the path changes again.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Optional, Tuple

from ..errors import AdtrError
from ..folder import MANIFEST
from .sinks import Sink

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 2.0


def _signature(path: Path) -> Optional[Tuple[str, int, int, int]]:
    """(real folder, manifest inode, size, mtime) of what ``path`` names now; None while it names
    nothing complete (a promotion half-way: the link points at a folder without its manifest yet)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(os.path.join(real, MANIFEST))
    except OSError:
        return None
    return real, st.st_ino, st.st_size, st.st_mtime_ns


class ModelWatcher(Sink):
    """Watches ``path`` every ``interval`` seconds once the stream runs; swaps on a change."""

    name = "follow-model"

    def __init__(self, path, interval: float = DEFAULT_INTERVAL_S):
        if interval <= 0:
            raise AdtrError(f"--follow-model interval must be > 0 s, got {interval}")
        self.path = Path(path)
        self.interval = interval
        self.swapped = 0
        self.refused = 0
        self._seen = _signature(self.path)  # what the stream was started with
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._pipeline = None

    def attach(self, pipeline) -> None:
        self._pipeline = pipeline
        self._thread = threading.Thread(target=self._loop, name="follow-model", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            now = _signature(self.path)
            if now is None or now == self._seen:
                continue
            self._seen = now  # tried once per change, whatever the outcome
            try:
                record = self._pipeline.swap_model(now[0])
            except AdtrError as e:
                self.refused += 1
                log.error("--follow-model %s: %s", self.path, e)
                continue
            except Exception:  # a bug must not end the watch (or the stream): logged, next change tried
                self.refused += 1
                log.exception("--follow-model %s: swap failed", self.path)
                continue
            self.swapped += 1
            log.info("--follow-model %s: now %s (%s)", self.path, record["to"].get("path"), record["to"].get("digest"))

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=70.0)  # a swap in progress finishes or gives up (its own timeout)

    def summary(self) -> dict:
        return {"follow_model": {"path": str(self.path), "swapped": self.swapped, "refused": self.refused}}
