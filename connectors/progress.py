"""How far each Kafka input of this process has been read: records read and consumer lag per partition.

The flows keep their offsets in bytewax recovery snapshots, not in Kafka (nothing is ever committed to a
consumer group), so the broker cannot tell their lag. Every reader of the engine reports it itself instead:

* ``lag`` of a partition = the partition's high watermark − the next offset this process will read (the
  records the broker holds that this process has not taken in yet). The high watermark is the one the
  consumer's own fetch responses carry (``get_watermark_offsets(cached=True)``: no request to the broker),
  so it is as fresh as the last fetch, a few milliseconds while the partition is read or tailed.
* Unknown (``None``) until the first fetch response of the partition, so a worker that has not read yet
  never looks caught up.
* A flow resumes after a restart from its last recovery snapshot, which is at most one epoch
  (``ENRICH_SNAPSHOT_INTERVAL_S``) behind what it had read: the lag reported after a restart counts from
  there.

Published as Prometheus metrics (``enrich_input_lag{topic,partition}``, ``enrich_input_records_total{topic}``)
on the worker's metrics port, and read by the worker's heartbeat (``stack/registry.py``), which is where
``enrich status`` takes each worker's input lag and throughput from.

Reporting is cheap (a dict update; the gauge at most every ``REPORT_EVERY_S`` per partition), so readers call
it on every batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, TopicPartition
from prometheus_client import Counter, Gauge

INPUT_LAG = Gauge(
    "enrich_input_lag",
    "Records in the input partition after this process's read position (high watermark - next offset)",
    ["topic", "partition"],
)
INPUT_RECORDS = Counter("enrich_input_records_total", "Records read from a Kafka input", ["topic"])
REPORT_EVERY_S = 0.5
INVALID = -1001  # librdkafka's OFFSET_INVALID: no watermark or position known yet


@dataclass(frozen=True, slots=True)
class TopicProgress:
    partitions: int  # partitions of the topic this process reads
    lag: int | None  # summed over them; None while any is unknown


class _Progress:
    def __init__(self) -> None:
        self._lag: dict[tuple[str, int], int | None] = {}
        self._records: dict[str, int] = {}
        self._gauge_at: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def reading(self, topic: str, partition: int) -> None:
        """This process reads ``topic[partition]`` from now on (lag unknown until reported)."""
        with self._lock:
            self._lag.setdefault((topic, partition), None)
            self._records.setdefault(topic, 0)

    def records(self, topic: str, n: int) -> None:
        if n:
            with self._lock:
                self._records[topic] = self._records.get(topic, 0) + n
            INPUT_RECORDS.labels(topic).inc(n)

    def lag(self, topic: str, partition: int, lag: int | None) -> None:
        key = (topic, partition)
        with self._lock:
            self._lag[key] = lag
        if lag is None:
            return
        now = time.monotonic()
        if now - self._gauge_at.get(key, 0.0) >= REPORT_EVERY_S or lag == 0:
            self._gauge_at[key] = now
            INPUT_LAG.labels(topic, str(partition)).set(lag)

    def forget(self, topic: str, partition: int) -> None:
        """The partition is not read here any more (closed)."""
        with self._lock:
            self._lag.pop((topic, partition), None)

    def snapshot(self) -> tuple[int, dict[str, TopicProgress]]:
        """(records read since start, per topic its partitions and summed lag)."""
        with self._lock:
            lags = dict(self._lag)
            total = sum(self._records.values())
            topics = set(self._records) | {t for t, _ in lags}
        out: dict[str, TopicProgress] = {}
        for topic in sorted(topics):
            values = [lag for (t, _), lag in lags.items() if t == topic]
            known = None if any(v is None for v in values) or not values else sum(v for v in values if v)
            out[topic] = TopicProgress(len(values), known)
        return total, out

    def reset(self) -> None:
        """Forget everything (tests)."""
        with self._lock:
            self._lag.clear()
            self._records.clear()
            self._gauge_at.clear()


PROGRESS = _Progress()


def partition_lag(consumer: Any, topic: str, partition: int, next_offset: int) -> int | None:
    """``topic[partition]``'s high watermark (as last fetched) − ``next_offset``; None while either is
    unknown (``next_offset`` < 0 is a logical offset such as OFFSET_BEGINNING)."""
    if next_offset < 0:
        return None
    try:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
    except KafkaException:
        return None
    if high is None or high < 0:
        return None
    return max(0, int(high) - next_offset)


class ConsumerLag:
    """Reports records and lag of a consumer with assigned partitions (the alerts worker), from the offsets
    it was assigned and the messages it consumed since; the lag at most every ``REPORT_EVERY_S``.

    (``Consumer.position`` cannot serve: it is unknown for a partition until a message of it is consumed.)
    A start offset below 0 (OFFSET_END: nothing at or after the wanted time) counts from the high watermark
    first seen for the partition."""

    def __init__(self, consumer: Any, assigned: Sequence[TopicPartition]) -> None:
        self.consumer = consumer
        self._next_offset: dict[tuple[str, int], int] = {}
        for tp in assigned:
            self._next_offset[(tp.topic, tp.partition)] = tp.offset
            PROGRESS.reading(tp.topic, tp.partition)
        self._due = 0.0

    def observe(self, messages: Sequence[Any]) -> None:
        counts: dict[str, int] = {}
        for msg in messages:
            if msg.error() is None:
                topic = msg.topic()
                counts[topic] = counts.get(topic, 0) + 1
                self._next_offset[(topic, msg.partition())] = msg.offset() + 1
        for topic, n in counts.items():
            PROGRESS.records(topic, n)
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + REPORT_EVERY_S
        for (topic, partition), start in list(self._next_offset.items()):
            offset = start
            if offset < 0:
                high = partition_lag(self.consumer, topic, partition, 0)  # the high watermark itself
                if high is None:
                    continue
                self._next_offset[(topic, partition)] = offset = high
            PROGRESS.lag(topic, partition, partition_lag(self.consumer, topic, partition, offset))
