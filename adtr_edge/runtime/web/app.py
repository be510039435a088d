"""The web view's routes (Starlette) and the token check.

    GET  /                        the page (page.html)
    GET  /stream.mjpg?source=S    the live overlay, multipart/x-mixed-replace (one JPEG per part)
    GET  /frame.jpg?source=S      the latest overlay JPEG (polling clients; 503 before the source's first frame)
    GET  /api/status              pipeline.status() + the model and the view's settings
    GET  /api/scores?source=S&after=N   recent scores (frame, score, label, threshold), oldest first
    GET  /api/alarms?source=S     last alarms, newest first; /api/alarms/ID.jpg their thumbnails
    POST /api/threshold           {"threshold": x}: the running detector's threshold (null = the folder's)
    POST /api/threshold/save      writes the running threshold into the model folder (history kept)
    GET  /api/frames/N.jpg?source=S     frame N as captured (no overlay), while the view holds it: what a mask is painted on
    GET  /api/reviews             this run's reviews, newest first
    POST /api/review              {"source", "frame", "verdict": "defect"|"normal", "label"?, "mask"?: PNG data URL}:
                                  the raw frame (and mask) into the review folder (stream --review-dir)
    POST /api/review/undo         {"id": ...}: takes a review's files out of the folder again
    POST /api/model               {"path": DIR}: load that model folder beside the running one and switch to it
                                  between two frames (refused in one line, the running model kept)
    GET  /metrics                 Prometheus text

With a token, every route needs it: ``Authorization: Bearer T`` or ``X-Adtr-Token: T``, or for a
GET (the page, an <img>, a scraper without headers) ``?token=T``. A POST takes it from a header only
and must be ``application/json``: a form on another site can send neither, so it cannot change the
threshold through the inspector's browser.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from pathlib import Path
from typing import Optional

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ...errors import AdtrError
from .encoder import encode_jpeg
from ...postprocessing import finite_threshold

BOUNDARY = "adtrframe"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
FIRST_FRAME_WAIT_S = 3.0  # a first /frame.jpg waits this long for the encoder's first JPEG


def _page() -> str:
    return (Path(__file__).parent / "page.html").read_text(encoding="utf-8")  # package data (pyproject)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class TokenGate:
    """ASGI middleware: refuse requests without the token (when one is set)."""

    def __init__(self, app, token: Optional[str]):
        self.app, self.token = app, token

    def _ok(self, scope) -> bool:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-adtr-token")
        auth = headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None and scope.get("method") in ("GET", "HEAD"):
            from urllib.parse import parse_qs

            given = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [None])[-1]
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.token and not self._ok(scope):
            await _error(401, "token required (Authorization: Bearer TOKEN, or ?token=TOKEN on a GET)")(scope, receive, send)
            return
        await self.app(scope, receive, send)


def make_app(frontend, token: Optional[str] = None, page: bool = True):
    """The ASGI app for ``frontend`` (a ``Frontend``); ``page=False``: /metrics only."""
    state = frontend.state

    def source_of(request: Request) -> Optional[str]:
        """The asked source, or the first; None for one the pipeline does not have (a client
        cannot make the state grow by asking for made-up names)."""
        asked = request.query_params.get("source")
        labels = frontend.source_labels()
        if asked:
            return asked if asked in labels or (frontend.pipeline is None and state.can_add()) else None
        return labels[0] if labels else None

    async def index(request: Request):
        return HTMLResponse(_page(), headers={"Cache-Control": "no-store"})

    async def mjpeg(request: Request):
        label = source_of(request)
        if label is None:
            return _error(404, "no such source (yet); see /api/status for the sources")
        interval = frontend.encoder.interval / 2

        async def parts():
            state.watch(label, +1)
            sent = -1
            try:
                while not frontend.closing:
                    jpeg, index, version = state.poll(label, mark=False)
                    if jpeg is not None and version != sent:
                        sent = version
                        head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                                f"X-Frame-Index: {index}\r\n\r\n").encode()
                        yield head + jpeg + b"\r\n"
                    else:
                        await asyncio.sleep(interval)
            finally:
                state.watch(label, -1)

        return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-store"})

    async def frame_jpg(request: Request):
        label = source_of(request)
        if label is None:
            return _error(404, "no such source (yet); see /api/status for the sources")
        jpeg, index, _ = state.poll(label)
        # The encoder draws only for watched sources, so the first poll finds no JPEG yet: wait
        # for the one it now makes instead of answering an empty body an <img> or a script
        # cannot use. Bounded, for a stream that has no frame at all yet.
        deadline = time.monotonic() + FIRST_FRAME_WAIT_S
        while jpeg is None and time.monotonic() < deadline and not frontend.closing:
            await asyncio.sleep(0.02)
            jpeg, index, _ = state.poll(label)
        if jpeg is None:
            return JSONResponse({"error": "no frame yet: the stream has not processed a frame of this source"},
                                status_code=503, headers={"Retry-After": "1", "Cache-Control": "no-store"})
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "no-store", "X-Frame-Index": str(index)})

    async def status(request: Request):
        return JSONResponse(frontend.status())

    async def scores(request: Request):
        label = source_of(request)
        try:
            after = int(request.query_params["after"]) if "after" in request.query_params else None
        except ValueError:
            return _error(400, "after: expected a frame index")
        return JSONResponse({"source": label, "points": state.scores(label, after) if label else []})

    async def alarms(request: Request):
        return JSONResponse({"alarms": state.alarm_list(request.query_params.get("source"))})

    async def thumbnail(request: Request):
        jpeg = state.thumbnail(request.path_params["alarm_id"])
        if jpeg is None:
            return _error(404, "no such thumbnail (not encoded yet, or pruned)")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def json_body(request: Request) -> dict:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise AdtrError("send the request as application/json")
        try:
            body = await request.json()
        except ValueError:
            raise AdtrError("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise AdtrError("the body must be a JSON object")
        return body

    async def set_threshold(request: Request):
        try:
            body = await json_body(request)
            if "threshold" not in body:
                raise AdtrError('expected {"threshold": NUMBER} (null: back to the folder\'s threshold)')
            value = body["threshold"]
            frontend.set_threshold(None if value is None else finite_threshold(value, "threshold"))
        except AdtrError as e:
            return _error(400, str(e))
        return JSONResponse(frontend.status())

    async def save_threshold(request: Request):
        try:
            await json_body(request)
            # The manifest write is small but it is disk I/O: off the event loop, so MJPEG goes on.
            entry = await asyncio.get_running_loop().run_in_executor(None, frontend.save_threshold)
        except AdtrError as e:
            return _error(400, str(e))
        return JSONResponse({"saved": entry, "status": frontend.status()})

    async def raw_frame(request: Request):
        label = source_of(request)
        r = state.frame_for_review(label, request.path_params["frame"]) if label is not None else None
        if r is None:
            return _error(404, "no such frame in the view's buffer (it keeps the newest frames of each source and "
                               "the frames of the newest alarms)")
        jpeg = await asyncio.get_running_loop().run_in_executor(None, encode_jpeg, r.frame.image)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def reviews(request: Request):
        folder = frontend.reviews.path if frontend.reviews is not None else None
        return JSONResponse({"reviews": state.review_list(), "review_dir": str(folder) if folder else None})

    async def add_review(request: Request):
        try:
            body = await json_body(request)
            source, frame, verdict = body.get("source"), body.get("frame"), body.get("verdict")
            if not isinstance(source, str) or isinstance(frame, bool) or not isinstance(frame, int):
                raise AdtrError('expected {"source": NAME, "frame": INDEX, "verdict": "defect" | "normal"}')
            label = body.get("label") or "defect"
            client = request.client.host if request.client else None
            # PNG encoding and file writes: off the event loop, so MJPEG and the page go on.
            record = await asyncio.get_running_loop().run_in_executor(
                None, lambda: frontend.review(source, frame, verdict, label=label, mask=body.get("mask"), client=client))
        except LookupError as e:
            return _error(404, str(e.args[0]))
        except AdtrError as e:
            return _error(400, str(e))
        return JSONResponse({"review": record})

    async def undo_review(request: Request):
        try:
            body = await json_body(request)
            record = await asyncio.get_running_loop().run_in_executor(None, frontend.undo_review, body.get("id"))
        except AdtrError as e:
            return _error(400, str(e))
        return JSONResponse({"undone": record})

    async def swap_model(request: Request):
        try:
            body = await json_body(request)
            path = body.get("path")
            if not isinstance(path, str) or not path.strip():
                raise AdtrError('expected {"path": MODEL_FOLDER}')
            # Loading and warming up the new model takes a while: off the event loop.
            record = await asyncio.get_running_loop().run_in_executor(None, frontend.swap_model, path)
        except AdtrError as e:
            return _error(400, str(e))
        return JSONResponse({"swap": record, "status": frontend.status()})

    async def metrics(request: Request):
        return Response(frontend.metrics.text(), media_type=PROMETHEUS_TEXT)

    routes = [Route("/metrics", metrics)]
    if page:
        routes += [
            Route("/", index),
            Route("/stream.mjpg", mjpeg),
            Route("/frame.jpg", frame_jpg),
            Route("/api/status", status),
            Route("/api/scores", scores),
            Route("/api/alarms", alarms),
            Route("/api/alarms/{alarm_id:int}.jpg", thumbnail),
            Route("/api/threshold", set_threshold, methods=["POST"]),
            Route("/api/threshold/save", save_threshold, methods=["POST"]),
            Route("/api/frames/{frame:int}.jpg", raw_frame),
            Route("/api/reviews", reviews),
            Route("/api/review", add_review, methods=["POST"]),
            Route("/api/review/undo", undo_review, methods=["POST"]),
            Route("/api/model", swap_model, methods=["POST"]),
        ]
    return TokenGate(Starlette(routes=routes), token)
