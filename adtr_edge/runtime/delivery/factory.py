"""The delivery sinks the ``stream`` options ask for, each with its own spool file in one folder."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import List, Optional

from ...errors import AdtrError
from ..sinks import Sink
from .spool import Spool

DEFAULT_SPOOL_MB = 64.0


def default_spool_dir() -> Path:
    """``$XDG_STATE_HOME/adtr-edge/spool`` (``~/.local/state/...``): state that must outlive a
    run, but is no one's document."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "adtr-edge" / "spool"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")[:60] or "x"


def spool_file(folder: Path, kind: str, destination: str) -> Path:
    """One file per destination (an MQTT broker and its topics, a webhook URL), so events spooled
    for one never go to another; readable name plus a short hash of the full destination."""
    digest = hashlib.sha256(destination.encode()).hexdigest()[:8]
    return folder / f"{kind}-{_slug(destination)}-{digest}.sqlite"


def delivery_sinks(*, mqtt: Optional[str] = None, mqtt_frames: bool = False, webhook: Optional[str] = None,
                   spool: Optional[os.PathLike] = None, spool_max_mb: float = DEFAULT_SPOOL_MB, **sink_options) -> List[Sink]:
    """Sinks for ``--mqtt URL [--mqtt-frames]`` and ``--webhook URL``, spooling in ``spool``
    (default: ``default_spool_dir()``) with at most ``spool_max_mb`` of events per destination.
    Validates everything before anything connects; ``sink_options`` go to each sink (tests: drain_s)."""
    if mqtt_frames and not mqtt:
        raise AdtrError("--mqtt-frames needs --mqtt URL")
    if not mqtt and not webhook:
        return []
    if not spool_max_mb > 0:
        raise AdtrError(f"--spool-max-mb must be > 0, got {spool_max_mb:g}")
    folder = Path(spool) if spool is not None else default_spool_dir()
    if folder.exists() and not folder.is_dir():
        raise AdtrError(f"--spool {folder}: is a file, not a folder")
    max_bytes = int(spool_max_mb * 2**20)
    sinks: List[Sink] = []
    try:
        if mqtt:
            from .mqtt import MqttSink, _paho, parse_mqtt_url

            target = parse_mqtt_url(mqtt)
            _paho()  # a missing library is an error before a spool file appears
            # A spooled row holds the event, not its topic (the sender picks it): a spool shared
            # by two topic sets would publish one run's backlog under the next run's topics.
            dest = f"{target.host}:{target.port}/{target.topics['alarms']}|{target.topics['frames']}"
            sinks.append(MqttSink(target, Spool(spool_file(folder, "mqtt", dest), max_bytes), frames=mqtt_frames, **sink_options))
        if webhook:
            from .webhook import WebhookSink, check_webhook_url

            check_webhook_url(webhook)
            sinks.append(WebhookSink(webhook, Spool(spool_file(folder, "webhook", webhook), max_bytes), **sink_options))
    except BaseException:
        for s in sinks:
            s.close()
        raise
    return sinks
