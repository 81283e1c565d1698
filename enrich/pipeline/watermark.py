"""Event-time progress over the input partitions, with idleness (as Flink's ``withIdleness``).

Each telemetry partition reports, with every batch, the newest event time it carried; the watermark is the
oldest of those over the partitions that are not idle, so no timer fires for a time some partition has
not reached yet. A partition is *idle* when its source says so: it has read to the end of the partition
and the broker confirmed that nothing was appended to it for ``ENRICH_WATERMARK_IDLE_S`` (the source
decides, because only it can ask; see ``connectors.idleness``). An idle partition stops holding the
watermark back until its next record; when every partition is idle, the watermark is just past the newest
event time seen anywhere (everything readable has been read). A partition that is merely not heard from —
broker down, worker paused while Redis restarts — is not idle and keeps holding the watermark, so an
outage can never make timers fire early.

Every event older than the watermark has been seen (events *at* a partition's newest time may still be on
their way: ties are not complete), so users compare strictly: a deadline ``D`` is due when ``D <
watermark``. The watermark never moves backwards, and involves no clock: the same input gives the same
watermark. With ``required`` (every partition of the input), there is no watermark until each of them has
reported once (progress or idle), so a partition whose first batch comes late — from another process of a
cluster, say — cannot be overtaken.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Watermark:
    progress: dict[str, int] = field(default_factory=dict)  # partition -> newest event time
    idle: set[str] = field(default_factory=set)
    value: int | None = None
    required: frozenset[str] = frozenset()  # partitions that must have reported before there is a watermark

    def observe(self, partition: str, newest: int, idle: bool) -> int | None:
        """Take one partition report; returns the watermark (None until some event time is known)."""
        if newest > self.progress.get(partition, 0):
            self.progress[partition] = newest
        elif partition not in self.progress:
            self.progress[partition] = 0
        if idle:
            self.idle.add(partition)
        else:
            self.idle.discard(partition)
        if self.required and not self.required <= self.progress.keys():
            return self.value
        active = [ts for p, ts in self.progress.items() if p not in self.idle]
        candidate = min(active) if active else max(self.progress.values()) + 1
        if candidate > 0 and (self.value is None or candidate > self.value):
            self.value = candidate
        return self.value
