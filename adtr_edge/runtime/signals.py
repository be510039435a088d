"""SIGINT/SIGTERM stop a stream cleanly: the same path as the end of its sources."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading

log = logging.getLogger("adtr_edge.runtime.pipeline")


@contextlib.contextmanager
def stop_on_signals(pipeline):
    """SIGINT/SIGTERM ask the pipeline to stop cleanly; a second SIGINT interrupts at once.
    Signal handlers can only be installed from the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, _frame):
        if pipeline._stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        log.warning("%s received: stopping (again to abort)", name)
        pipeline.stop(name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
