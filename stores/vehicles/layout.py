"""Redis key layout of the vehicle store (every key starts with the state prefix, ``state:`` by default).

Vehicles
* ``car:<id>`` string — the state document (``schemas/vehicle-state.v1``), stored as the flow encoded it.
* ``ix:all`` zset — every car with a state (score = member = car id: lists page by car id).
* ``ix:cls:<cid>`` zset — the cars of one tag class (score = car id); ``ix:classes`` hash cid → tags JSON.
* ``ix:f:<field>:<value>`` zset — the cars whose carinfo ``field`` (fleet, model, status, environment) has
  that value (score = car id).
* ``ix:meta`` hash car → packed meta (class id, fleet, model, status, environment; see ``model.Meta``).
* ``ix:seen`` zset — car by ``last_seen``; ``ix:geo`` geo set — car by location.
* ``ix:active`` zset — cars with at least one firing incident (score = car id).

Incidents (from the outlier events the enrichment flow emits)
* ``inc:<id>`` string — the newest outlier event of the incident plus its vehicle's ``tags``.
* ``inc:active:<car>`` set — firing incident ids of a car.
* ``ix:inc:meta`` hash id → packed ``IncidentMeta``.
* ``ix:inc:all``, ``ix:inc:status:<s>``, ``ix:inc:rule:<rule>``, ``ix:inc:car:<car>``, ``ix:inc:cls:<cid>``
  — lexicographic zsets (score 0) of ``<starts_at 13 digits>:<id>``: newest first by ZREVRANGEBYLEX.

Recent signal history (the console's charts; ``model.SeriesConfig``)
* ``series:<id>`` list — ``<event time>,<value>,…`` samples of ``SERIES_SIGNALS``, oldest first, at most
  one per ``step_ms`` of the car's event time, the newest ``points`` kept (RPUSH + LTRIM in one script call
  per batch).

Change stream
* ``changes`` stream — one entry per flow batch: ``s`` = ``car,version,cid;…`` and ``i`` = JSON list of
  incident summaries. Trimmed to about ``stream_maxlen`` entries.

On a Redis Cluster (``Keys(prefix, cluster=True)``, chosen by the stores from their client) the names get
hash tags: a car's document goes to one of ``DOC_SHARDS`` tags by car id, ``<prefix>{v<car % 64>}:car:<id>``
(the documents, most of the memory, spread over the masters; a batch writes one ``MSET`` per tag); every
other key — indexes, incidents, the change stream — carries the tag ``{ix}``, ``<prefix>{ix}:ix:all`` …,
so the index moves of a batch, the incident script and the readers' multi-key index reads each touch one
slot. The index slot lives on one master: it holds about half of the store's memory (see the README's
figures) and takes one Lua call per batch. A prefix with a hash tag of its own keeps every key in that
one slot (the single-instance names).
"""

from __future__ import annotations

from dataclasses import dataclass

DOC_SHARDS = 64
INDEX_TAG = "ix"


def has_tag(prefix: str) -> bool:
    return "{" in prefix and "}" in prefix.split("{", 1)[1]


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str  # where every key but a car's document starts (``<prefix>{ix}:`` when sharded)
    docs: str = ""  # the state prefix as configured
    sharded: bool = False

    @classmethod
    def of(cls, prefix: str, cluster: bool = False) -> Keys:
        if cluster and not has_tag(prefix):
            return cls(f"{prefix}{{{INDEX_TAG}}}:", prefix, True)
        return cls(prefix, prefix, False)

    def car(self, car_id: int | str) -> str:
        if self.sharded:
            return f"{self.docs}{{v{int(car_id) % DOC_SHARDS}}}:car:{car_id}"
        return f"{self.prefix}car:{car_id}"

    @property
    def all(self) -> str:
        return f"{self.prefix}ix:all"

    def cls(self, cid: str) -> str:
        return f"{self.prefix}ix:cls:{cid}"

    @property
    def classes(self) -> str:
        return f"{self.prefix}ix:classes"

    def field(self, name: str, value: str) -> str:
        return f"{self.prefix}ix:f:{name}:{value}"

    @property
    def meta(self) -> str:
        return f"{self.prefix}ix:meta"

    @property
    def seen(self) -> str:
        return f"{self.prefix}ix:seen"

    @property
    def geo(self) -> str:
        return f"{self.prefix}ix:geo"

    @property
    def active(self) -> str:
        return f"{self.prefix}ix:active"

    def incident(self, incident_id: str) -> str:
        return f"{self.prefix}inc:{incident_id}"

    def car_incidents(self, car_id: int | str) -> str:
        return f"{self.prefix}inc:active:{car_id}"

    @property
    def inc_meta(self) -> str:
        return f"{self.prefix}ix:inc:meta"

    @property
    def inc_all(self) -> str:
        return f"{self.prefix}ix:inc:all"

    def inc_status(self, status: str) -> str:
        return f"{self.prefix}ix:inc:status:{status}"

    def inc_rule(self, rule_id: str) -> str:
        return f"{self.prefix}ix:inc:rule:{rule_id}"

    def inc_car(self, car_id: int | str) -> str:
        return f"{self.prefix}ix:inc:car:{car_id}"

    def inc_cls(self, cid: str) -> str:
        return f"{self.prefix}ix:inc:cls:{cid}"

    def series(self, car_id: int | str) -> str:
        return f"{self.prefix}series:{car_id}"

    @property
    def changes(self) -> str:
        return f"{self.prefix}changes"
