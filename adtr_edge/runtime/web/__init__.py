"""The factory front end of ``stream``: a live web view (``--http``) and Prometheus metrics
(``--metrics``, and ``/metrics`` on the web view).

    state.py     what the page shows, fed by the sink thread, read by the server (bounded, locked)
    encoder.py   the thread that turns the latest overlay into a JPEG, only while someone watches
    metrics.py   per-pipeline Prometheus registry: counters, gauges, stage latency histograms
    app.py       the Starlette routes (page, MJPEG, JSON API, threshold, /metrics) and the token check
    server.py    HOST:PORT parsing, binding (a port in use is one clear line), uvicorn on its own thread
    frontend.py  the one Sink that ``stream`` adds: feeds the view and the metrics, owns the servers
    page.html    the page (plain HTML/JS/canvas, no CDN: edge boxes are often offline)

Nothing here runs on the inference thread, and the sink thread only stores references and
counts: encoding, serving and slow browsers live on the encoder and server threads. Starlette,
uvicorn and prometheus_client come with the ``factory`` extra and are imported only when asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from ...errors import AdtrError


def open_frontend(model_dir: Path, *, http: Optional[str] = None, metrics: Optional[str] = None,
                  token: Optional[str] = None, review_dir: Optional[Path] = None) -> List:
    """The sinks ``stream --http/--metrics`` adds (empty when neither is given); servers are bound
    and the review folder checked here, before the model loads, so a port in use or a folder that
    cannot be written fails at once."""
    if review_dir is not None and http is None:
        raise AdtrError("--review-dir: reviews are made in the web view; give --http too")
    if http is None and metrics is None:
        if token is not None:
            raise AdtrError("--http-token applies to --http or --metrics; give one of them")
        return []
    try:
        from .frontend import Frontend
    except ImportError as e:
        flag = "--http" if http is not None else "--metrics"
        raise AdtrError(f"{flag} needs the factory extra: pip install 'adtr-edge[factory]' ({e})") from None
    return [Frontend(model_dir, http=http, metrics=metrics, token=token, review_dir=review_dir)]
