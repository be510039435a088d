"""The stream's summary as a few aligned lines for a terminal (``run_stream`` prints it).

The summary dict itself is built by ``Pipeline.summary``: totals at the top (the single-source
keys), ``sources`` per source, backend counters (a remote backend's reconnects and gaps) and what
sinks add through ``Sink.summary`` (``delivery``). This module only renders it.
"""

from __future__ import annotations

__all__ = ["format_summary"]


def format_summary(s: dict) -> str:
    """The summary as a few aligned lines for a terminal."""
    per = s.get("sources") or {}
    lat = s.get("latency_ms") or {}
    lines = [
        f"source      {s['source']}  (backend {s['backend']}, threshold {s['threshold']:.6g})",
        f"frames      {s['frames']}  anomalous {s['anomalous']}  drops {s['drops']}  corrupt {s['corrupt']}  reconnects {s['reconnects']}",
        *([f"backend     {s['backend_reconnects']} reconnect(s), {s['backend_gap_s']:.2f} s without inference"]
          if s.get("backend_reconnects") or s.get("backend_gap_s") else []),
        f"throughput  {s['fps'] or 0:.2f} FPS over {s['wall_s']:.2f} s  (stopped by {s['stopped_by']})",
        f"alarms      {s['alarms']} (>= {s['min_consecutive']} consecutive anomalous frames)",
    ]
    if lat.get("count"):
        lines.append(f"latency     p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms  (capture to result)")
    if len(per) > 1:
        for name, p in per.items():
            lines.append(f"  {name:<12}frames {p['frames']}  anomalous {p['anomalous']}  drops {p['drops']}  "
                         f"reconnects {p['reconnects']}  alarms {p['alarms']}  ({p['ended_by']})")
    for name, p in per.items():  # the camera watch (frame_quality): when a source's exposure or focus left the normals' range
        for c in p.get("camera") or []:
            what = {"grey": "exposure", "sharpness": "focus"}.get(c["measure"], c["measure"])
            state = "changed" if c["event"] == "camera_drift" else "back as in training"
            lines.append(f"camera      {name}: {what} {state} at frame {c['frame']}")
    lines.append("stage ms    " + "mean / p50 / p95")
    for name, st in s["stages_ms"].items():
        if st["count"]:
            lines.append(f"  {name:<12}{st['mean']:9.2f} {st['p50']:9.2f} {st['p95']:9.2f}")
    for name, d in s.get("delivery", {}).items():  # the MQTT / webhook sinks (runtime/delivery)
        lines.append(f"delivery    {name}: delivered {d['delivered']}  backlog {d['backlog']}  dropped {d['dropped']}  (spool {d['spool']})")
    for sw in s.get("swaps") or []:  # models switched in while the stream ran
        lines.append(f"model swap  {sw['from'].get('digest')} -> {sw['to'].get('digest')} ({sw['to'].get('path')}) after "
                     f"{sw['frames_before']} frames, loaded in {sw['load_s']:.2f} s, threshold {sw['threshold']:.6g}")
    for err in s["errors"]:
        lines.append(f"error       {err}")
    return "\n".join(lines)
