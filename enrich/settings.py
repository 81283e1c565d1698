"""One settings object for every worker and command, read from the environment (prefix ``ENRICH_``).

Defaults point at the native local stack on loopback, so nothing needs configuring to try it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

WorkerKind = Literal["flow-snapshot", "flow-enrich", "alerts", "flow-flatten"]
# Each worker kind has its own metrics port, so every worker of one host starts with default settings:
# ``ENRICH_METRICS_PORT_BASE`` (9464) + the kind's offset + 10 x the process id of a cluster (-i).
# The API serves /metrics on its own HTTP port (ENRICH_API_PORT, 8000).
METRICS_PORT_OFFSET: dict[WorkerKind, int] = {
    "flow-snapshot": 0,
    "flow-enrich": 1,
    "alerts": 2,
    "flow-flatten": 3,
}
METRICS_PORT_STRIDE = 10  # per process id of a cluster on one host


def default_metrics_port(kind: WorkerKind, process_id: int | None = None, base: int = 9464) -> int:
    """The metrics port a worker of ``kind`` (process ``process_id`` of its cluster) uses by default."""
    return base + METRICS_PORT_OFFSET[kind] + METRICS_PORT_STRIDE * (process_id or 0)


class Settings(BaseSettings):
    """Configuration of the engine. Every field can be set as ``ENRICH_<FIELD>`` (case-insensitive)."""

    model_config = SettingsConfigDict(env_prefix="ENRICH_", env_file=".env", extra="ignore")

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers (host:port,...)")
    kafka_controller_port: int = Field(9093, description="KRaft controller port of the native stack")
    topic_telemetry: str = "telemetry"
    topic_cdc_prefix: str = Field("cdc.fleet.", description="CDC topics are <prefix><table>")
    topic_enriched: str = "enriched"
    topic_outliers: str = "outliers"
    topic_dlq: str = Field("dlq", description="Dead-letter topic for input that cannot be processed")
    telemetry_partitions: int = Field(4, ge=1, description="Partitions of the telemetry topic")
    cdc_partitions: int = Field(2, ge=1, description="Partitions of each (compacted) CDC topic")
    stream_partitions: int = Field(4, ge=1, description="Partitions of enriched/outliers/dlq topics")
    kafka_max_message_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1_000_000,
        description="Largest Kafka record the engine writes or reads: producer message.max.bytes, consumer "
        "fetch sizes and every topic's max.message.bytes (the native broker's message.max.bytes too)",
    )

    # Redis
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for snapshot and state")

    # Native stack
    state_dir: Path = Field(Path(".stack"), description="Data, logs and pid files of the native stack")
    kafka_heap: str = Field("1g", description="JVM heap of the native Kafka broker")
    kafka_lib_dir: Path | None = Field(
        None, description="Where Maven puts the Kafka jars (default <state_dir>/kafka/lib)"
    )

    # Snapshot store
    tables_file: Path | None = Field(
        None, description="YAML of the CDC tables and the join model (default: enrich/default_tables.yaml)"
    )
    snapshot_prefix: str = Field("snap:", description="Redis key prefix of the snapshot store")
    snapshot_tombstone_ttl_s: int = Field(7 * 86400, description="How long a delete keeps its position")
    snapshot_horizon_s: float = Field(
        86400.0, gt=0, description="History the snapshot keeps for joins as of event time (per row)"
    )
    snapshot_max_versions: int = Field(16, ge=1, description="Most versions the snapshot keeps per row")

    # Flows
    recovery_partitions: int = Field(
        4, ge=1, description="bytewax recovery partitions (fixed at first start)"
    )
    snapshot_interval_s: float = Field(5.0, gt=0, description="bytewax snapshot (epoch) interval")

    # Enrichment
    batch_max: int = Field(
        20_000, ge=1, description="Most records read from one partition per micro-batch (a backlog fills it)"
    )
    join_max_wait_ms: int = Field(2000, description="How long an event waits for a missing snapshot row")
    join_retry_ms: int = Field(200, description="Retry interval of buffered join misses")
    join_max_pending: int = Field(20_000, description="Buffered join misses per partition before emitting")
    state_prefix: str = Field("state:", description="Redis key prefix of the latest vehicle state")
    history_dir: Path | None = Field(None, description="Parquet history root (default <state_dir>/history)")
    lake_dir: Path | None = Field(
        None, description="`enrich flatten` output that `enrich sql` registers (default <state_dir>/lake)"
    )
    history_segment: int = Field(20_000, description="Offsets per Parquet segment file")
    history_flush_s: float = Field(30.0, description="Write an open Parquet segment at least this often")
    max_event_bytes: int = Field(1 << 20, ge=1, description="Telemetry larger than this is dead-lettered")
    max_future_skew_s: float = Field(
        300.0, ge=0, description="Events stamped further ahead of the wall clock are dead-lettered"
    )
    max_event_age_s: float = Field(
        0.0, ge=0, description="Events older than this are dead-lettered (0 = no horizon)"
    )
    watermark_idle_s: float = Field(
        10.0,
        gt=0,
        description=(
            "A telemetry partition read to its end, with nothing appended this long (the broker says so),"
            " stops holding event time"
        ),
    )

    # Rules
    rules_file: Path | None = Field(None, description="Outlier rule pack (YAML); default: the built-in pack")
    rules_enabled: bool = Field(True, description="Evaluate outlier rules in the enrichment flow")

    # Alerts
    alerts_config: Path | None = Field(None, description="Alert routing YAML (default: alerts/default.yaml)")
    alerts_prefix: str = Field("alerts:", description="Redis key prefix of outbox, logs and silences")
    alerts_lease_ms: int = Field(
        5000,
        ge=500,
        description="Lease of the active alerts worker (high availability): a standby takes over at most "
        "this long (plus a third) after the active worker died",
    )

    # Notifications
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_from: str = "fleet-alerts@localhost"
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None

    # HTTP API and metrics
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_prefix: str = Field("api:", description="Redis key prefix of the API's keys")
    api_policies: Path | None = Field(
        None, description="Cedar access policies of the API (default: api/policies/default.cedar)"
    )
    api_policy_schema: Path | None = Field(
        None, description="Cedar schema the policies are validated against (default: api/policies/)"
    )
    metrics_port: int | None = Field(
        None, description="This worker's Prometheus metrics port, overriding its kind's default (0 = off)"
    )
    metrics_port_base: int = Field(
        9464, ge=1, le=65000, description="Default metrics ports: base + the worker kind's offset"
    )

    def metrics_port_for(self, kind: WorkerKind, process_id: int | None = None) -> int:
        """The port a worker of ``kind`` serves its metrics on (0 = off): ``metrics_port`` when set, else
        the kind's default (see ``default_metrics_port``)."""
        if self.metrics_port is not None:
            return self.metrics_port
        return default_metrics_port(kind, process_id, self.metrics_port_base)

    def as_env(self) -> dict[str, str]:
        """These settings as ``ENRICH_*`` variables, to configure a worker process the same way."""
        return {
            f"ENRICH_{name.upper()}": str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }

    def cdc_topic(self, table: str) -> str:
        return f"{self.topic_cdc_prefix}{table}"

    @property
    def cdc_topics(self) -> dict[str, str]:
        """The CDC topic of every configured table (``tables_file``)."""
        from enrich.tables import load_model

        return {table: self.cdc_topic(table) for table in load_model(self.tables_file).tables}

    @property
    def kafka_port(self) -> int:
        first = self.kafka_bootstrap.split(",")[0]
        return int(first.rsplit(":", 1)[1])

    @property
    def redis_port(self) -> int:
        return urlparse(self.redis_url).port or 6379


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return Settings()
