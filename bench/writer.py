"""Benchmark: the cost of the one Kafka writer next to a bare confluent-kafka produce loop, same run.

    python -m bench.writer --records 300000 --size 450

Three loops produce the same records to a fresh topic and are timed up to the last ``produce`` call (flush
excluded): a bare ``Producer.produce`` loop (same client settings), ``KafkaWriter.send`` of ``(key, value)``,
and of ``(key, value, source)`` (what a flow sends so refused records can be dead-lettered with their
origin). Each loop runs twice, interleaved, to expose the machine's noise.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

from confluent_kafka import Producer

from connectors.kafka_config import producer_config
from connectors.kafka_writer import KafkaWriter, Outgoing
from enrich.deadletter import SourceRef
from enrich.settings import Settings
from stack.topics import TopicSpec, create_topics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--size", type=int, default=450, help="value bytes (an enriched event is ~1 KB)")
    ap.add_argument("--batch", type=int, default=5000, help="records per send call (a flow's micro-batch)")
    args = ap.parse_args()
    bootstrap = Settings().kafka_bootstrap
    topic = f"bench-writer-{uuid.uuid4().hex[:6]}"
    create_topics(bootstrap, [TopicSpec(topic, 4)])
    n, value = args.records, b"x" * args.size
    plain: list[Outgoing] = [(str(i % 1000).encode(), value) for i in range(n)]
    sourced: list[Outgoing] = [
        (k, v, SourceRef("telemetry", 0, i, None, None)) for i, (k, v, *_r) in enumerate(plain)
    ]

    def bare() -> float:
        producer = Producer({**producer_config(bootstrap), "on_delivery": lambda _e, _m: None})
        start = time.perf_counter()
        for key, val, *_rest in plain:
            try:
                producer.produce(topic, val, key)
            except BufferError:
                producer.poll(0.05)
                producer.produce(topic, val, key)
        took = time.perf_counter() - start
        producer.flush(60)
        return took

    def through_writer(items: list[Outgoing]) -> Callable[[], float]:
        def go() -> float:
            writer = KafkaWriter(bootstrap, topic)
            start = time.perf_counter()
            for i in range(0, n, args.batch):
                writer.send(items[i : i + args.batch])
            took = time.perf_counter() - start
            writer.flush()
            return took

        return go

    loops = [("bare produce", bare), ("writer (key, value)", through_writer(plain)),
             ("writer (key, value, source)", through_writer(sourced))]  # fmt: skip
    for name, loop in loops + loops:
        print(f"{name:<28} {loop() / n * 1e6:5.2f} µs/record")


if __name__ == "__main__":
    main()
