"""The snapshot store: recent versions of every row of the CDC tables, never moving backwards.

Semantics (shared by the Redis store in ``stores/`` and the in-memory twin below, and tested against both):

* every row keeps its **versions** in source-position order (``enrich.asof.Version``); a change whose
  position is ≤ the row's newest is ignored, so duplicates and out-of-order redelivery never roll a row
  back (within one batch, a row's changes are applied in position order first);
* a version is valid from its source commit time (made non-decreasing along positions; 0 for a row's
  first version when it comes from an initial load). A row keeps at most ``max_versions`` versions and
  drops the ones no time within ``horizon_ms`` of its newest change needs (like Kafka Streams' versioned
  stores, but ordered by source position);
* a delete is a version without a row: the row is gone from then on, and its position keeps a late,
  older upsert from resurrecting it (the Redis store lets a row whose newest version is a delete expire
  after ``tombstone_ttl_s``);
* a truncate records its position and time for the table: rows at or before it are gone from then on,
  changes at or before it are ignored;
* the car keeps an **index** per table that points at it (its devices, and each child table): the rows
  that did within the history, each with the time until which it can still be chosen while it stays
  with the car (``Choice.until``; rows chosen "latest" until a sibling changes after them). When a row of
  an index stops being chosen (at one in ``PRUNE_EVERY`` such endings, picked by its time), the entries
  whose time is older than the horizon are dropped, so a car's index holds its recent children, not all
  it ever had. A row that moves to another car (rare: a device swap) is not written to its old car's
  index — the versions tell a lookup where it was when —, and a lookup drops an entry whose row keeps no
  version pointing at the car (``stale_members``);
* ``lookup`` returns, per device, its ``Timeline``: the merged device + car + chosen children record as
  of any time (``enrich.asof``), gathered in one call.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from enrich.asof import Gathered, History, Timeline, Truncate, Version, build_timeline, parents_of
from enrich.cdc import Change
from enrich.tables import JoinModel

INF = float("inf")
DEFAULT_HORIZON_MS = 24 * 3600 * 1000
DEFAULT_MAX_VERSIONS = 16
PRUNE_EVERY = 16  # an index is pruned at one in this many row endings (chosen by the ending's time)


@dataclass(frozen=True, slots=True)
class StoredRow:
    row: dict[str, Any] | None  # None: deleted (tombstone)
    position: str


@dataclass(slots=True)
class ApplyResult:
    applied: int = 0
    stale: int = 0  # position ≤ the row's newest (duplicate or out of order)


class SnapshotStore(Protocol):
    model: JoinModel

    def apply(self, changes: Sequence[Change]) -> ApplyResult: ...

    def get(self, table: str, pk: str) -> StoredRow | None: ...

    def history(self, table: str, pk: str) -> History: ...

    def lookup(self, pks: Iterable[str]) -> dict[str, Timeline]: ...

    def rows(self, table: str) -> dict[str, dict[str, Any]]: ...


def in_apply_order(changes: Sequence[Change]) -> list[Change]:
    """The order a batch is applied in: each row's changes by position (so a reordering within the batch
    loses no version), exact duplicates once, truncates where they stand relative to their table."""
    out: list[Change] = []
    run: list[Change] = []
    for ch in changes:
        if ch.op == "truncate":
            out += _sorted_run(run)
            run = []
            out.append(ch)
        else:
            run.append(ch)
    return out + _sorted_run(run)


def _sorted_run(run: list[Change]) -> list[Change]:
    rows: dict[tuple[str, str], list[Change]] = {}
    for ch in run:
        same = rows.get((ch.table, ch.pk))
        if same is None:
            rows[(ch.table, ch.pk)] = [ch]
        else:
            same.append(ch)
    if len(rows) == len(run):  # the common case: one change per row
        return run
    out: list[Change] = []
    for same in rows.values():
        if len(same) > 1:
            out += sorted({ch.position: ch for ch in same}.values(), key=lambda c: c.position)
        else:
            out += same
    return out


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """What a change means for the car's index of its table (see the module docstring)."""

    parent: str | None  # the car the new version points at (None: none, or a delete)
    until: float  # the row can be chosen under ``parent`` until the later of this and the version's since
    latest: bool  # a "latest" child: it supersedes its siblings from its own time on


def index_entry(model: JoinModel, ch: Change) -> IndexEntry | None:
    """The index entry of a change of a table the car indexes (None for other tables)."""
    via = model.via_of(ch.table)
    if via is None:
        return None
    row = ch.row if ch.op == "upsert" else None
    value = row.get(via) if row is not None else None
    if row is None or value is None:
        return IndexEntry(None, 0.0, False)
    child = model.child(ch.table)
    if child is None:  # a device: counts for its car while it points at it
        return IndexEntry(str(value), INF, False)
    return IndexEntry(str(value), child.choose.until(row), child.choose.by == "latest")


