"""Test helpers for reading topics back (poll until a condition, never sleep)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaError, Message


def consume_all(
    bootstrap: str,
    topics: list[str],
    *,
    expected: int | None = None,
    idle_s: float = 3.0,
    timeout_s: float = 60.0,
) -> list[Message]:
    """Read ``topics`` from the beginning until ``expected`` messages arrived (or, without ``expected``, until
    nothing arrives for ``idle_s`` after reaching the end of every partition)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.subscribe(topics)
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = consumer.consume(10_000, timeout=0.5)
            for msg in batch:
                err = msg.error()
                if err is None:
                    out.append(msg)
                    last = time.monotonic()
                elif err.code() != KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"consume error: {err}")
            if expected is not None and len(out) >= expected:
                break
            if expected is None and not batch and time.monotonic() - last > idle_s:
                break
    finally:
        consumer.close()
    return out
