"""Archive a Kafka topic into the Parquet history (``<history>/<kind>/date=…/hour=…/``), like a Kafka Connect
S3 sink: used for the outliers topic, so incidents can be queried with SQL next to the events.

Each run reads every partition from the offset after the newest one already on disk (the low watermark for
a new partition) to the end of what the partition holds when the run starts, and writes the raw layout
(``stores.parquet_history.RAW_SCHEMA``) placed by Kafka timestamp. Idempotent: ``HistoryWriter`` knows the
offsets on disk and writes only new ones, so a run that is killed and repeated, or two runs over the same
range, never duplicate a row. Run it from cron or a loop (``enrich history archive --every 60``).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition

from enrich.records import Record
from stores.parquet_history import HistoryWriter

CHUNK = 50_000


def archive_topic(
    bootstrap: str, topic: str, root: Path, kind: str, *, timeout_s: float = 60.0
) -> dict[int, int]:
    """Archive what ``topic`` holds now; returns the records written per partition."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"history-archive-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 0,
        }
    )
    writer = HistoryWriter(root)
    written: dict[int, int] = {}
    try:
        meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return written
        assign: list[TopicPartition] = []
        ends: dict[int, int] = {}
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            start = max(low, writer.next_offset(kind, topic, p) or 0)
            if start < high:
                assign.append(TopicPartition(topic, p, start))
                ends[p] = high
        if not assign:
            return written
        consumer.assign(assign)
        buffers: dict[int, list[Record]] = {p: [] for p in ends}
        done: set[int] = set()
        import time

        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                err = msg.error()
                p = msg.partition()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF and p is not None:
                        done.add(p)
                    continue
                offset = msg.offset()
                if p is None or offset is None or offset >= ends[p]:
                    if p is not None:
                        done.add(p)
                    continue
                _kind, ts = msg.timestamp()
                buffers[p].append(Record(topic, p, offset, msg.key(), msg.value(), ts))
                if offset + 1 >= ends[p]:
                    done.add(p)
                if len(buffers[p]) >= CHUNK:
                    written[p] = written.get(p, 0) + _flush(writer, topic, p, buffers[p], kind)
        for p, rows in buffers.items():
            if rows:
                written[p] = written.get(p, 0) + _flush(writer, topic, p, rows, kind)
        return written
    finally:
        writer.close()
        consumer.close()


def _flush(writer: HistoryWriter, topic: str, partition: int, rows: list[Record], kind: str) -> int:
    n = len(rows)
    writer.write(topic, partition, rows, None, raw_kind=kind)
    rows.clear()
    return n
