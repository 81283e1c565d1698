"""Rescaling the enrichment flow 2 → 4 → 2 processes keeps its recovery state and loses nothing.

Each process has its own recovery directory (as with a disk per host or a volume per pod); between phases
`enrich flow recovery rescale` moves the partitions. The input arrives in three parts, one per phase; the
4-process phase is killed with SIGKILL midway and restarted, so part of its input is replayed. The end result
must equal one process over the whole input: every event once, no Parquet row twice, the same vehicle states
and incidents.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import Message, Producer

from enrich.settings import Settings
from flows.recovery import RecoveryLayoutError, partition_files, share
from simulator.run import SimConfig, Simulation
from simulator.scenarios import ScenarioName
from stack.procs import free_port, wait_until
from stack.topics import TopicSpec, create_topics, topic_specs
from tests.integration.flow_proc import flow_env
from tests.integration.outputs import assert_same_output, collect
from tests.integration.pipeline import run_to_eof
from tests.kafka_util import consume_all

pytestmark = pytest.mark.integration


def produce_part(
    bootstrap: str, topic: str, by_partition: dict[int, list[Message]], part: int, of: int
) -> int:
    """Append part ``part`` of ``of`` of each partition's records to ``topic`` (same partition, key, time)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    n = 0
    for p, msgs in by_partition.items():
        lo, hi = len(msgs) * part // of, len(msgs) * (part + 1) // of
        for m in msgs[lo:hi]:
            producer.produce(topic, m.value(), m.key(), partition=p, timestamp=m.timestamp()[1])
            producer.poll(0)
            n += 1
    assert producer.flush(30) == 0
    return n


