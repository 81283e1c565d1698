"""Kafka connectors for bytewax that move whole micro-batches, not single messages.

``KafkaBatchSource`` emits one item per poll: a list of ``enrich.records.Record``. Keeping the batch as one
item avoids bytewax's per-item overhead, which would otherwise dominate at 50k+ messages/s. Offsets live in
bytewax recovery snapshots (as with bytewax's own KafkaSource); a consumer error is logged with topic and
partition, counted, and reading goes on. While the broker is away the partitions simply return nothing
(the dependency monitor logs the outage and sets ``enrich_dependency_up{dependency="kafka"}``); reading
resumes at the same offset when it is back. ``list_parts`` waits for the broker at start-up instead of
failing; only a topic that does not exist is an error (configuration).

Writers live in ``connectors.kafka_writer``. ``KafkaWriter(bootstrap, topic)`` and ``DeadLetterProducer``
below keep the old constructors: they dead-letter what they cannot produce to this process's
``ENRICH_TOPIC_DLQ`` but know no source reference; new code uses
``connectors.kafka_writer.KafkaWriter.from_settings`` and sends ``(key, value, source)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors import kafka_writer
from connectors.health import monitor
from connectors.idleness import PROBE_TIMEOUT_S, IdleProbe
from connectors.kafka_config import DEFAULT_MAX_MESSAGE_BYTES, consumer_config
from connectors.kafka_writer import UNREACHABLE
from connectors.progress import PROGRESS, REPORT_EVERY_S, partition_lag
from enrich.records import PartitionBatch, Record
from enrich.settings import get_settings
from flows import metrics

log = logging.getLogger(__name__)
IDLE_BACKOFF = timedelta(milliseconds=2)  # nothing to read: look again shortly (latency ≤ this)
ERROR_LOG_EVERY_S = 15.0
START_BACKOFF_MAX_S = 30.0
OUTAGE_PROBE_EVERY_S = 2.0
OUTAGE_PROBE_TIMEOUT_S = 0.2


class _OutageProbe:
    due = 0.0  # when a partition of this process may next ask the broker while Kafka is down


_OUTAGE_PROBE = _OutageProbe()


def wait_for_metadata(bootstrap: str, what: str, topic: str | None = None) -> Any:
    """Cluster metadata, waiting (with backoff and log lines) while the broker cannot be reached."""
    health = monitor("kafka")
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "log_level": 0, "error_cb": lambda _e: None}
    admin = AdminClient(conf)
    delay = 1.0
    while True:
        try:
            md = admin.list_topics(topic, timeout=10) if topic else admin.list_topics(timeout=10)
        except KafkaException as exc:
            health.failure(exc.args[0], what=f"{what}: waiting for {bootstrap}")
            time.sleep(delay)
            delay = min(START_BACKOFF_MAX_S, delay * 2)
            continue
        health.recovered()
        return md


class _BatchPartition(StatefulSourcePartition[Any, int]):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        tail: bool,
        linger_s: float = 0.002,
        idle_after_s: float | None = None,
    ) -> None:
        self._health = monitor("kafka")
        self._consumer = Consumer({**config, "error_cb": self._client_error})
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._batch_size = batch_size
        self._tail = tail
        self._eof = False
        self._awake: datetime | None = None
        self._linger_s = linger_s
        self._held: list[Record] = []  # read but not emitted yet (not in the snapshot offset either)
        self._held_since = 0.0
        # With idle_after_s, items are PartitionBatch and the partition says when it is idle: read to its
        # end and the broker confirms nothing was appended for idle_after_s (connectors.idleness, used by
        # enrich.pipeline.watermark). Without, items are lists.
        self._idle = None if idle_after_s is None else IdleProbe(idle_after_s)
        self._at_end = False
        self._last_error_log = 0.0
        self._lag_due = 0.0
        PROGRESS.reading(topic, partition)

    def _report_lag(self) -> None:
        """Input lag for `enrich status` and metrics (connectors/progress.py), at most every 0.5 s."""
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + REPORT_EVERY_S
        if self._offset >= 0:
            lag = partition_lag(self._consumer, self._topic, self._partition, self._offset)
        else:  # nothing emitted yet: caught up only once read to the end with nothing held
            lag = 0 if self._at_end and not self._held else None
        PROGRESS.lag(self._topic, self._partition, lag)

    def next_batch(self) -> list[Any]:
        self._report_lag()
        if self._eof and not self._tail and not self._held:
            raise StopIteration
        # Never block: bytewax polls the partitions one after another, so a wait here (even 1 ms) would be
        # paid by every other partition's records; next_awake paces the polls instead.
        msgs: list[Message] = self._consumer.consume(self._batch_size - len(self._held), 0)
        batch = self._held
        before = len(batch)
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = self._at_end = True
                    self._health.recovered()
                    continue
                self._consume_error(err)
                continue
            self._at_end = False
            ts_type, ts = msg.timestamp()
            offset: int = msg.offset()  # type: ignore[assignment]
            key, value = msg.key(), msg.value()
            batch.append(Record(self._topic, self._partition, offset, key, value, ts if ts_type else None))
        if len(batch) > before:
            if not self._health.up:
                self._health.recovered()
            if self._idle is not None:
                self._idle.record()
        now = time.monotonic()
        if batch and not self._held_since:
            self._held_since = now
        # Linger: at low rates wait up to linger_s for a bigger batch (per-batch costs dominate small ones).
        full = len(batch) >= self._batch_size or now - self._held_since >= self._linger_s
        if batch and (full or (self._eof and not self._tail)):
            self._offset = batch[-1].offset + 1
            PROGRESS.records(self._topic, len(batch))
            self._held, self._held_since = [], 0.0
            self._awake = None
            if self._idle is None:
                return [batch]
            return [PartitionBatch(self._topic, self._partition, batch, False)]
        self._held = batch
        wait = self._linger_s - (now - self._held_since) if batch else IDLE_BACKOFF.total_seconds()
        # Let bytewax serve other partitions and come back shortly instead of spinning.
        self._awake = datetime.now(UTC) + timedelta(seconds=max(wait, 0.0005))
        if self._idle is not None and not batch:
            if not self._at_end:
                self._idle.reset()
            elif self._idle.poll(self._high_watermark):  # once per quiet period: the next record ends it
                return [PartitionBatch(self._topic, self._partition, [], True)]
        return []

    def _high_watermark(self) -> int | None:
        """The partition's high watermark as the broker says it now (None: no answer).

        During an outage the partitions of the process take turns (one question per
        ``OUTAGE_PROBE_EVERY_S``, a short timeout), so waiting for answers never stalls the worker; the
        first answer ends the outage for all of them (nothing else says so when no record arrives)."""
        down = not self._health.up
        if down:
            now = time.monotonic()
            if now < _OUTAGE_PROBE.due:
                return None
            _OUTAGE_PROBE.due = now + OUTAGE_PROBE_EVERY_S
        try:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, self._partition),
                timeout=OUTAGE_PROBE_TIMEOUT_S if down else PROBE_TIMEOUT_S,
                cached=False,
            )
        except KafkaException:
            return None
        if down:
            self._health.recovered()
        return None if high is None else int(high)

    def _client_error(self, err: KafkaError) -> None:
        if err.code() in UNREACHABLE:
            self._health.failure(err.str(), what=f"consumer of {self._topic}[{self._partition}]")
        elif not err.fatal():
            log.warning("Kafka client error (consumer of %s[%d]): %s", self._topic, self._partition, err)
        else:
            raise RuntimeError(f"fatal consumer error on {self._topic}[{self._partition}]: {err}")

    def _consume_error(self, err: KafkaError) -> None:
        metrics.CONSUME_ERRORS.labels(self._topic).inc()
        if err.code() in UNREACHABLE:
            self._health.failure(err.str(), what=f"consumer of {self._topic}[{self._partition}]")
            return
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning("consume error on %s[%d] at offset %d: %s (reading goes on)", self._topic,
                        self._partition, self._offset, err)  # fmt: skip

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        PROGRESS.forget(self._topic, self._partition)
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[Any, int]):
    """Every partition of ``topics`` is a bytewax partition; items are lists of records, or with
    ``idle_after_s`` ``PartitionBatch`` items that also report when the partition goes idle."""

    def __init__(
        self,
        bootstrap: str,
        topics: Iterable[str],
        *,
        batch_size: int = 5000,
        tail: bool = True,
        add_config: dict[str, Any] | None = None,
        idle_after_s: float | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.idle_after_s = idle_after_s
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.batch_size = batch_size
        self.tail = tail
        self.add_config = add_config or {}
        self.max_message_bytes = max_message_bytes

    def list_parts(self) -> list[str]:
        md = wait_for_metadata(self.bootstrap, f"listing partitions of {', '.join(self.topics)}")
        parts: list[str] = []
        for topic in self.topics:
            if topic not in md.topics or md.topics[topic].error is not None:
                raise RuntimeError(
                    f"topic {topic!r} does not exist on {self.bootstrap} (run `enrich topics create`)"
                )
            parts.extend(f"{p}-{topic}" for p in md.topics[topic].partitions)
        return parts

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _BatchPartition:
        idx, topic = for_part.split("-", 1)
        config = {
            "bootstrap.servers": self.bootstrap,
            "group.id": "enrich-unused",  # offsets live in bytewax recovery, never committed to Kafka
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # an offset gone by retention resumes at the oldest, not the end
            "fetch.min.bytes": 1,
            "fetch.wait.max.ms": 20,
            "queued.min.messages": 200_000,
            **consumer_config(self.max_message_bytes),
            **self.add_config,
        }
        offset = OFFSET_BEGINNING if resume_state is None else resume_state
        return _BatchPartition(
            config, topic, int(idx), offset, self.batch_size, self.tail, idle_after_s=self.idle_after_s
        )


class KafkaWriter(kafka_writer.KafkaWriter):
    """The old constructor: dead letters go to this process's ``ENRICH_TOPIC_DLQ`` (records sent without a
    source cannot be dead-lettered and are logged instead). Prefer ``KafkaWriter.from_settings``."""

    def __init__(self, bootstrap: str, topic: str, **config: Any) -> None:
        s = get_settings()
        super().__init__(bootstrap, topic, dlq_topic=s.topic_dlq, stage=f"{topic}.produce",
                         max_message_bytes=s.kafka_max_message_bytes, config=config)  # fmt: skip


class DeadLetterProducer(kafka_writer.KafkaWriter):
    """Writes ready-made dead letters (``send_letters(items, stage)``) to ``topic``, each made to fit."""

    def __init__(self, bootstrap: str, topic: str, **config: Any) -> None:
        super().__init__(bootstrap, topic, dlq_topic=topic, stage="dlq",
                         max_message_bytes=get_settings().kafka_max_message_bytes, config=config)  # fmt: skip
