"""Prometheus metrics of the flows (served by `enrich flow ... --metrics-port`).

The I/O metrics shared with the other workers (dead letters, producer retries, dependency health
``enrich_dependency_up`` / ``enrich_dependency_outages_total`` / ``enrich_dependency_retries_total``) are
defined in ``connectors`` and re-exported here.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from connectors.health import DEPENDENCY_UP, OUTAGES, RETRIES
from connectors.metrics import DEAD_LETTERS, PRODUCE_QUEUE_FULL, PRODUCE_REJECTED, PRODUCE_RETRIED

__all__ = [
    "BATCH_SECONDS", "CDC_CHANGES", "CDC_SKIPPED", "CONSUME_ERRORS", "DEAD_LETTERS", "DEPENDENCY_UP",
    "EVENTS_OUT", "JOIN_MISSES", "JOIN_RETRIED", "OUTAGES", "OUTLIERS", "PENDING", "PRODUCE_QUEUE_FULL",
    "PRODUCE_REJECTED", "PRODUCE_RETRIED", "RECORDS_IN", "RETRIES", "STATE_WRITES",
]  # fmt: skip

RECORDS_IN = Counter("enrich_records_in_total", "Messages read from Kafka", ["flow"])
CONSUME_ERRORS = Counter("enrich_consume_errors_total", "Kafka consume errors (logged, not fatal)", ["topic"])
CDC_CHANGES = Counter("enrich_cdc_changes_total", "CDC changes by outcome", ["outcome"])
CDC_SKIPPED = Counter("enrich_cdc_skipped_total", "CDC messages that are not row changes", ["kind"])
BATCH_SECONDS = Histogram(
    "enrich_batch_seconds",
    "Time to process and write one micro-batch",
    ["flow"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
EVENTS_OUT = Counter("enrich_events_out_total", "Enriched events written")
JOIN_MISSES = Counter("enrich_join_misses_total", "Events emitted without a full snapshot record", ["status"])
JOIN_RETRIED = Counter("enrich_join_retried_total", "Buffered join misses resolved by a retry")
PENDING = Gauge("enrich_join_pending", "Events waiting for a snapshot row in this process")
OUTLIERS = Counter("enrich_outliers_total", "Outlier events (firing and resolved) written")
STATE_WRITES = Counter("enrich_state_writes_total", "Vehicle state documents written to Redis")