def start_cluster(settings: Settings, recovery: list[Path], log_dir: Path, *, until_eof: bool, tag: str
                  ) -> list[subprocess.Popen[bytes]]:  # fmt: skip
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in recovery)
    procs = []
    for i, rec in enumerate(recovery):
        cmd = [
            sys.executable,
            "-m",
            "cli.main",
            "flow",
            "enrich",
            "-r",
            str(rec),
            "-i",
            str(i),
            "-a",
            addresses,
        ]
        cmd += ["--until-eof"] * until_eof
        with open(log_dir / f"{tag}-{i}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, env=flow_env(settings), stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_all(procs: list[subprocess.Popen[bytes]], log_dir: Path, tag: str) -> None:
    for i, proc in enumerate(procs):
        assert proc.wait(timeout=240) == 0, (log_dir / f"{tag}-{i}.log").read_text()[-3000:]


def rescale(dirs: list[Path], processes: int) -> str:
    cmd = [sys.executable, "-m", "cli.main", "flow", "recovery", "rescale", "--processes", str(processes)]
    result = subprocess.run([*cmd, *map(str, dirs)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    for i, d in enumerate(dirs[:processes]):
        assert {f.index for f in partition_files(d)} == share(i, processes, 4)
    return result.stdout


def test_two_to_four_to_two_processes_keep_the_state_and_lose_nothing(
    isolated_settings: Settings, tmp_path: Path
) -> None:
    s = isolated_settings.model_copy(update={"telemetry_partitions": 4, "recovery_partitions": 4})
    reference = s.model_copy(
        update={
            "topic_enriched": s.topic_enriched + ".ref",
            "topic_outliers": s.topic_outliers + ".ref",
            "topic_dlq": s.topic_dlq + ".ref",
            "state_prefix": s.state_prefix + "ref:",
            "history_dir": tmp_path / "ref-history",
        }
    )
    staging = s.model_copy(update={"topic_telemetry": s.topic_telemetry + ".staging"})
    create_topics(
        s.kafka_bootstrap, [*topic_specs(s), *topic_specs(reference), TopicSpec(staging.topic_telemetry, 4)]
    )

    # The whole input once, to a staging topic; the snapshot loaded before any phase.
    scenarios: list[ScenarioName] = ["headlights-left-on", "low-battery"]
    cfg = SimConfig(vehicles=240, rate=4000, duration=4, cdc_rate=0, incidents_per_scenario=2,
                    scenarios=scenarios, ground_truth=tmp_path / "gt.json")  # fmt: skip
    report = Simulation(cfg, staging).run()
    run_to_eof("snapshot", s, tmp_path / "snapshot.log")
    by_partition: dict[int, list[Message]] = defaultdict(list)
    for m in consume_all(s.kafka_bootstrap, [staging.topic_telemetry], expected=report.events):
        by_partition[m.partition() or 0].append(m)
    for msgs in by_partition.values():
        msgs.sort(key=lambda m: m.offset() or 0)
    dirs = [tmp_path / f"rec-{i}" for i in range(4)]

    # Phase 1: two processes over the first third, to its end.
    first = produce_part(s.kafka_bootstrap, s.topic_telemetry, by_partition, 0, 3)
    wait_all(start_cluster(s, dirs[:2], tmp_path, until_eof=True, tag="two-a"), tmp_path, "two-a")

    # Started as four without moving the files: the old processes refuse, naming the fix; the new ones make
    # fresh partitions and wait for peers that never come.
    procs = start_cluster(s, dirs, tmp_path, until_eof=True, tag="unmoved")
    for i in (0, 1):
        assert procs[i].wait(timeout=60) == 2
        assert "enrich flow recovery rescale --processes 4" in (tmp_path / f"unmoved-{i}.log").read_text()

    # (processes 2 and 3 may start after 0 and 1 refused: the files they make are polled for, not assumed)
    def made() -> bool:
        try:
            return all(partition_files(d) for d in dirs[2:])
        except RecoveryLayoutError:  # a file being created
            return False

    assert wait_until(made, 60, interval=0.2), "no fresh copies"
    for proc in procs[2:]:
        proc.kill()
        proc.wait()
    assert [f.used for f in partition_files(dirs[2])] == [False]  # the fresh copy of partition 2

    # Phase 2: rescaled to four (the fresh copies are dropped), over the second third, killed midway,
    # restarted to its end.
    assert "delete unused copy" in rescale(dirs, 4)
    second = produce_part(s.kafka_bootstrap, s.topic_telemetry, by_partition, 1, 3)
    procs = start_cluster(s, dirs, tmp_path, until_eof=False, tag="four-a")
    assert wait_until(lambda: _count(s) > first + second // 3, 120, interval=0.2), "phase 2 made no progress"
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_all(start_cluster(s, dirs, tmp_path, until_eof=True, tag="four-b"), tmp_path, "four-b")

    # Phase 3: back to two processes for the last third.
    rescale(dirs, 2)
    assert not partition_files(dirs[2]) and not partition_files(dirs[3])
    third = produce_part(s.kafka_bootstrap, s.topic_telemetry, by_partition, 2, 3)
    assert first + second + third == report.events
    wait_all(start_cluster(s, dirs[:2], tmp_path, until_eof=True, tag="two-b"), tmp_path, "two-b")

    # Reference: one process over the whole input.
    run_to_eof("enrich", reference, tmp_path / "reference.log", recovery=tmp_path / "ref-rec")

    ref = collect(reference, report.events)
    got = collect(s, report.events)
    assert len(ref.enriched) == report.events and len(ref.states) == cfg.vehicles
    assert any(status == "firing" for _, status in ref.incidents), "the scenarios raised no incident"
    assert_same_output(got, ref)


def _count(s: Settings) -> int:
    """Enriched events written so far (high watermarks of the topic)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": s.kafka_bootstrap, "group.id": "rescale-probe"})
    try:
        md = c.list_topics(s.topic_enriched, timeout=10)
        return sum(
            c.get_watermark_offsets(TopicPartition(s.topic_enriched, p), timeout=10)[1]
            for p in md.topics[s.topic_enriched].partitions
        )
    finally:
        c.close()
