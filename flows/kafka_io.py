"""Kafka connectors for bytewax that move whole micro-batches, not single messages.

``KafkaBatchSource`` emits one item per poll: a list of ``enrich.records.Record``. Keeping the batch as one
item avoids bytewax's per-item overhead, which would otherwise dominate at 50k+ messages/s. Offsets live in
bytewax recovery snapshots (as with bytewax's own KafkaSource); a consumer error is logged with topic and
partition, counted, and reading goes on.

``DeadLetterProducer`` is a plain producer with delivery checked at ``flush`` (our sinks call it at the end
of each batch, so a batch is durable before its epoch can close).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from enrich.records import PartitionBatch, Record
from flows import metrics

log = logging.getLogger(__name__)
IDLE_BACKOFF = timedelta(milliseconds=10)


class _BatchPartition(StatefulSourcePartition[Any, int]):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        batch_size: int,
        tail: bool,
        linger_s: float = 0.005,
        idle_after_s: float | None = None,
    ) -> None:
        self._consumer = Consumer(config)
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
        # end with nothing new for idle_after_s (see enrich.pipeline.watermark). Without, items are lists.
        self._idle_after_s = idle_after_s
        self._last_record = time.monotonic()
        self._idle_sent = False
        self._at_end = False

    def next_batch(self) -> list[Any]:
        if self._eof and not self._tail and not self._held:
            raise StopIteration
        msgs: list[Message] = self._consumer.consume(self._batch_size - len(self._held), 0.001)
        batch = self._held
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = self._at_end = True
                    continue
                metrics.CONSUME_ERRORS.labels(self._topic).inc()
                log.warning(
                    "consume error on %s[%d] at offset %d: %s",
                    self._topic,
                    self._partition,
                    self._offset,
                    err,
                )
                continue
            self._at_end = False
            ts_type, ts = msg.timestamp()
            offset: int = msg.offset()  # type: ignore[assignment]
            key, value = msg.key(), msg.value()
            batch.append(Record(self._topic, self._partition, offset, key, value, ts if ts_type else None))
        now = time.monotonic()
        if batch and not self._held_since:
            self._held_since = now
        # Linger: at low rates wait up to linger_s for a bigger batch (per-batch costs dominate small ones).
        full = len(batch) >= self._batch_size or now - self._held_since >= self._linger_s
        if batch and (full or (self._eof and not self._tail)):
            self._offset = batch[-1].offset + 1
            self._held, self._held_since = [], 0.0
            self._awake = None
            self._last_record, self._idle_sent = now, False
            if self._idle_after_s is None:
                return [batch]
            return [PartitionBatch(self._topic, self._partition, batch, False)]
        self._held = batch
        wait = self._linger_s - (now - self._held_since) if batch else IDLE_BACKOFF.total_seconds()
        # Let bytewax serve other partitions and come back shortly instead of spinning.
        self._awake = datetime.now(UTC) + timedelta(seconds=max(wait, 0.0005))
        if (
            self._idle_after_s is not None
            and not batch
            and self._at_end
            and not self._idle_sent
            and now - self._last_record >= self._idle_after_s
        ):
            self._idle_sent = True  # once per idle period: the next record ends it
            return [PartitionBatch(self._topic, self._partition, [], True)]
        return []

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
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
    ) -> None:
        self.idle_after_s = idle_after_s
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.batch_size = batch_size
        self.tail = tail
        self.add_config = add_config or {}

    def list_parts(self) -> list[str]:
        md = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=30)
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
            "fetch.min.bytes": 1,
            "fetch.wait.max.ms": 20,
            "queued.min.messages": 200_000,
            **self.add_config,
        }
        offset = OFFSET_BEGINNING if resume_state is None else resume_state
        return _BatchPartition(
            config, topic, int(idx), offset, self.batch_size, self.tail, idle_after_s=self.idle_after_s
        )


class KafkaWriter:
    """A producer for one topic; ``flush`` raises if anything sent since the last flush was not delivered."""

    def __init__(self, bootstrap: str, topic: str, **config: Any) -> None:
        self.topic = topic
        self._failed: list[str] = []
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "linger.ms": 2,
                "compression.type": "lz4",
                "batch.size": 1_000_000,
                "queue.buffering.max.messages": 1_000_000,
                "partitioner": "murmur2_random",
                "delivery.report.only.error": True,
                "on_delivery": self._on_delivery,
                **config,
            }
        )

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failed.append(str(err))

    def send(self, items: Sequence[tuple[bytes | None, bytes]]) -> None:
        produce = self._producer.produce
        topic = self.topic
        for key, value in items:
            try:
                produce(topic, value, key)
            except BufferError:
                self._producer.poll(0.05)
                produce(topic, value, key)

    def poll(self) -> None:
        """Serve delivery reports without waiting."""
        self._producer.poll(0)

    def flush(self) -> None:
        remaining = self._producer.flush(30)
        if remaining or self._failed:
            failed, self._failed = self._failed, []
            raise RuntimeError(
                f"messages not delivered to {self.topic}: {remaining} pending, errors {failed[:3]}"
            )


class DeadLetterProducer(KafkaWriter):
    """Writes dead letters to the DLQ topic and counts them per stage."""

    def send_letters(self, items: list[tuple[bytes | None, bytes]], stage: str) -> None:
        self.send(items)
        if items:
            metrics.DEAD_LETTERS.labels(stage).inc(len(items))
