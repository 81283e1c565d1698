"""Kafka client and topic configuration shared by every worker, with one record-size limit for all of them.

``ENRICH_KAFKA_MAX_MESSAGE_BYTES`` (default 8 MiB, the native broker's ``message.max.bytes``) is used for

* the producer's ``message.max.bytes`` (a larger record is refused by ``produce()`` itself),
* the consumers' ``max.partition.fetch.bytes`` / ``fetch.max.bytes`` (so any accepted record can be read),
* every topic's ``max.message.bytes`` (``stack/topics.py``) and the native broker's ``message.max.bytes``
  (``stack/kafka.py``).

The producer never gives up on a record because the broker is away (``message.timeout.ms = 0``: librdkafka
retries until it is delivered); idempotence keeps those retries free of duplicates and in order.
"""

from __future__ import annotations

from typing import Any

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
DEFAULT_FETCH_MAX_BYTES = 52_428_800  # librdkafka's default
# librdkafka logs every failed reconnect at level 3; outages are reported once by connectors.health (through
# each client's error_cb) instead, so clients only log critical conditions themselves.
QUIET_LOG_LEVEL = 2
# Room a dead letter leaves for the record batch and protocol framing around it.
LETTER_HEADROOM_BYTES = 64 * 1024


def producer_config(bootstrap: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """librdkafka settings of every producer of the engine (callbacks are added by the writer)."""
    return {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,  # acks=all, ordered retries, no duplicates from retries
        "message.timeout.ms": 0,  # never time a record out: a broker restart only delays it
        "message.max.bytes": max_message_bytes,
        "linger.ms": 2,
        "compression.type": "lz4",
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        "partitioner": "murmur2_random",
        "delivery.report.only.error": True,  # no callback per delivered record: only failures come back
        "reconnect.backoff.max.ms": 5000,
        "log_level": QUIET_LOG_LEVEL,
    }


def consumer_config(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """Settings every consumer shares: fetch sizes that let it read any record the producers and topics
    accept, and quiet client logs (outages are reported through the consumer's error_cb)."""
    fetch_max = max(DEFAULT_FETCH_MAX_BYTES, max_message_bytes)
    return {
        "log_level": QUIET_LOG_LEVEL,
        "max.partition.fetch.bytes": max_message_bytes,
        "fetch.max.bytes": fetch_max,
        "receive.message.max.bytes": max(100_000_000, fetch_max + 1_000_000),
    }


def topic_size_config(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> dict[str, str]:
    """Per-topic override, so a topic accepts what the producers may send whatever the broker default."""
    return {"max.message.bytes": str(max_message_bytes)}


def letter_budget(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> int:
    """The largest dead letter the writer sends (letters above it carry truncated original bytes)."""
    return max_message_bytes - LETTER_HEADROOM_BYTES
