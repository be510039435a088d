"""Alarms (and optionally per-frame scores) to an MQTT broker, QoS 1, from the spool.

    --mqtt mqtt://[user[:password]@]host[:port][/prefix][?alarms=TOPIC&frames=TOPIC&status=TOPIC]

Topics default to ``<prefix>/alarms``, ``<prefix>/frames`` and ``<prefix>/status`` (prefix
``adtr-edge``). The status topic holds a retained ``{"state": "online", ...}`` while the stream
runs; the broker replaces it with the retained last will ``{"state": "offline", ...}`` when the
connection dies (without a ``time``: the will is written at connect, the loss comes later), and a
clean stop publishes ``offline`` with its time itself.

paho-mqtt's network thread connects and reconnects with exponential back-off (also when the
broker is down at start: the stream starts anyway and spools). The sender publishes a window of
events, waits for every PUBACK, and only then removes them from the spool. A window that was in
flight when the connection dropped is re-sent by paho on reconnect with the same message ids, so
nothing is published out of order; a receiver can still see a duplicate (QoS 1) and de-duplicates
on the event's ``id``.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Dict, List, NamedTuple, Optional
from urllib.parse import unquote, urlsplit

from ...errors import AdtrError
from ...version import __version__
from ..events import iso_utc
from .base import SpoolingSink
from .spool import Row, Spool

log = logging.getLogger(__name__)

TOPIC_KEYS = ("alarms", "frames", "status")


class MqttTarget(NamedTuple):
    host: str
    port: int
    topics: Dict[str, str]
    username: Optional[str]
    password: Optional[str]

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


def check_topic(topic: str, what: str) -> str:
    """A topic we may publish to: not empty, no wildcards, no NUL, not a broker ($SYS) topic."""
    problem = None
    if not topic:
        problem = "is empty"
    elif "+" in topic or "#" in topic:
        problem = "has a wildcard (+ or #); publish topics cannot"
    elif "\0" in topic:
        problem = "has a NUL character"
    elif topic.startswith("$"):
        problem = "starts with '$' (reserved for the broker)"
    elif len(topic.encode()) > 65535:
        problem = "is longer than 65535 bytes"
    if problem:
        raise AdtrError(f"--mqtt: {what} topic {topic!r} {problem}")
    return topic


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt://[user[:pw]@]host[:port][/prefix][?alarms=&frames=&status=]`` -> MqttTarget."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        hint = " (TLS is not supported here; use a local bridge)" if parts.scheme in ("mqtts", "ssl") else ""
        raise AdtrError(f"--mqtt {url!r}: use mqtt://host[:port][/prefix]{hint}")
    if "#" in url:  # urlsplit would take it for a fragment and drop it silently
        raise AdtrError(f"--mqtt {url!r}: has a wildcard (#); publish topics cannot")
    try:
        port = parts.port or 1883
    except ValueError:
        raise AdtrError(f"--mqtt {url!r}: bad port") from None
    if not parts.hostname:
        raise AdtrError(f"--mqtt {url!r}: no host (mqtt://host[:port][/prefix])")
    prefix = unquote(parts.path).strip("/") or "adtr-edge"
    topics = {k: f"{prefix}/{k}" for k in TOPIC_KEYS}
    # Not parse_qsl: it reads '+' as a space, and '+' is the MQTT wildcard that must be refused.
    for item in filter(None, parts.query.split("&")):
        key, _, value = (unquote(x) for x in item.partition("="))
        if key not in TOPIC_KEYS:
            raise AdtrError(f"--mqtt {url!r}: unknown option {key!r} (topics: {', '.join(TOPIC_KEYS)})")
        topics[key] = value
    for key, topic in topics.items():
        check_topic(topic, key)
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return MqttTarget(parts.hostname, port, topics, user, password)


def _paho():
    try:
        import paho.mqtt.client as mqtt  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise AdtrError("--mqtt needs paho-mqtt 2.x: pip install 'adtr-edge[factory]'") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise AdtrError("--mqtt needs paho-mqtt 2.x (found 1.x): pip install -U 'paho-mqtt>=2'")
    return mqtt


class MqttSink(SpoolingSink):
    name = "mqtt"
    window = 20  # events in flight before waiting for their PUBACKs (paho's default in-flight limit)

    def __init__(self, target: MqttTarget, spool: Spool, *, frames: bool = False, keepalive: int = 15,
                 reconnect_delay: tuple = (1, 30), drain_s: float = 5.0, **kw):
        self._mqtt = _paho()
        super().__init__(spool, frames=frames, drain_s=drain_s, **kw)
        self.target = target
        self.keepalive = keepalive
        self.reconnect_delay = reconnect_delay
        self._cond = threading.Condition()
        self._connected = False
        self._acked: set = set()
        self._outage_logged = False
        self._pipeline = None
        self.client = None

    def attach(self, pipeline) -> None:
        self._pipeline = pipeline
        super().attach(pipeline)

    def _status(self, state: str, timed: bool = True, **extra) -> bytes:
        status = {"state": state, "run": self.run_id, "host": socket.gethostname(), "version": __version__}
        if timed:
            status["time"] = iso_utc(time.time())
        if self._pipeline is not None:
            status["sources"] = sorted(self._pipeline.sources)
        status.update(extra)
        return json.dumps(status, separators=(",", ":")).encode()

    # -- paho callbacks (its network thread) -----------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            if not self._outage_logged:
                self._outage_logged = True
                log.error("mqtt: broker %s refused the connection (%s); events are spooled in %s",
                          self.target.where, reason_code, self.spool.path)
            return
        client.publish(self.target.topics["status"], self._status("online"), qos=1, retain=True)
        with self._cond:
            self._connected = True
            self._cond.notify_all()
        if self._outage_logged:
            self._outage_logged = False
            log.warning("mqtt: connected to %s again; delivering %d spooled events", self.target.where, self.backlog())
        else:
            log.info("mqtt: connected to %s", self.target.where)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if not self._stopping.is_set() and not self._outage_logged:
            self._outage_logged = True
            log.warning("mqtt: lost broker %s (%s); spooling in %s and reconnecting", self.target.where, reason_code, self.spool.path)

    def _on_connect_fail(self, client, userdata) -> None:
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("mqtt: broker %s unreachable; events are spooled in %s and delivered when it answers",
                        self.target.where, self.spool.path)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    # -- SpoolingSink ----------------------------------------------------------------------
    def _open(self) -> None:
        mqtt = self._mqtt
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"adtr-edge-{self.run_id}", clean_session=True,
                        protocol=mqtt.MQTTv311)
        if self.target.username:
            c.username_pw_set(self.target.username, self.target.password)
        # The broker sends the will as written here, at connect, whenever the connection dies
        # later: a "time" in it would be the connect time, earlier than the "online" it replaces.
        # It has none; a receiver takes the message's arrival as the time of the loss.
        c.will_set(self.target.topics["status"], self._status("offline", timed=False, reason="connection lost"),
                   qos=1, retain=True)
        c.reconnect_delay_set(*self.reconnect_delay)
        c.max_inflight_messages_set(self.window)
        c.on_connect, c.on_disconnect = self._on_connect, self._on_disconnect
        c.on_connect_fail, c.on_publish = self._on_connect_fail, self._on_publish
        c.connect_async(self.target.host, self.target.port, keepalive=self.keepalive)
        c.loop_start()  # connects, reconnects with back-off, re-sends un-acknowledged QoS 1 messages
        self.client = c

    def _wait(self, ready) -> bool:
        """Wait until ``ready()`` (under the condition) or stopping; True if ready."""
        with self._cond:
            while not ready():
                if self._stopping.is_set():
                    return False
                self._cond.wait(0.2)
            return True

    def _deliver(self, rows: List[Row]) -> int:
        if not self._wait(lambda: self._connected):
            return 0
        with self._cond:
            self._acked.clear()
        mids = []
        for row in rows:
            topic = self.target.topics["frames" if row.kind == "frame" else "alarms"]
            info = self.client.publish(topic, row.body, qos=1)
            # NO_CONN (dropped while publishing) still queues the message: paho sends it on reconnect.
            if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
                break
            mids.append(info.mid)
        if not mids:  # paho refused the first publish outright: do not spin on it
            log.error("mqtt: publish to %s refused (%s); retrying", self.target.where, self._mqtt.error_string(info.rc))
            self._stopping.wait(1.0)
            return 0
        self._wait(lambda: all(m in self._acked for m in mids))
        with self._cond:
            n = 0
            while n < len(mids) and mids[n] in self._acked:
                n += 1
        return n

    def _shut(self) -> None:
        c = self.client
        if c is None:
            return
        if self._connected:
            info = c.publish(self.target.topics["status"], self._status("offline", reason="stopped"), qos=1, retain=True)
            deadline = time.monotonic() + 2.0
            while not self._mqtt_published(info) and self._connected and time.monotonic() < deadline:
                time.sleep(0.01)
        c.disconnect()
        c.loop_stop()

    def _mqtt_published(self, info) -> bool:
        with self._cond:
            return info.mid in self._acked
