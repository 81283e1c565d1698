"""Server-sent events of state changes and incidents, fanned out from the change stream.

One ``Broker`` task per process reads the change stream (one blocking XREAD at a time, whatever the number
of clients). Clients with the same interest — the same key and the same vehicle, or the same key and fleet
filter — form a group; per stream entry, the broker fetches the documents any group wants in one MGET,
renders each group's SSE text once and hands the same bytes to every client of the group.

Event ids are ``<stream entry id>.<n>`` (n = index of the event within the entry for that client). A
client that reconnects with ``Last-Event-ID`` first replays the retained entries after it (skipping the
events of the same entry it already has), then continues live. When the id is older than what the stream
retains, the client gets a ``reset`` event first: events were lost, re-read the state. A client that reads
too slowly (its queue fills) is disconnected and resumes the same way.

Authorisation per event: ``vehicles:Get``/``incidents:Get`` for a vehicle's stream, ``vehicles:List``/
``incidents:List`` for a fleet stream — decided per tag class, cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import orjson

from api.policy import Policies
from stores.apikeys import ApiKey
from stores.vehicles import Change, Tags, VehicleReader
from stores.vehicles.model import stream_id_after

log = logging.getLogger(__name__)
QUEUE_MAX = 512
HEARTBEAT_S = 15.0
REVALIDATE_S = 5.0
MAX_REPLAY = 5000


@dataclass(frozen=True, slots=True)
class Interest:
    key: ApiKey = field(compare=False, hash=False)
    car_id: int | None = None  # one vehicle's stream
    fleet: str | None = None  # the fleet stream's filter (None: every vehicle the key may list)
    key_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key_id", self.key.id)


@dataclass(eq=False)
class Client:
    interest: Interest
    queue: asyncio.Queue[tuple[str, bytes] | None] = field(default_factory=lambda: asyncio.Queue(QUEUE_MAX))


def stream_id_before(eid: str) -> str:
    ms, _, seq = eid.partition("-")
    if int(seq or 0) > 0:
        return f"{ms}-{int(seq) - 1}"
    return f"{int(ms) - 1}-18446744073709551615" if int(ms) > 0 else "0-0"


class Broker:
    def __init__(self, reader: VehicleReader, policies: Policies, block_ms: int = 1000) -> None:
        self.reader = reader
        self.policies = policies
        self.block_ms = block_ms
        self.groups: dict[Interest, set[Client]] = {}
        self.position: str | None = None
        self.overflows = 0
        self._task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        _first, last = await self.reader.change_bounds()
        self.position = last or "0-0"
        self._task = asyncio.create_task(self._run(), name="sse-broker")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def clients(self) -> int:
        return sum(len(c) for c in self.groups.values())

    async def _run(self) -> None:
        while True:
            try:
                changes = await self.reader.changes(self.position, count=200, block_ms=self.block_ms)
                if changes and self.groups:
                    await self._dispatch(changes)
                if changes:
                    self.position = changes[-1].id
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis away: keep trying, clients stay connected
                log.warning("change stream: %s", exc)
                await asyncio.sleep(1.0)

    # -- rendering -------------------------------------------------------------------------------------
    async def render(
        self,
        interest: Interest,
        change: Change,
        docs: dict[int, bytes],
        classes: dict[str, Tags],
        skip: int = -1,
    ) -> bytes:
        """The SSE text of one stream entry for one interest (events with index <= ``skip`` left out)."""
        parts: list[bytes] = []
        n = 0
        vehicle_action = "vehicles:Get" if interest.car_id is not None else "vehicles:List"
        incident_action = "incidents:Get" if interest.car_id is not None else "incidents:List"
        for car, _version, cid in change.states:
            if not self._wants(interest, car, cid, vehicle_action, classes) or car not in docs:
                continue
            if n > skip:
                parts.append(b"id: %s.%d\nevent: state\ndata: %s\n\n" % (change.id.encode(), n, docs[car]))
            n += 1
        for inc in change.incidents:
            if not self._wants(interest, int(inc["car_id"]), str(inc["cid"]), incident_action, classes):
                continue
            if n > skip:
                data = orjson.dumps({k: v for k, v in inc.items() if k != "cid"})
                parts.append(b"id: %s.%d\nevent: incident\ndata: %s\n\n" % (change.id.encode(), n, data))
            n += 1
        return b"".join(parts)

    def _wants(self, interest: Interest, car: int, cid: str, action: str, classes: dict[str, Tags]) -> bool:
        if interest.car_id is not None and car != interest.car_id:
            return False
        tags = classes.get(cid)
        if tags is None:
            return False
        if interest.fleet is not None and tags.get("fleet") != interest.fleet:
            return False
        return self.policies.decide(interest.key, action, tags)  # type: ignore[arg-type]

    def _wanted(self, interests: list[Interest], change: Change, classes: dict[str, Tags]) -> set[int]:
        wanted: set[int] = set()
        for interest in interests:
            action = "vehicles:Get" if interest.car_id is not None else "vehicles:List"
            for car, _v, cid in change.states:
                if car not in wanted and self._wants(interest, car, cid, action, classes):
                    wanted.add(car)
        return wanted

    async def _fetch(
        self, interests: list[Interest], changes: list[Change]
    ) -> tuple[dict[str, Tags], dict[int, bytes]]:
        """The class registry and the documents any of ``interests`` wants from the entries of one read,
        fetched once for all of them (two round trips, however many entries: a busy flow writes many small
        entries, and a round trip per entry let a loaded API fall seconds behind); each car's document is
        its newest."""
        classes = await self.reader.classes()  # a new class is seen at once (registry size)
        wanted: set[int] = set()
        for change in changes:
            wanted |= self._wanted(interests, change, classes)
        return classes, await self.reader.docs(sorted(wanted))

    async def _dispatch(self, changes: list[Change]) -> None:
        """Hand the entries of one read to every group (``_fetch``: two round trips per read)."""
        groups = list(self.groups.items())
        classes, docs = await self._fetch([i for i, _ in groups], changes)
        for change in changes:
            for interest, clients in groups:
                text = await self.render(interest, change, docs, classes)
                if not text:
                    continue
                for client in list(clients):
                    try:
                        client.queue.put_nowait((change.id, text))
                    except asyncio.QueueFull:
                        self.overflows += 1
                        clients.discard(client)
                        client.queue = asyncio.Queue(1)
                        client.queue.put_nowait(None)  # tells the client's stream to end

    # -- one client ------------------------------------------------------------------------------------
    async def stream(
        self,
        interest: Interest,
        last_event_id: str | None,
        still_valid: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[bytes]:
        """One client's event stream. ``still_valid`` is asked every ``REVALIDATE_S``: a revoked or expired
        key ends the stream."""
        client = Client(interest)
        checked = time.monotonic()
        self.groups.setdefault(interest, set()).add(client)
        try:
            yield b"retry: 2000\n\n"
            replayed = None
            if last_event_id is not None:
                async for chunk, upto in self._replay(interest, last_event_id):
                    replayed = upto
                    if chunk:
                        yield chunk
            while True:
                if still_valid is not None and time.monotonic() - checked > REVALIDATE_S:
                    if not await still_valid():
                        return
                    checked = time.monotonic()
                try:
                    item = await asyncio.wait_for(client.queue.get(), min(HEARTBEAT_S, REVALIDATE_S))
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if item is None:
                    return
                eid, text = item
                if replayed is not None and not stream_id_after(eid, replayed):
                    continue  # already sent by the replay
                yield text
        finally:
            group = self.groups.get(interest)
            if group is not None:
                group.discard(client)
                if not group:
                    del self.groups[interest]

    async def _replay(self, interest: Interest, last_event_id: str) -> AsyncIterator[tuple[bytes, str]]:
        eid, _, idx = last_event_id.partition(".")
        try:
            skip = int(idx) if idx else 10**9
            stream_id_before(eid)
        except ValueError:
            yield b'event: reset\ndata: {"reason": "unknown Last-Event-ID"}\n\n', self.position or "0-0"
            return
        first, _last = await self.reader.change_bounds()
        after = stream_id_before(eid)
        if first is None or stream_id_after(first, eid):
            yield (
                b'event: reset\ndata: {"reason": "events after Last-Event-ID are no longer retained"}\n\n',
                after,
            )
        sent = 0
        while sent < MAX_REPLAY:
            changes = await self.reader.changes(after, count=100)
            if not changes:
                return
            classes, docs = await self._fetch([interest], changes)  # once per read, as the live dispatch
            for change in changes:
                text = await self.render(interest, change, docs, classes, skip if change.id == eid else -1)
                after = change.id
                sent += 1
                yield text, after
        yield b'event: reset\ndata: {"reason": "too many events to replay"}\n\n', after
