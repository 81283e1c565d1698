"""The enriched event (schemas/enriched.v1) as bytes, built without re-encoding the snapshot rows.

An enriched event is the telemetry part (event id, device, car, time, signals) followed by the joined rows
and the join outcome. The rows change only when the snapshot changes, so their JSON is encoded once per
merged record (kept in ``Merged.cache``, which lives as long as the record stays in the snapshot cache)
and spliced in; per event only the telemetry part is encoded. The bytes are exactly what
``orjson.dumps(enriched_event(...))`` gives (a unit test holds the two together).
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from enrich.pipeline.roles import Roles
from enrich.snapshot import Merged
from enrich.telemetry import Telemetry

JoinStatus = Literal["ok", "partial", "missing"]
_dumps = orjson.dumps


def join_status(merged: Merged | None, roles: Roles) -> JoinStatus:
    """ok: device and car found; partial: the device but not its car; missing: not the device."""
    if merged is None or merged.rows.get(roles.device) is None:
        return "missing"
    return "ok" if merged.rows.get(roles.car) is not None else "partial"


def car_of(merged: Merged | None, roles: Roles) -> int | None:
    """The car a merged device record points at (None when the device is unknown)."""
    if merged is None:
        return None
    device = merged.rows.get(roles.device)
    if device is None:
        return None
    car = device.get(roles.car_key)
    return car if type(car) is int else None


class Fragment:
    """What an enriched event needs from one merged record, encoded once."""

    __slots__ = ("car", "car_id", "car_json", "key", "reservation", "rows", "status")

    def __init__(self, merged: Merged | None, roles: Roles) -> None:
        rows = merged.rows if merged is not None else {}
        device, car, res = rows.get(roles.device), rows.get(roles.car), rows.get(roles.reservation)
        self.status: JoinStatus = "missing" if device is None else ("ok" if car is not None else "partial")
        self.car_id = car_of(merged, roles)
        self.key = str(self.car_id).encode() if self.car_id is not None else None
        self.car_json = self.key if self.key is not None else b"null"
        self.car, self.reservation = car, res
        position = merged.positions.get(roles.device) if merged is not None else None
        self.rows = b"".join(
            (
                b',"car":',
                _dumps(car),
                b',"device":',
                _dumps(device),
                b',"reservation":',
                _dumps(res),
                b',"enrichment":{"status":"',
                self.status.encode(),
                b'","snapshot_position":',
                _dumps(position),
                b',"attempts":',
            )
        )


_escaped: dict[str, bytes] = {}  # device id -> its JSON string body (no quotes); bounded below


def _escape(device_id: str) -> bytes:
    """The JSON-escaped body of a device id, remembered (the fleet's devices, at most ``_ESCAPED_MAX``)."""
    body = _dumps(device_id)[1:-1]
    if len(_escaped) >= _ESCAPED_MAX:
        _escaped.clear()
    _escaped[device_id] = body
    return body


_ESCAPED_MAX = 1_000_000


def fragment(merged: Merged | None, roles: Roles) -> Fragment:
    """The fragment of ``merged``, encoded on first use and kept with the record."""
    if merged is None:
        return Fragment(None, roles)
    frag = merged.cache
    if frag is None:
        frag = merged.cache = Fragment(merged, roles)
    return frag  # type: ignore[no-any-return]


def tail(attempts: int, now_ms: int) -> bytes:
    """The end of every enriched event of one batch with ``attempts`` (usually 0)."""
    return b'%d},"processed_at":%d}' % (attempts, now_ms)


def encode(
    tel: Telemetry, event_id: str | None, frag: Fragment, end: bytes, signals_json: bytes | None = None
) -> bytes:
    """The enriched event's bytes (``event_id`` None: the standard ``<device>:<seq>``). ``signals_json``
    (default: ``tel.signals_json``, which the native decoder fills) is ``orjson.dumps(tel.signals)``
    already made: spliced instead of encoding again."""
    sj = signals_json if signals_json is not None else tel.signals_json
    if sj is not None:
        dev = _escaped.get(tel.device_id)
        if dev is None:
            dev = _escape(tel.device_id)
        # None: the standard id, "<device>:<seq>"
        eid = b"%b:%d" % (dev, tel.seq) if event_id is None else _dumps(event_id)[1:-1]
        head = b'{"event_id":"%b","device_id":"%b","car_id":%b,"ts":%d,"seq":%d,"signals":' % (
            eid,
            dev,
            frag.car_json,
            tel.ts,
            tel.seq,
        )
        return b"".join((head, sj, frag.rows, end))
    if event_id is None:
        event_id = f"{tel.device_id}:{tel.seq}"
    head = _dumps(
        {
            "event_id": event_id,
            "device_id": tel.device_id,
            "car_id": frag.car_id,
            "ts": tel.ts,
            "seq": tel.seq,
            "signals": tel.signals,
        }
    )
    return b"".join((head[:-1], frag.rows, end))


def enriched_event(
    tel: Telemetry, merged: Merged | None, roles: Roles, *, attempts: int, now_ms: int
) -> dict[str, Any]:
    """The enriched event as a document (for tests and tools; the flow splices bytes with ``encode``)."""
    doc: dict[str, Any] = orjson.loads(
        encode(tel, f"{tel.device_id}:{tel.seq}", fragment(merged, roles), tail(attempts, now_ms))
    )
    return doc
