"""The snapshot store in Redis (``enrich.snapshot`` semantics; wire format: ``stores.snapshot_codec``).

**One Redis**: a batch of changes is one ``APPLY_LUA`` call per ``chunk`` (rows, the cars' indexes and the
change feed, atomically); a lookup of many devices is one ``LOOKUP_LUA`` call.

**Redis Cluster** (the client is a ``redis.RedisCluster``): every key a script touches carries one hash
tag — the row's, or the car's for its indexes — so the work is split per slot and pipelined:
``APPLY_LUA`` in mode ``rows`` once per slot of the batch's rows (the truncate floors read first and
passed in), then ``INDEX_LUA`` once per slot of the cars whose indexes change, then the feed entry. A
crash between the steps is repaired by the replay of the batch (a replayed row restates its index entry;
the feed gets every change of the batch, applied or not — an extra invalidation is harmless). Lookups
read slot by slot with plain pipelined commands (devices; then cars and their indexes; then the rows in
the indexes), three round trips.

Outages: the store makes its client wait through a Redis restart (``stores.redis_client.ensure_retrying``:
unlimited retries with backoff, the calling worker blocks meanwhile); scripts reload themselves after
``NOSCRIPT``. A batch retried after a lost reply is harmless: every write is position-checked.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Generator, Iterable, Sequence
from typing import Any, NamedTuple

import orjson
import redis
from redis.crc import key_slot

from enrich.asof import Gathered, History, Timeline, build_timeline, parents_of
from enrich.cdc import Change
from enrich.settings import Settings
from enrich.snapshot import (
    DEFAULT_HORIZON_MS,
    DEFAULT_MAX_VERSIONS,
    ApplyResult,
    StoredRow,
    in_apply_order,
    stale_members,
)
from enrich.tables import ChildRole, JoinModel, load_model
from stores import snapshot_codec as codec
from stores.redis_client import ensure_retrying
from stores.snapshot_scripts import APPLY_LUA, INDEX_LUA, LOOKUP_LUA

_OPS = {"upsert": "u", "delete": "d", "truncate": "t"}


class _TablePlan(NamedTuple):
    via: str | None  # the column naming the car (tables the car indexes)
    child: ChildRole | None
    flags: str  # 'L' for a child chosen "latest"


def _plans(model: JoinModel) -> dict[str, _TablePlan]:
    out = {}
    for table in model.tables:
        child = model.child(table)
        latest = child is not None and child.choose.by == "latest"
        out[table] = _TablePlan(model.via_of(table), child, "L" if latest else "")
    return out


def change_args(plans: dict[str, _TablePlan], ch: Change) -> list[str | int | bytes]:
    """The ``CHANGE_FIELDS`` ARGV fields of one change (``enrich.snapshot.index_entry``, inlined)."""
    plan = plans[ch.table]
    flags = ("l" + plan.flags) if ch.load else plan.flags
    row = ch.row
    commit = ch.commit_ms
    if ch.op == "upsert":
        body = orjson.dumps(row)
        op = "u"
    else:
        body = b""
        op = "d" if ch.op == "delete" else "t"
        row = None
    via = plan.via
    if via is None or op == "t":
        return [ch.table, ch.pk, op, ch.position, commit, flags, "", "", b"%d\x1f\x1f%s" % (commit, body)]
    parent = row.get(via) if row is not None else None
    if parent is None:
        return [ch.table, ch.pk, op, ch.position, commit, flags, "", "0", b"%d\x1f\x1f%s" % (commit, body)]
    car = str(parent)
    child = plan.child
    until = "+inf" if child is None else codec.score_arg(child.choose.until(row))  # type: ignore[arg-type]
    return [
        ch.table,
        ch.pk,
        op,
        ch.position,
        commit,
        flags,
        car,
        until,
        codec.version_value(commit, car, body),
    ]


def lookup_args(model: JoinModel, prefix: str, pks: list[str]) -> list[str]:
    kids = [c.table for c in model.children]
    return [prefix, model.car, model.device, str(len(kids)), *kids, *pks]


def _pairs(flat: Sequence[Any]) -> dict[str, History]:
    return {codec.text(flat[i]): codec.decode_history(flat[i + 1]) for i in range(0, len(flat), 2)}


def decode_lookup(model: JoinModel, raw: Any, pks: list[str]) -> dict[str, Gathered]:
    """What ``LOOKUP_LUA`` gathered, per device (used by the sync store and the API's async reader)."""
    tables = [model.device, model.car, *(c.table for c in model.children)]
    truncs = {t: tr for t, r in zip(tables, raw[0], strict=True) if (tr := codec.decode_trunc(r)) is not None}
    out: dict[str, Gathered] = {}
    for pk, entry in zip(pks, raw[1:], strict=True):
        g = Gathered(root=codec.decode_history(entry[0]), truncs=truncs)
        for car_entry in entry[1:]:
            car = codec.text(car_entry[0])
            g.cars[car] = codec.decode_history(car_entry[1])
            g.devices[car] = _pairs(car_entry[2])
            g.children[car] = {c.name: _pairs(car_entry[3 + i]) for i, c in enumerate(model.children)}
        out[pk] = g
    return out


GatherPlan = Generator[list[tuple[str, ...]], list[Any], dict[str, Gathered]]


def cluster_gather_plan(model: JoinModel, prefix: str, pks: list[str]) -> GatherPlan:
    """The reads of a lookup on Redis Cluster, slot by slot: yields the commands of each round trip (to
    be pipelined) and receives their replies; returns what was gathered per device. Used by the sync
    store and the API's async reader alike."""
    tables = [model.device, model.car, *(c.table for c in model.children)]
    first: list[tuple[str, ...]] = [("GET", codec.trunc_key(prefix, t)) for t in tables]
    first += [("HGETALL", codec.row_key(prefix, model.device, pk)) for pk in pks]
    raw = yield first
    truncs = {t: tr for t, r in zip(tables, raw, strict=False) if (tr := codec.decode_trunc(r)) is not None}
    out = {pk: Gathered(root=codec.decode_history(flat), truncs=truncs)
           for pk, flat in zip(pks, raw[len(tables):], strict=True)}  # fmt: skip
    cars = sorted({car for g in out.values() for car in parents_of(g.root)})
    indexed = [model.device, *(c.table for c in model.children)]
    commands: list[tuple[str, ...]] = []
    for car in cars:
        commands.append(("HGETALL", codec.row_key(prefix, model.car, car)))
        commands += [("ZRANGE", codec.index_key(prefix, model.car, car, t), "0", "-1") for t in indexed]
    raw = yield commands
    width = 1 + len(indexed)
    car_rows: dict[str, History] = {}
    members: dict[tuple[str, str], list[str]] = {}
    for n, car in enumerate(cars):
        car_rows[car] = codec.decode_history(raw[n * width])
        for k, t in enumerate(indexed):
            members[(car, t)] = [codec.text(m) for m in raw[n * width + 1 + k]]
    order = sorted({(t, m) for (_car, t), ms in members.items() for m in ms})
    raw = yield [("HGETALL", codec.row_key(prefix, t, m)) for t, m in order] if order else []
    histories = dict(zip(order, (codec.decode_history(f) for f in raw), strict=True))
    for pk, g in out.items():
        for car in parents_of(g.root):
            g.cars[car] = car_rows.get(car, [])
            g.devices[car] = {d: histories[(model.device, d)]
                              for d in members.get((car, model.device), []) if d != pk}  # fmt: skip
            g.children[car] = {c.name: {k: histories[(c.table, k)] for k in members.get((car, c.table), [])}
                               for c in model.children}  # fmt: skip
    return out


class RedisSnapshotStore:
    """``SnapshotStore`` on Redis or Redis Cluster (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        model: JoinModel,
        *,
        prefix: str = "snap:",
        tombstone_ttl_s: int = 7 * 86400,
        feed_maxlen: int = 100_000,
        chunk: int = 2000,
        horizon_ms: int = DEFAULT_HORIZON_MS,
        max_versions: int = DEFAULT_MAX_VERSIONS,
    ) -> None:
        self.cluster = isinstance(client, redis.RedisCluster)
        self.client: Any = client if self.cluster else ensure_retrying(client)  # type: ignore[arg-type]
        self.model = model
        self.tables = model.tables
        self.prefix = prefix
        self.tombstone_ttl_s = tombstone_ttl_s
        self.feed_maxlen = feed_maxlen
        self.chunk = chunk
        self.horizon_ms = horizon_ms
        self.max_versions = max_versions
        self._plans = _plans(model)
        self._apply = client.register_script(APPLY_LUA)
        self._index = client.register_script(INDEX_LUA)
        self._lookup = client.register_script(LOOKUP_LUA)
        if self.cluster:
            self._load_scripts()

    def _load_scripts(self) -> None:
        """Cluster pipelines call scripts by hash: make every primary know them (again, after NOSCRIPT)."""
        for src in (APPLY_LUA, INDEX_LUA):
            self.client.script_load(src)

    def _run_pipeline(self, calls: list[tuple[str, str, list[Any]]]) -> list[Any]:
        """Cluster: EVALSHA calls (sha, key, args) pipelined; routed by their key's slot."""
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for sha, key, args in calls:
                pipe.execute_command("EVALSHA", sha, 1, key, *args)
            try:
                return pipe.execute()  # type: ignore[no-any-return]
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self._load_scripts()
        raise AssertionError("unreachable")

    @classmethod
    def from_settings(
        cls, settings: Settings, client: Any, model: JoinModel | None = None
    ) -> RedisSnapshotStore:
        """The store the settings describe (their tables file unless ``model`` is given)."""
        return cls(client, model or load_model(settings.tables_file), prefix=settings.snapshot_prefix,
                   tombstone_ttl_s=settings.snapshot_tombstone_ttl_s,
                   horizon_ms=int(settings.snapshot_horizon_s * 1000),
                   max_versions=settings.snapshot_max_versions)  # fmt: skip

    @property
    def feed_key(self) -> str:
        return codec.feed_key(self.prefix)

    def _head(self, mode: str, floors: str = "", feed: str = "") -> list[str | int | bytes]:
        return [self.prefix, self.tombstone_ttl_s, self.feed_maxlen, self.horizon_ms, self.max_versions,
                self.model.car, mode, floors, feed]  # fmt: skip

    # -- writes ----------------------------------------------------------------------------------------
    def apply(self, changes: Sequence[Change]) -> ApplyResult:
        ordered = in_apply_order(changes)
        result = ApplyResult(stale=len(changes) - len(ordered))
        if self.cluster:
            flags = self._apply_cluster(ordered)
        else:
            flags = ""
            plans = self._plans
            for start in range(0, len(ordered), self.chunk):
                args: list[str | int | bytes] = []
                feed = []  # a line per change, applied or not: the feed entry is written with the batch
                for ch in ordered[start : start + self.chunk]:
                    fields = change_args(plans, ch)
                    args += fields
                    feed.append(f"{ch.table}\t{ch.pk}\t{fields[6]!s}")
                reply = self._apply(args=self._head("all", "", "\n".join(feed)) + args)
                flags += reply.decode() if isinstance(reply, bytes) else str(reply)
        if len(flags) != len(ordered):
            raise RuntimeError(f"the apply script answered {len(flags)} flags for {len(ordered)} changes")
        applied = flags.count("1")
        result.applied += applied
        result.stale += len(ordered) - applied
        return result

    def _apply_cluster(self, ordered: list[Change]) -> str:
        flags: dict[int, str] = {}
        feed: list[str] = []
        segment: list[int] = []
        for i, ch in enumerate(ordered):
            if ch.op == "truncate":
                self._cluster_rows(ordered, segment, flags)
                segment = []
                key = codec.trunc_key(self.prefix, ch.table)
                (reply,) = self._run_pipeline(
                    [(self._apply.sha, key, self._head("rows") + change_args(self._plans, ch))]
                )
                flags[i] = codec.text(reply[0])
            else:
                segment.append(i)
            feed.append(f"{ch.table}\t{ch.pk}\t{change_args(self._plans, ch)[6]!s}")
        self._cluster_rows(ordered, segment, flags)
        if feed:
            self.client.xadd(self.feed_key, {"c": "\n".join(feed)}, maxlen=self.feed_maxlen, approximate=True)
        return "".join(flags[i] for i in range(len(ordered)))

    def _cluster_rows(self, ordered: list[Change], todo: list[int], flags: dict[int, str]) -> None:
        if not todo:
            return
        tables = sorted({ordered[i].table for i in todo})
        pipe = self.client.pipeline(transaction=False)
        for t in tables:
            pipe.get(codec.trunc_key(self.prefix, t))
        floors = codec.US.join(
            f"{t}{codec.US}{tr.position if (tr := codec.decode_trunc(raw)) else ''}"
            for t, raw in zip(tables, pipe.execute(), strict=True)
        )
        by_slot: dict[int, list[int]] = defaultdict(list)
        for i in todo:
            ch = ordered[i]
            by_slot[key_slot(codec.row_key(self.prefix, ch.table, ch.pk).encode())].append(i)
        groups = list(by_slot.values())
        calls = []
        for group in groups:
            first = ordered[group[0]]
            args = self._head("rows", floors)
            for i in group:
                args += change_args(self._plans, ordered[i])
            calls.append((self._apply.sha, codec.row_key(self.prefix, first.table, first.pk), args))
        index_ops: dict[int, list[Any]] = defaultdict(list)
        for group, reply in zip(groups, self._run_pipeline(calls), strict=True):
            for i, flag in zip(group, codec.text(reply[0]), strict=True):
                flags[i] = flag
            ops = [codec.text(x) for x in reply[1:]]
            for j in range(0, len(ops), 6):
                car = ops[j]
                slot = key_slot(codec.index_key(self.prefix, self.model.car, car, ops[j + 1]).encode())
                index_ops[slot] += ops[j : j + 6]
        if index_ops:
            self._run_pipeline([
                (self._index.sha, codec.index_key(self.prefix, self.model.car, ops[0], ops[1]),
                 [self.prefix, self.horizon_ms, self.model.car, *ops])
                for ops in index_ops.values()
            ])  # fmt: skip

    # -- reads -----------------------------------------------------------------------------------------
    def history(self, table: str, pk: str) -> History:
        return codec.decode_history(self.client.hgetall(codec.row_key(self.prefix, table, pk)))

    def _floor(self, table: str) -> str:
        tr = codec.decode_trunc(self.client.get(codec.trunc_key(self.prefix, table)))
        return tr.position if tr is not None else ""

    def get(self, table: str, pk: str) -> StoredRow | None:
        history = self.history(table, pk)
        if not history or history[-1].position <= self._floor(table):
            return None
        return StoredRow(history[-1].row, history[-1].position)

    def rows(self, table: str) -> dict[str, dict[str, Any]]:
        floor = self._floor(table)
        keys = list(self.client.scan_iter(match=codec.row_pattern(self.prefix, table), count=2000))
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), 2000):
            part = keys[start : start + 2000]
            pipe = self.client.pipeline(transaction=False)
            for key in part:
                pipe.hgetall(key)
            for key, flat in zip(part, pipe.execute(), strict=True):
                history = codec.decode_history(flat)
                if history and history[-1].row is not None and history[-1].position > floor:
                    out[codec.pk_of_row_key(self.prefix, table, key)] = history[-1].row
        return out

    def gather(self, pks: list[str], *, tidy: bool = True) -> dict[str, Gathered]:
        """What the timelines of ``pks`` need; with ``tidy``, index entries whose row keeps no version
        pointing at the car are dropped from the index (``enrich.snapshot.stale_members``)."""
        if not pks:
            return {}
        if not self.cluster:
            args = lookup_args(self.model, self.prefix, pks)
            out = decode_lookup(self.model, self._lookup(args=args), pks)
        else:
            out = self._gather_cluster(pks)
        if tidy:
            stale = {s for g in out.values() for s in stale_members(self.model, g)}
            if stale:
                pipe = self.client.pipeline(transaction=False)
                for car, table, member in stale:
                    pipe.zrem(codec.index_key(self.prefix, self.model.car, car, table), member)
                pipe.execute()
        return out

    def _gather_cluster(self, pks: list[str]) -> dict[str, Gathered]:
        plan = cluster_gather_plan(self.model, self.prefix, pks)
        commands = next(plan)
        while True:
            pipe = self.client.pipeline(transaction=False)
            for cmd in commands:
                pipe.execute_command(*cmd)
            try:
                commands = plan.send(pipe.execute())
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    def lookup(self, pks: Iterable[str]) -> dict[str, Timeline]:
        keys = list(dict.fromkeys(pks))
        return {pk: build_timeline(self.model, pk, g) for pk, g in self.gather(keys).items()}