def stale_members(model: JoinModel, g: Gathered) -> list[tuple[str, str, str]]:
    """(car, table, pk) of the index entries a lookup found whose row keeps no version pointing at the
    car: it moved away (or was deleted) before the kept history began. They can never be chosen for the
    car again, so the lookup drops them from its index."""
    out = []
    for car, devices in g.devices.items():
        out += [(car, model.device, d) for d, h in devices.items() if not _points_at(h, car)]
    for car, roles in g.children.items():
        for child in model.children:
            out += [
                (car, child.table, k) for k, h in roles.get(child.name, {}).items() if not _points_at(h, car)
            ]
    return out


def _points_at(history: History, car: str) -> bool:
    return any(v.parent == car for v in history)


class InMemorySnapshotStore:
    """The in-memory twin of the Redis snapshot store (same semantics; for unit tests and tools)."""

    def __init__(
        self,
        model: JoinModel,
        *,
        tombstone_ttl_s: float = 7 * 86400,
        horizon_ms: int = DEFAULT_HORIZON_MS,
        max_versions: int = DEFAULT_MAX_VERSIONS,
    ) -> None:
        self.model = model
        self.tables = model.tables
        self.tombstone_ttl_s = tombstone_ttl_s
        self.horizon_ms = horizon_ms
        self.max_versions = max_versions
        self._rows: dict[str, dict[str, History]] = {t: {} for t in model.tables}
        self._truncated: dict[str, Truncate] = {}
        # (car pk, table) -> row pk -> until when it can be chosen
        self._index: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        self._indexed_by: dict[tuple[str, str], str | None] = {}  # (table, pk) -> car of its newest version

    def _floor(self, table: str) -> str:
        tr = self._truncated.get(table)
        return tr.position if tr is not None else ""

    def apply(self, changes: Sequence[Change]) -> ApplyResult:
        ordered = in_apply_order(changes)
        result = ApplyResult(stale=len(changes) - len(ordered))  # exact duplicates within the batch
        for ch in ordered:
            if self._apply_one(ch):
                result.applied += 1
            else:
                result.stale += 1
        return result

    def _apply_one(self, ch: Change) -> bool:
        floor = self._floor(ch.table)
        if ch.position <= floor:
            return False
        if ch.op == "truncate":
            self._truncated[ch.table] = Truncate(ch.position, ch.commit_ms)
            return True
        history = self._rows[ch.table].setdefault(ch.pk, [])
        if history and ch.position <= history[-1].position:
            return False
        # valid from its commit time, never before the version it follows; a first load: always
        since = max(ch.commit_ms, history[-1].since) if history else (0 if ch.load else ch.commit_ms)
        entry = index_entry(self.model, ch)
        row = ch.row if ch.op == "upsert" else None
        history.append(Version(ch.position, since, row, entry.parent if entry is not None else None))
        while len(history) > self.max_versions:
            del history[0]
        while len(history) > 1 and history[1].since <= since - self.horizon_ms:
            del history[0]
        if entry is not None:
            self._index_update(ch, entry, since)
        return True

    def _index_update(self, ch: Change, entry: IndexEntry, since: int) -> None:
        # a row that points at another car now keeps its entry in the old car's index (``tidy``)
        self._indexed_by[(ch.table, ch.pk)] = entry.parent
        if entry.parent is not None:
            self._index_put(
                entry.parent, ch.table, ch.pk, max(float(since), entry.until), entry.latest, since
            )

    def _index_put(self, car: str, table: str, pk: str, until: float, latest: bool, since: int) -> None:
        members = self._index[(car, table)]
        if latest:
            for other, other_until in members.items():
                if other_until == INF and other != pk:
                    members[other] = float(since)
        members[pk] = until
        if until != INF and since % PRUNE_EVERY == 0:  # a row stops being chosen (amortised, by its time):
            cutoff = since - self.horizon_ms  # forget the rows no time within the horizon needs
            for gone in [k for k, u in members.items() if u < cutoff]:
                del members[gone]

    def get(self, table: str, pk: str) -> StoredRow | None:
        history = self._rows[table].get(pk)
        if not history or history[-1].position <= self._floor(table):
            return None
        return StoredRow(history[-1].row, history[-1].position)

    def history(self, table: str, pk: str) -> History:
        return list(self._rows[table].get(pk, []))

    def rows(self, table: str) -> dict[str, dict[str, Any]]:
        out = {}
        for pk in self._rows[table]:
            stored = self.get(table, pk)
            if stored is not None and stored.row is not None:
                out[pk] = stored.row
        return out

    def gather(self, pk: str) -> Gathered:
        model = self.model
        g = Gathered(root=list(self._rows[model.device].get(pk, [])), truncs=dict(self._truncated))
        for car in parents_of(g.root):
            g.cars[car] = list(self._rows[model.car].get(car, []))
            g.devices[car] = {
                d: list(self._rows[model.device].get(d, [])) for d in self._index.get((car, model.device), {})
            }
            g.children[car] = {
                c.name: {k: list(self._rows[c.table].get(k, [])) for k in self._index.get((car, c.table), {})}
                for c in model.children
            }
        for car, table, member in stale_members(model, g):
            self._index[(car, table)].pop(member, None)
        return g

    def lookup(self, pks: Iterable[str]) -> dict[str, Timeline]:
        return {pk: build_timeline(self.model, pk, self.gather(pk)) for pk in pks}
