"""What the MQTT and webhook sinks share: spool first, deliver from the spool on their own thread.

    pipeline sink thread --on_alarm/on_frame--> memory queue (bounded, put_nowait)
        --[writer thread]--> Spool (SQLite on disk) --[sender thread]--> destination

The pipeline's sink thread only serialises the event and puts it in a bounded memory queue, so a
stalled disk or a dead broker never slows inference. The writer commits events to the spool; the
sender reads the oldest ones and removes them only when the destination confirmed them (MQTT
PUBACK, HTTP 2xx), so delivery is in order and at least once: after a crash or an outage a
receiver may see an event twice and de-duplicates on its ``id`` (``<run>-<seq>``, written into the
event when it is spooled, so a redelivery by the next process carries the same id).
"""

from __future__ import annotations

import abc
import json
import logging
import queue
import sqlite3
import threading
import time
import uuid
from typing import List

from ..events import AlarmEvent, FrameResult, SourceEvent
from ..sinks import Sink
from .spool import Row, Spool

log = logging.getLogger(__name__)

MEMORY_QUEUE = 10000  # events between the sink thread and the writer: only a cushion for disk stalls
WRITE_BATCH = 500


class SpoolingSink(Sink, abc.ABC):
    """Base of the delivery sinks. Subclasses set ``name`` and ``window`` and implement
    ``_open`` (start connecting; must not block), ``_deliver(rows)`` (send the rows in order and
    return how many from the first were confirmed; may wait, but must return soon after
    ``self._stopping`` is set) and ``_shut`` (disconnect)."""

    name = "delivery"
    window = 1  # rows handed to _deliver at a time

    def __init__(self, spool: Spool, *, frames: bool = False, drain_s: float = 5.0, memory_queue: int = MEMORY_QUEUE):
        self.spool = spool
        self.frames = frames
        self.drain_s = drain_s
        self.run_id = uuid.uuid4().hex[:12]
        self._seq = 0
        self._q: queue.Queue = queue.Queue(maxsize=memory_queue)
        self._stopping = threading.Event()  # sender: give up waiting, leave the rest in the spool
        self._writer_done = threading.Event()
        self._closing = False  # writer: write what is queued, then end
        self._wake = threading.Event()  # writer -> sender: new rows
        self._threads: List[threading.Thread] = []
        self.delivered = 0
        self.dropped = 0
        self._full = False  # logging state: one line when the spool fills, one when it has room again
        self._behind = False
        self._holding = 0  # events the writer took from the queue and has not committed yet
        self._started = False
        self._closed = False

    # -- the pipeline's side (sink thread): never waits -----------------------------------
    def attach(self, pipeline) -> None:
        self.start()

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._open()
        for target, tag in ((self._write_loop, "spool"), (self._send_loop, "send")):
            t = threading.Thread(target=target, name=f"{self.name}-{tag}", daemon=True)
            t.start()
            self._threads.append(t)

    def on_frame(self, result: FrameResult) -> None:
        if self.frames:
            self._enqueue("frame", result.event)

    def on_alarm(self, event: AlarmEvent | SourceEvent) -> None:
        self._enqueue("alarm", event.to_dict())

    def _enqueue(self, kind: str, event: dict) -> None:
        if not self._started:
            self.start()
        self._seq += 1
        eid = f"{self.run_id}-{self._seq}"
        body = json.dumps({"id": eid, **event}, separators=(",", ":")).encode()
        try:
            self._q.put_nowait((kind, eid, body))
            # Hysteresis: a writer that frees one slot at a time must not make a line per event.
            if self._behind and self._q.qsize() < self._q.maxsize // 2:
                self._behind = False
                log.warning("%s: the spool writer caught up (%d events dropped so far)", self.name, self.dropped)
        except queue.Full:
            self.dropped += 1
            if not self._behind:
                self._behind = True
                log.error("%s: the spool writer is %d events behind (disk stalled?): dropping events until it catches up",
                          self.name, self._q.maxsize)

    # -- writer thread ---------------------------------------------------------------------
    def _write_loop(self) -> None:
        try:
            while True:
                try:
                    batch = [self._q.get(timeout=0.1)]
                except queue.Empty:
                    if self._closing:
                        return
                    continue
                while len(batch) < WRITE_BATCH:
                    try:
                        batch.append(self._q.get_nowait())
                    except queue.Empty:
                        break
                self._holding = len(batch)
                self._write(batch)
                self._holding = 0
        finally:
            self._writer_done.set()

    def _write(self, batch) -> None:
        failing = False
        while True:
            try:
                kept = self.spool.put_many(batch)
                break
            except sqlite3.Error as e:
                if self.spool.closed:
                    self.dropped += len(batch)
                    return
                if not failing:
                    failing = True
                    log.error("%s: cannot write to spool %s (%s); retrying", self.name, self.spool.path, e)
                time.sleep(0.5)
        if failing:
            log.info("%s: spool %s writable again", self.name, self.spool.path)
        if kept < len(batch):
            self.dropped += len(batch) - kept
            if not self._full:
                self._full = True
                log.error("%s: spool %s is full (%.1f MB of events waiting): dropping new events until delivery makes room",
                          self.name, self.spool.path, self.spool.bytes / 2**20)
        elif self._full:
            self._full = False
            log.warning("%s: spool has room again (%d events dropped so far)", self.name, self.dropped)
        if kept:
            self._wake.set()

    # -- sender thread ---------------------------------------------------------------------
    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            rows = self.spool.head(self.window)
            if not rows:
                self._wake.wait(0.2)
                self._wake.clear()
                continue
            try:
                n = self._deliver(rows)
            except Exception:  # a bug in a sender must not end delivery; the rows stay spooled
                log.exception("%s: delivery failed", self.name)
                self._stopping.wait(1.0)
                continue
            if n:
                self.spool.remove_through(rows[n - 1].seq)
                self.delivered += n

    @abc.abstractmethod
    def _open(self) -> None:
        """Start connecting (in the background: an unreachable destination must not delay the stream)."""

    @abc.abstractmethod
    def _deliver(self, rows: List[Row]) -> int:
        """Send ``rows`` in order; return how many, from the first, the destination confirmed."""

    @abc.abstractmethod
    def _shut(self) -> None:
        """Disconnect (after the sender stopped)."""

    # -- end -------------------------------------------------------------------------------
    def backlog(self) -> int:
        """Events not yet confirmed by the destination (spooled or on their way to the spool)."""
        return self.spool.count + self._q.qsize() + self._holding

    def summary(self) -> dict:
        return {"delivery": {self.name: {"delivered": self.delivered, "backlog": self.backlog(), "dropped": self.dropped,
                                         "spool": str(self.spool.path)}}}

    def close(self) -> None:
        """Write what is queued, give the sender up to ``drain_s`` to empty the spool, then stop;
        what is left stays in the spool for the next run."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._started:
                deadline = time.monotonic() + self.drain_s
                self._closing = True
                self._writer_done.wait(max(0.0, deadline - time.monotonic()) + 5.0)
                while self.backlog() and time.monotonic() < deadline:
                    time.sleep(0.02)
                self._stopping.set()
                self._wake.set()
                for t in self._threads:
                    t.join(timeout=5.0)
                self._shut()
        finally:
            left = self.backlog()
            self.spool.close()
            if left:
                log.warning("%s: %d events not delivered yet stay in %s; the next stream with the same --spool delivers them",
                            self.name, left, self.spool.path)
