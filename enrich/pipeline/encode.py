"""The enriched event (schemas/enriched.v1) as bytes, built without re-encoding the snapshot rows.

An enriched event is the telemetry part (event id, device, car, time, signals) followed by the joined rows
(``car``, ``device``, then one key per child role of the join model) and the join outcome, and the time
the telemetry record reached Kafka (``ingested_at``, its record timestamp). The rows change only when the
snapshot changes, so their JSON is encoded once per merged record (kept in ``Merged.cache``, which lives
as long as the device's timeline stays in the snapshot cache) and spliced in; per event only the telemetry
part is encoded. The bytes are exactly what ``orjson.dumps(enriched_event(...))`` gives (a unit test holds
the two together).

Everything in the bytes comes from the record and the snapshot as of the event's time, so a replay gives
the same bytes; how often a miss was retried before the event left is processing metadata, carried in
the ``enrich-attempts`` Kafka header (only on events that waited).
"""

from __future__ import annotations

from typing import Any, Literal

import orjson

from enrich.asof import Merged, Timeline
from enrich.tables import JoinModel
from enrich.telemetry import Telemetry

JoinStatus = Literal["ok", "partial", "missing"]
Row = dict[str, Any]
Attrs = tuple[Row | None, dict[str, Row | None]]  # the car row and the child rows by role
_dumps = orjson.dumps
_NO_CHILDREN: dict[str, Row | None] = {}


def car_of(merged: Merged | None, model: JoinModel) -> int | None:
    """The car a merged device record points at (None when the device is unknown)."""
    if merged is None:
        return None
    device = merged.rows.get("device")
    if device is None:
        return None
    car = device.get(model.car_key)
    return car if type(car) is int else None


def car_at(timeline: Timeline | None, t: int, model: JoinModel) -> int | None:
    """The car a device belonged to at ``t`` (None when unknown then)."""
    return car_of(timeline.at(t), model) if timeline is not None else None


class Fragment:
    """What an enriched event needs from one merged record, encoded once."""

    __slots__ = ("attrs", "car_id", "car_json", "devices", "key", "rows", "status")

    def __init__(self, merged: Merged | None, model: JoinModel) -> None:
        rows = merged.rows if merged is not None else {}
        device, car = rows.get("device"), rows.get("car")
        self.status: JoinStatus = "missing" if device is None else ("ok" if car is not None else "partial")
        self.car_id = car_of(merged, model)
        self.key = str(self.car_id).encode() if self.car_id is not None else None
        self.car_json = self.key if self.key is not None else b"null"
        children = {c.name: rows.get(c.name) for c in model.children} if model.children else _NO_CHILDREN
        self.attrs: Attrs = (car, children)
        self.devices = merged.devices if merged is not None and car is not None else 0
        position = merged.positions.get("device") if merged is not None else None
        parts = [b',"car":', _dumps(car), b',"device":', _dumps(device)]
        for name, row in children.items():
            parts += [b',"', name.encode(), b'":', _dumps(row)]
        parts += [b',"enrichment":{"status":"', self.status.encode(), b'","snapshot_position":',
                  _dumps(position), b'},"ingested_at":']  # fmt: skip
        self.rows = b"".join(parts)


_escaped: dict[str, bytes] = {}  # device id -> its JSON string body (no quotes); bounded below
_ESCAPED_MAX = 1_000_000


def _escape(device_id: str) -> bytes:
    """The JSON-escaped body of a device id, remembered (the fleet's devices, at most ``_ESCAPED_MAX``)."""
    body = _dumps(device_id)[1:-1]
    if len(_escaped) >= _ESCAPED_MAX:
        _escaped.clear()
    _escaped[device_id] = body
    return body


def fragment(merged: Merged | None, model: JoinModel) -> Fragment:
    """The fragment of ``merged``, encoded on first use and kept with the record."""
    if merged is None:
        return Fragment(None, model)
    frag = merged.cache
    if frag is None:
        frag = merged.cache = Fragment(merged, model)
    return frag  # type: ignore[no-any-return]


def encode(tel: Telemetry, event_id: str | None, frag: Fragment, ingested_at: int | None) -> bytes:
    """The enriched event's bytes (``event_id`` None: the standard ``<device>:<seq>``). When the decoder
    made the signals' JSON (``tel.signals_json``: the native one does) it is spliced, not encoded again."""
    end = b"%d}" % ingested_at if ingested_at is not None else b"null}"
    sj = tel.signals_json
    if sj is not None:
        dev = _escaped.get(tel.device_id)
        if dev is None:
            dev = _escape(tel.device_id)
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
    tel: Telemetry, merged: Merged | None, model: JoinModel, *, ingested_at: int | None
) -> dict[str, Any]:
    """The enriched event as a document (for tests and tools; the flow splices bytes with ``encode``)."""
    doc: dict[str, Any] = orjson.loads(
        encode(tel, f"{tel.device_id}:{tel.seq}", fragment(merged, model), ingested_at)
    )
    return doc
