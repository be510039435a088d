"""The on-disk spool: order and ids across reopening, the byte bound, one owner at a time, a
foreign file refused; and the sink side: a stalled disk never blocks the sink thread."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from tests.mqtt_broker import wait_until

from adtr_edge.errors import AdtrError
from adtr_edge.runtime.delivery.factory import default_spool_dir, delivery_sinks, spool_file
from adtr_edge.runtime.delivery.spool import Spool
from adtr_edge.runtime.events import AlarmEvent


def _items(start, n, size=10):
    return [("alarm", f"run-{i}", b"x" * size) for i in range(start, start + n)]


def test_order_survives_reopening_and_removal(tmp_path):
    sp = Spool(tmp_path / "s.sqlite", 1 << 20)
    assert sp.put_many(_items(0, 5)) == 5
    assert sp.remove_through(sp.head(2)[-1].seq) == 2
    sp.close()
    again = Spool(tmp_path / "s.sqlite", 1 << 20)
    assert (again.count, again.bytes) == (3, 30)
    again.put_many(_items(5, 2))
    assert [r.event_id for r in again.head(10)] == ["run-2", "run-3", "run-4", "run-5", "run-6"]
    seqs = [r.seq for r in again.head(10)]
    assert seqs == sorted(seqs)
    again.remove_through(seqs[-1])
    again.close()
    # AUTOINCREMENT: a spool emptied and refilled still numbers after what it delivered.
    third = Spool(tmp_path / "s.sqlite", 1 << 20)
    third.put_many(_items(7, 1))
    assert third.head(1)[0].seq > seqs[-1]
    third.close()


def test_the_bound_counts_event_bytes(tmp_path):
    sp = Spool(tmp_path / "s.sqlite", 100)
    assert sp.put_many(_items(0, 12)) == 10 and sp.refused == 2
    assert sp.put_many([("alarm", "small", b"")]) == 1  # what fits still goes in
    sp.remove_through(sp.head(3)[-1].seq)
    assert sp.put_many(_items(20, 5)) == 3 and sp.bytes == 100
    sp.close()


def test_one_process_owns_a_spool(tmp_path):
    sp = Spool(tmp_path / "s.sqlite", 1000)
    with pytest.raises(AdtrError, match="in use by another process"):
        Spool(tmp_path / "s.sqlite", 1000)
    sp.close()
    Spool(tmp_path / "s.sqlite", 1000).close()  # released on close


def test_a_foreign_file_is_refused(tmp_path):
    (tmp_path / "s.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(AdtrError, match=r"s.sqlite is not a usable spool .*move it away"):
        Spool(tmp_path / "s.sqlite", 1000)
    Spool(tmp_path / "t.sqlite", 1000).close()
    db = sqlite3.connect(tmp_path / "t.sqlite")
    db.execute("UPDATE meta SET value='other/9' WHERE key='format'")
    db.commit()
    db.close()
    with pytest.raises(AdtrError, match="has format 'other/9'"):
        Spool(tmp_path / "t.sqlite", 1000)


def test_spool_files_per_destination_and_default_folder(tmp_path, monkeypatch):
    a = spool_file(tmp_path, "webhook", "http://a/x")
    assert a != spool_file(tmp_path, "webhook", "http://a/y") and a.name.startswith("webhook-http_a_x-")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_spool_dir() == tmp_path / "state" / "adtr-edge" / "spool"


def test_a_stalled_disk_does_not_block_the_sink_thread(tmp_path, caplog):
    """Another connection holds the database locked (as a stalled disk would hold the writer):
    on_alarm keeps returning at once, the memory queue's overflow is counted, and what was queued
    is written once the disk answers again."""
    sink = delivery_sinks(webhook="http://127.0.0.1:1/x", spool=tmp_path, drain_s=0.1, memory_queue=50, backoff=(5.0, 5.0))[0]
    blocker = sqlite3.connect(sink.spool.path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    sink.start()
    event = AlarmEvent("alarm_start", "cam", 1, time.time(), 0.9, 0.9, start_frame=1)
    sink.on_alarm(event)  # the writer takes it and blocks on the locked database
    assert wait_until(lambda: sink._q.qsize() == 0, timeout=5)
    time.sleep(0.3)
    done = threading.Event()

    def burst():
        for _ in range(300):
            sink.on_alarm(event)
        done.set()

    threading.Thread(target=burst, daemon=True).start()
    assert done.wait(5.0), "on_alarm blocked on a stalled spool"
    # Nothing reached the disk; the queue is full and the rest of the burst was dropped.
    assert sink.spool.count == 0 and sink._q.qsize() == 50 and sink.dropped == 250
    blocker.execute("ROLLBACK")
    blocker.close()
    deadline = time.monotonic() + 10
    while sink.spool.count < 51 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.spool.count == 51 and sink.dropped == 250
    ids = [r.event_id for r in sink.spool.head(1000)]
    assert ids == sorted(ids, key=lambda i: int(i.rsplit("-", 1)[1])) and len(set(ids)) == len(ids)
    assert sum("behind" in r.getMessage() for r in caplog.records) == 1  # one line, not one per dropped event
    sink.close()
