"""Capture from one or many sources and merge their frames into inference steps.

    source 1 --[reader thread]--> feed 1 (bounded) --+
    source 2 --[reader thread]--> feed 2 (bounded) --+--> Merge.steps() --> one batch per step
    ...                                              |
    source N --[reader thread]--> feed N (bounded) --+

Each source has a reader thread and a small buffer (its feed). A step takes one item from every
feed that has one, so N live cameras share one model call of batch <= N (capped by a TensorRT
profile's max batch: then the sources take turns). It waits for the feeds
that have nothing yet at most ``gather_s`` after the first one is ready, so a slow or stalled
camera delays the others by that bound only, never by its own frame period.

- A live feed keeps only its newest frame (the one replaced is counted as a drop): results stay
  fresh however slow inference is. A file feed (video, image folder) is a FIFO of micro-batches
  of ``batch`` frames; its reader blocks when it is full, so every frame is processed.
- A source that ends (end of file, ``max_frames``, lost camera, capture error) ends only its feed;
  the step that first sees it finished says so (``Step.ended``) and the others go on. The steps
  end when every feed has ended and been drained.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator, Sequence

from ..errors import AdtrError
from .events import SourceEvent
from .sources import Frame, Source

log = logging.getLogger(__name__)

GATHER_S = 0.005  # default wait for the other sources once one has a frame (s)


class Feed:
    """One source read on its own thread into a bounded buffer of (frames, notices) items."""

    def __init__(self, name: str, source: Source, cond: threading.Condition, *, batch: int = 1,
                 max_frames: int | None = None, capacity: int = 4):
        self.name = name
        self.source = source
        self.live = source.live
        self.batch = 1 if self.live else batch
        self.capacity = 1 if self.live else max(1, capacity)
        self.max_frames = max_frames
        self.items: deque[tuple[list[Frame], list[SourceEvent]]] = deque()
        self.drops = 0  # live frames replaced in this feed before a step took them
        self.taken = 0  # frames handed to steps
        self.error: str | None = None  # capture failure (an exception in the reader)
        self.reached_max = False
        self.done = False  # the reader thread has finished (items may remain)
        self.reported = False  # a step has announced its end
        self._cond = cond
        self._abandoned = False
        self.thread = threading.Thread(target=self._read, name=f"feed[{name}]", daemon=True)

    # -- reader thread ---------------------------------------------------------------------
    def _skipped(self) -> list[SourceEvent]:
        """The source's skipped inputs as ``corrupt`` events (they travel with the next item, so
        they reach the sinks in input order)."""
        return [SourceEvent("corrupt", self.name, name, reason, ts, index)
                for name, reason, ts, index in self.source.take_skipped()]

    def _put(self, frames: list[Frame], notices: list[SourceEvent]) -> bool:
        with self._cond:
            if self.live:
                if self.items:  # nobody took the previous frame yet: the newest one wins
                    old_frames, old_notices = self.items.popleft()
                    self.drops += len(old_frames)
                    notices = old_notices + notices
            else:
                while len(self.items) >= self.capacity:
                    if self._abandoned:
                        return False
                    self._cond.wait(0.1)
            if self._abandoned or (self.live and self.reached_max):  # read after the limit: not processed
                return False
            self.items.append((frames, notices))
            self._cond.notify_all()
        return True

    def _read(self) -> None:
        read = 0
        pending: list[Frame] = []
        notices: list[SourceEvent] = []
        try:
            for frame in self.source:
                notices += self._skipped()
                pending.append(frame)
                read += 1
                if len(pending) >= self.batch:
                    if not self._put(pending, notices):
                        return
                    pending, notices = [], []
                # A file stops reading at the limit; a live feed drops frames, so its limit counts
                # the frames steps took (``take``).
                if not self.live and self.max_frames is not None and read >= self.max_frames:
                    self.reached_max = True
                    self.source.stop()
                    break
            notices += self._skipped()
            if pending or notices:
                self._put(pending, notices)
        except AdtrError as e:
            self.error = str(e)
        except Exception as e:  # a bug or an OpenCV failure: report it, the other feeds go on
            log.exception("capture of %s failed", self.name)
            self.error = f"capture of {self.name!r} failed: {e.__class__.__name__}: {e}"
        finally:
            with self._cond:
                self.done = True
                self._cond.notify_all()

    # -- merge side (called with the condition held) ---------------------------------------
    @property
    def ready(self) -> bool:
        return bool(self.items)

    @property
    def finished(self) -> bool:
        return self.done and not self.items

    def take(self) -> tuple[list[Frame], list[SourceEvent]]:
        frames, notices = self.items.popleft()
        self.taken += len(frames)
        if self.live and self.max_frames is not None and self.taken >= self.max_frames and not self.reached_max:
            self.reached_max = True
            self.items.clear()  # read after the limit: not processed
            self.source.stop()
        return frames, notices

    def abandon(self) -> None:
        """Nobody takes items any more (inference ended): the reader must not wait for room."""
        self._abandoned = True
        self.source.stop()

    @property
    def ended_by(self) -> str:
        if self.error is not None:
            return "error"
        if self.source.error is not None:
            return "source lost"
        if self.reached_max:
            return "max frames"
        return "end of source"


@dataclass
class Step:
    """What one inference step takes: an item of frames (and skipped-input notices) from each feed
    that had one, and the feeds seen finished for the first time."""

    items: list[tuple[Feed, list[Frame], list[SourceEvent]]] = field(default_factory=list)
    ended: list[Feed] = field(default_factory=list)

    @cached_property  # read several times per step; the items do not change once the step is made
    def frames(self) -> list[Frame]:
        return [f for _, frames, _ in self.items for f in frames]


class Merge:
    """Steps over the feeds of ``sources`` (pairs of name and opened source)."""

    def __init__(self, sources: Sequence[tuple[str, Source]], *, batch: int = 1, max_frames: int | None = None,
                 capacity: int = 4, gather_s: float = GATHER_S, max_step: int | None = None):
        if gather_s < 0:
            raise AdtrError(f"--gather-ms must be >= 0, got {gather_s * 1e3:g}")
        if max_step is not None and batch > max_step:
            raise AdtrError(f"--batch {batch} is more than the engines' profile allows (max batch {max_step}); "
                            "use a smaller --batch or rebuild with --max-batch")
        # A TensorRT profile caps the frames of one step: more sources than that take turns.
        self.max_step = max_step
        self._first = 0  # which feed a capped step serves first (rotates, so none starves)
        self.cond = threading.Condition()
        self.feeds = [Feed(name, src, self.cond, batch=batch, max_frames=max_frames, capacity=capacity)
                      for name, src in sources]
        self.gather_s = gather_s

    def start(self) -> None:
        for f in self.feeds:
            f.thread.start()

    def stop(self) -> None:
        """Ask every source to end; what the feeds hold is still processed."""
        for f in self.feeds:
            f.source.stop()

    def abandon(self) -> None:
        with self.cond:
            for f in self.feeds:
                f.abandon()
            self.cond.notify_all()

    def join(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for f in self.feeds:
            if f.thread.is_alive():
                f.thread.join(max(0.0, deadline - time.monotonic()))

    def _newly_ended(self) -> list[Feed]:
        out = [f for f in self.feeds if f.finished and not f.reported]
        for f in out:
            f.reported = True
        return out

    def steps(self) -> Iterator[Step]:
        """Steps until every feed has ended and been drained."""
        while True:
            step = self._next()
            if step is None:
                return
            yield step  # never while holding the condition: the readers go on meanwhile

    def _next(self) -> Step | None:
        feeds = self.feeds
        with self.cond:
            while True:
                ended = self._newly_ended()
                if any(f.ready for f in feeds):
                    break
                if ended:
                    return Step(ended=ended)
                if all(f.done for f in feeds):
                    return None
                self.cond.wait(0.1)
            # Something is ready: the feeds that are not get a short, bounded wait.
            deadline = time.perf_counter() + self.gather_s
            while not all(f.ready or f.done for f in feeds):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self.cond.wait(left)
            items: list[tuple[Feed, list[Frame], list[SourceEvent]]] = []
            total = 0
            for f in feeds[self._first:] + feeds[:self._first]:
                if f.ready and (self.max_step is None or total + len(f.items[0][0]) <= self.max_step):
                    items.append((f, *f.take()))
                    total += len(items[-1][1])
            if self.max_step is not None:
                self._first = (self._first + 1) % len(feeds)
            ended += self._newly_ended()
            self.cond.notify_all()  # room in the file feeds
            return Step(items, ended)
