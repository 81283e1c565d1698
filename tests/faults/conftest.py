"""Fault-injection fixtures: a PRIVATE Kafka broker and Redis (own state directory, free ports) that tests may
kill -9 and restart, never the shared services. Started once per session and only when a test asks.

Size knobs (env): ``ENRICH_FAULT_EVENTS`` (telemetry events of the pipeline run, default 100000),
``ENRICH_FAULT_RATE`` (events/s, default 2500), ``ENRICH_FAULT_VEHICLES`` (default 1000).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from enrich.settings import Settings
from stack.topics import create_topics, topic_specs
from tests.conftest import settings_for_test
from tests.private_services import PrivateKafka, PrivateRedis


@dataclass
class PrivateStack:
    kafka: PrivateKafka
    redis: PrivateRedis
    root: Path

    def settings(self, tmp: Path, **overrides: object) -> Settings:
        """Settings on the private services, with this test's own topics (created) and key prefixes."""
        token = f"f{uuid.uuid4().hex[:6]}"
        s = settings_for_test(
            self.kafka.bootstrap, self.redis.url, token, tmp, state_dir=tmp / "state", **overrides
        )
        create_topics(s.kafka_bootstrap, topic_specs(s))
        return s


@pytest.fixture(scope="session")
def private_stack() -> Iterator[PrivateStack]:
    shared = Settings()  # where the broker jars already are (ENRICH_STATE_DIR / ENRICH_KAFKA_LIB_DIR)
    root = Path(tempfile.mkdtemp(prefix="enrich-faults-"))
    kafka = PrivateKafka(root / "kafka", shared)
    redis_ = PrivateRedis(root / "redis")
    try:
        redis_.start()
        kafka.start()
        yield PrivateStack(kafka, redis_, root)
    finally:
        kafka.kill()
        redis_.kill()
        shutil.rmtree(root, ignore_errors=True)
