"""The enrichment flow as a two-host bytewax cluster: one process in each of two network namespaces.

The namespaces are joined to the host by veth pairs on a bridge; a private Kafka broker and Redis listen on
the host's bridge address (the shared stack on 9092/6379 is not used). Each process has its own recovery
directory, as on separate machines. The cluster's output must equal a single-process run over the same input.

Skips only where network namespaces cannot be made (not root, no iproute2); once they can, anything that
breaks fails under ENRICH_REQUIRE_SERVICES=1 (CI).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from enrich.settings import Settings
from flows.recovery import partition_files, share
from simulator.run import SimConfig, Simulation
from stack.errors import StackError
from stack.netns import Lab, lab, netns_unsupported
from stack.private import PrivateStack, private_stack
from stack.topics import create_topics, topic_specs
from tests.integration.flow_proc import flow_env
from tests.integration.outputs import assert_same_output, collect
from tests.integration.pipeline import run_to_eof

pytestmark = pytest.mark.integration

CLUSTER_PORT = 2101  # the namespaces are fresh: nothing else listens in them


def kafka_lib() -> Path:
    """The broker jars of the local stack (resolved once by `enrich stack up`)."""
    s = Settings()
    return (s.kafka_lib_dir or s.state_dir / "kafka" / "lib").resolve()


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, PrivateStack]]:
    reason = netns_unsupported()
    if reason:
        pytest.skip(f"multi-host cluster test: {reason}")
    root = tmp_path_factory.mktemp("lab")
    try:
        with lab(2) as hosts, private_stack(root, hosts.host_ip, kafka_lib=kafka_lib()) as services:
            yield hosts, services
    except StackError as exc:
        if os.environ.get("ENRICH_REQUIRE_SERVICES") == "1":
            pytest.fail(f"network namespaces work, but the two-host lab could not be set up: {exc}")
        pytest.skip(f"two-host lab could not be set up: {exc}")


def outputs_of(base: Settings, name: str, tmp: Path) -> Settings:
    token = uuid.uuid4().hex[:6]
    return base.model_copy(
        update={
            "topic_enriched": f"{token}.{name}.enriched",
            "topic_outliers": f"{token}.{name}.outliers",
            "topic_dlq": f"{token}.{name}.dlq",
            "state_prefix": f"{token}:{name}:state:",
            "alerts_prefix": f"{token}:{name}:alerts:",
            "history_dir": tmp / name / "history",
        }
    )


# A car whose two devices write to different telemetry partitions has its events merged in event-time order
# from its first event: the join tells the state step how many devices the car has, so it waits for every
# partition until it has heard from all of them (see enrich.pipeline.state).
@pytest.mark.parametrize("devices_per_car", [1, pytest.param(2, id="2-devices-per-car")])
def test_two_hosts_give_the_output_of_one_process(
    two_hosts: tuple[Lab, PrivateStack], tmp_path: Path, devices_per_car: int
) -> None:
    hosts, services = two_hosts
    token = uuid.uuid4().hex[:6]
    base = Settings(
        kafka_bootstrap=services.kafka_bootstrap,
        redis_url=services.redis_url,
        topic_telemetry=f"{token}.telemetry",
        topic_cdc_prefix=f"{token}.cdc.",
        telemetry_partitions=4,  # a multiple of the process count
        cdc_partitions=1,
        stream_partitions=2,
        snapshot_prefix=f"{token}:snap:",
        recovery_partitions=4,
    )
    one, two = outputs_of(base, "one", tmp_path), outputs_of(base, "two", tmp_path)
    create_topics(base.kafka_bootstrap, topic_specs(one) + topic_specs(two))
    cfg = SimConfig(vehicles=200, devices_per_car=devices_per_car, rate=4000, duration=4, cdc_rate=0,
                    scenarios=["headlights-left-on", "low-battery"], incidents_per_scenario=2,
                    ground_truth=tmp_path / "truth.json")  # fmt: skip
    report = Simulation(cfg, one).run()
    run_to_eof("snapshot", one, tmp_path / "snapshot.log")

    # Reference: one process on the host, over the same telemetry and snapshot.
    run_to_eof("enrich", one, tmp_path / "one.log", recovery=tmp_path / "one" / "rec")

    # The cluster: process i in namespace i, reaching the other by its namespace address, its own recovery
    # directory as on its own disk.
    addresses = ";".join(f"{h.ip}:{CLUSTER_PORT}" for h in hosts.hosts)
    recovery = [tmp_path / "two" / f"rec-{i}" for i in range(2)]
    procs = []
    for i, host in enumerate(hosts.hosts):
        cmd = host.command([sys.executable, "-m", "cli.main", "flow", "enrich", "--until-eof",
                            "-r", str(recovery[i]), "-i", str(i), "-a", addresses])  # fmt: skip
        with open(tmp_path / f"two-{i}.log", "wb") as log:
            procs.append(subprocess.Popen(cmd, env=flow_env(two), stdout=log, stderr=subprocess.STDOUT))
    try:
        for i, proc in enumerate(procs):
            assert proc.wait(timeout=240) == 0, (tmp_path / f"two-{i}.log").read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    reference = collect(one, report.events)
    cluster = collect(two, report.events)
    assert len(reference.enriched) == report.events
    assert len(reference.states) == cfg.vehicles
    assert any(status == "firing" for _, status in reference.incidents), "the scenarios raised no incident"
    assert_same_output(cluster, reference)

    # The recovery store is laid out one directory per host, and both hosts' processes wrote theirs.
    for i, d in enumerate(recovery):
        files = partition_files(d)
        assert {f.index for f in files} == share(i, 2, 4)
        assert all(f.used for f in files), f"process {i} never committed its partitions"
