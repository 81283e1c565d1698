"""The telemetry source calls a partition idle only on the broker's word (a private broker, killed).

Idleness lets the event-time watermark stop waiting for a partition; called while the broker is down (its
producers buffering a backlog) or while the worker was paused, it lets the other partitions' backlogs fire
timers early. See ``connectors.idleness``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from connectors.kafka_writer import KafkaWriter
from enrich.records import PartitionBatch
from flows.kafka_io import KafkaBatchSource, _BatchPartition
from tests.faults.conftest import PrivateStack

pytestmark = pytest.mark.integration

IDLE_S = 2.0


class Reader:
    """The source's partitions, polled as bytewax would (pacing 10 ms)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        src = KafkaBatchSource(bootstrap, [topic], idle_after_s=IDLE_S)
        self.parts: dict[str, _BatchPartition] = {p: src.build_part("t", p, None) for p in src.list_parts()}
        self.records = 0
        self.idle_at: dict[str, float] = {}

    def poll(self, seconds: float, until: object = None) -> list[tuple[float, str, PartitionBatch]]:
        out: list[tuple[float, str, PartitionBatch]] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, part in self.parts.items():
                for item in part.next_batch():
                    now = time.monotonic()
                    out.append((now, name, item))
                    self.records += len(item.records)
                    if item.idle:
                        self.idle_at[name] = now
                    else:
                        self.idle_at.pop(name, None)
            if callable(until) and until():
                break
            time.sleep(0.01)  # pacing the polls, as bytewax's next_awake does
        return out

    def close(self) -> None:
        for part in self.parts.values():
            part.close()


def produce(writer: KafkaWriter, topic: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        writer.send_to(topic, f"dev-{i}", b'{"n": %d}' % i)
    writer.flush()


def test_idle_only_after_the_broker_confirms_quiet_never_during_an_outage(
    private_stack: PrivateStack, tmp_path: Path
) -> None:
    s = private_stack.settings(tmp_path)  # telemetry has 2 partitions
    topic = s.topic_telemetry
    writer = KafkaWriter.from_settings(s, topic, stage="test.produce")
    produce(writer, topic, 40)
    reader = Reader(s.kafka_bootstrap, topic)
    try:
        # Read to the end; a quiet partition goes idle once the broker vouched for IDLE_S of quiet.
        items = reader.poll(60, until=lambda: reader.records == 40 and len(reader.idle_at) == 2)
        assert reader.records == 40 and len(reader.idle_at) == 2, items
        last_record = max(t for t, _n, item in items if item.records)
        assert min(reader.idle_at.values()) - last_record >= IDLE_S

        # A worker paused for longer than IDLE_S while records arrived: what comes next is records.
        produce(writer, topic, 40, start=40)
        time.sleep(1.5 * IDLE_S)  # the pause itself (what the test is about), not synchronisation
        items = reader.poll(30, until=lambda: reader.records == 80)
        assert reader.records == 80
        assert not any(item.idle for _t, _n, item in items), items
        assert not reader.idle_at

        # The broker dies: nothing arrives, but no partition becomes idle, however long it lasts.
        private_stack.kafka.kill()
        items = reader.poll(3 * IDLE_S)
        assert not any(item.idle for _t, _n, item in items), "idle while the broker was down"

        # Back: idle only after IDLE_S more of confirmed quiet.
        private_stack.kafka.start()
        back = time.monotonic()
        reader.poll(90, until=lambda: len(reader.idle_at) == 2)
        assert len(reader.idle_at) == 2
        assert min(reader.idle_at.values()) - back >= IDLE_S - 0.5  # broker_ready polls every 0.25 s
    finally:
        reader.close()
