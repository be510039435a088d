"""A bounded on-disk queue of events for one destination: what the sinks deliver from.

SQLite (the standard library's sqlite3) rather than our own segment files: every append is a
transaction, so a crash or power cut leaves whole events and never a torn line to repair; the
``seq`` primary key gives the delivery order across restarts; deleting the delivered head is one
statement; and freed pages are reused, so the file stays near its high-water mark instead of
growing like an append-only log that needs compaction. WAL journaling with ``synchronous=FULL``
makes a committed event survive a power cut; the writes run on the sink's own writer thread,
never on the pipeline's.

The bound counts the bytes of the stored events (the JSON bodies). When an event does not fit,
``put`` refuses it and counts it; the caller logs one line. One process at a time owns a spool
(an exclusive lock on ``<file>.lock``): two streams sharing one would deliver each other's events.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import List, NamedTuple, Sequence, Tuple

from ...errors import AdtrError

log = logging.getLogger(__name__)

FORMAT = "adtr-edge-spool/1"


class Row(NamedTuple):
    seq: int  # delivery order, increasing across restarts
    kind: str  # "alarm" | "frame": which topic / route the sink uses
    event_id: str
    body: bytes  # the event as UTF-8 JSON, "id" included


def _lock(path: Path):
    """An exclusive, non-blocking lock held for the process's life (released by the OS on exit)."""
    try:
        import fcntl  # POSIX; elsewhere the spool works without the guard
    except ImportError:
        return None
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AdtrError(f"--spool {path.parent}: {path.stem} is in use by another process (pid {holder}); "
                        "give each stream its own --spool folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


class Spool:
    """Events waiting for one destination, oldest first. Thread-safe (one connection, one lock):
    the sink's writer thread appends, its sender thread reads the head and removes what the
    destination confirmed."""

    def __init__(self, path: str | os.PathLike, max_bytes: int):
        if max_bytes <= 0:
            raise AdtrError(f"--spool-max-mb must be > 0, got {max_bytes / 2**20:g}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock(self.path.with_name(self.path.name + ".lock"))
        except OSError as e:
            raise AdtrError(f"--spool {folder}: cannot write there ({e.strerror or e})") from None
        try:
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "kind TEXT NOT NULL, event_id TEXT NOT NULL, body BLOB NOT NULL)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (FORMAT,))
            fmt = self._db.execute("SELECT value FROM meta WHERE key='format'").fetchone()[0]
            self.count, self.bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM events").fetchone()
        except sqlite3.DatabaseError as e:
            self._release()
            raise AdtrError(f"--spool {folder}: {self.path.name} is not a usable spool ({e}); move it away") from None
        if fmt != FORMAT:
            self._release()
            raise AdtrError(f"--spool {folder}: {self.path.name} has format {fmt!r}, this version reads {FORMAT!r}")
        self._mutex = threading.Lock()
        self.closed = False
        self.refused = 0  # events that did not fit
        if self.count:
            log.info("spool %s: %d events from an earlier run wait for delivery", self.path, self.count)

    def _release(self) -> None:
        if getattr(self, "_db", None) is not None:
            self._db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def put_many(self, items: Sequence[Tuple[str, str, bytes]]) -> int:
        """Append (kind, event_id, body) items in order, one transaction; returns how many fit.
        The ones that do not fit are refused (counted), the others still go in: a small alarm
        after a refused large one is kept. ``sqlite3.OperationalError`` (disk full, locked)
        propagates with nothing written, so the caller can retry the same items."""
        with self._mutex:
            if self.closed:
                raise sqlite3.OperationalError("spool closed")
            room = self.max_bytes - self.bytes
            kept: List[Tuple[str, str, bytes]] = []
            for kind, eid, body in items:
                if len(body) <= room:
                    kept.append((kind, eid, body))
                    room -= len(body)
            if kept:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany("INSERT INTO events (kind, event_id, body) VALUES (?, ?, ?)", kept)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            self.count += len(kept)
            self.bytes += sum(len(b) for _, _, b in kept)
            self.refused += len(items) - len(kept)
            return len(kept)

    def head(self, n: int) -> List[Row]:
        """The oldest ``n`` events (fewer if fewer wait)."""
        with self._mutex:
            if self.closed:
                return []
            rows = self._db.execute("SELECT seq, kind, event_id, body FROM events ORDER BY seq LIMIT ?", (n,)).fetchall()
        return [Row(s, k, e, bytes(b)) for s, k, e, b in rows]

    def remove_through(self, seq: int) -> int:
        """Forget every event up to and including ``seq`` (the destination confirmed them)."""
        with self._mutex:
            if self.closed:
                return 0
            n, size = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM events WHERE seq <= ?", (seq,)).fetchone()
            self._db.execute("DELETE FROM events WHERE seq <= ?", (seq,))
            self.count -= n
            self.bytes -= size
            return n

    def close(self) -> None:
        with self._mutex:
            if self.closed:
                return
            self.closed = True
            self._release()
