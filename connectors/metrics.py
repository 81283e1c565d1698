"""Prometheus metrics of the shared I/O (writers, consumers); dependency health lives in connectors.health."""

from __future__ import annotations

from prometheus_client import Counter

DEAD_LETTERS = Counter("enrich_dead_letters_total", "Messages sent to the dead-letter topic", ["stage"])
PRODUCE_RETRIED = Counter(
    "enrich_produce_retried_total", "Records produced again after a retriable delivery error", ["topic"]
)
PRODUCE_REJECTED = Counter(
    "enrich_produce_rejected_total",
    "Records the broker or client refused for good that could not be dead-lettered (logged)",
    ["topic"],
)
PRODUCE_QUEUE_FULL = Counter(
    "enrich_produce_queue_full_total", "Times a producer waited for room in its local queue", ["topic"]
)
