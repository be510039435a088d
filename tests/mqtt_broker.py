"""A real mosquitto broker for the delivery tests and benchmarks/mqtt_latency.py: a generated
config on a free localhost port, persistence on (so a subscriber's session and its queued QoS 1
messages survive a broker restart, as on a plant's broker), started and stopped on demand; and a
subscriber that records every message it receives with the time it arrived."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Broker:
    def __init__(self, folder: Path, port: int | None = None):
        self.exe = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.folder / "mosquitto.conf"
        self.conf.write_text("\n".join([
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.folder}/",
            "autosave_interval 1",
            f"log_dest file {self.folder / 'mosquitto.log'}",
            "log_type all",
            "user root" if os.geteuid() == 0 else "",  # as root it would switch to 'mosquitto', who cannot write here
            "",
        ]))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> "Broker":
        assert self.exe, "mosquitto is not installed"
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode(errors='replace')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not listen on {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: closes client sockets, saves the persistence file
            self.proc.wait(timeout=10)
        self.proc = None


class Subscriber:
    """A paho client with a persistent session (clean_session False, fixed id, QoS 1), recording
    (topic, payload, receive time) for each message; reconnects by itself after a broker restart."""

    def __init__(self, port: int, topics, client_id: str = "adtr-test-subscriber"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, float]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.topics = list(topics)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=mqtt.MQTTv311)
        c.on_connect = self._on_connect
        c.on_disconnect = lambda *a: self.connected.clear()
        c.on_message = self._on_message
        c.reconnect_delay_set(0.1, 0.5)
        c.connect_async("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c
        assert self.connected.wait(10), "subscriber could not connect"

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        for t in self.topics:
            client.subscribe(t, qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), time.time()))

    def events(self, topic: str) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic and p]

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        return wait_until(predicate, timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
