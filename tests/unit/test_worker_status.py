"""Worker registration (stack/registry.py), what `enrich status` makes of it (stack/status.py), the input
progress it reports (connectors/progress.py) and per-kind metrics ports — no services needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import TopicPartition

from connectors.progress import PROGRESS, ConsumerLag, partition_lag
from enrich.settings import METRICS_PORT_OFFSET, Settings, default_metrics_port
from stack.procs import wait_until
from stack.registry import Registration, Sample, proc_start, read_json
from stack.status import collect, direct_row, exit_text, forget, supervised_row

NOW = 1_800_000_000_000


def beat(**fields: Any) -> dict[str, Any]:
    doc = {"v": 1, "name": "flow-enrich", "kind": "flow-enrich", "pid": 100, "proc_start": 7,
           "state": "running", "started_at": NOW - 60_000, "updated_at": NOW - 1000, "interval_s": 2.0,
           "inputs": {"t": {}}, "lag": 0, "rate": 10.0, "last_error": None}  # fmt: skip
    return {**doc, **fields}


def alive_set(*live: tuple[int, int | None]) -> Any:
    def alive(pid: int | None, started: int | None) -> bool:
        return any(pid == p and (started is None or s is None or started == s) for p, s in live)

    return alive


# -- stack/status.py -------------------------------------------------------------------------------------
def test_a_direct_worker_is_running_unresponsive_or_dead() -> None:
    assert direct_row(beat(), NOW, alive_set((100, 7))).state == "running"
    stale = direct_row(beat(updated_at=NOW - 60_000), NOW, alive_set((100, 7)))
    assert (stale.state, stale.error) == ("unresponsive", "alive but no heartbeat for 60s")
    killed = direct_row(beat(last_error="WARNING enrich.health: redis unreachable"), NOW, alive_set())
    assert killed.state == "dead" and killed.lag is None and killed.rate is None
    assert killed.error is not None and killed.error.startswith("gone without a clean exit")
    assert killed.error.endswith("last logged: WARNING enrich.health: redis unreachable")
    # the pid now belongs to another process (other start time): still dead
    assert direct_row(beat(), NOW, alive_set((100, 8))).state == "dead"
    failed = direct_row(beat(state="failed", exit_code=78, last_error="cannot start: bad"), NOW, alive_set())
    assert (failed.state, failed.error) == ("dead", "cannot start: bad")
    waiting = direct_row(beat(waiting_for=["redis"]), NOW, alive_set((100, 7)))
    assert (waiting.state, waiting.error, waiting.caught_up) == ("running", "waiting for redis", False)


def test_caught_up_needs_known_inputs_read_to_the_end() -> None:
    live = alive_set((100, 7))
    assert direct_row(beat(), NOW, live).caught_up
    assert not direct_row(beat(lag=5), NOW, live).caught_up
    assert not direct_row(beat(inputs={}, lag=None), NOW, live).caught_up  # a flow that has not read yet
    assert direct_row(beat(kind="api", inputs={}, lag=None), NOW, live).caught_up  # serving is all


def sup(**fields: Any) -> dict[str, Any]:
    doc = {"v": 1, "name": "flow-enrich", "command": ["flow", "enrich"], "supervisor_pid": 50, "pid": 100,
           "state": "running", "restarts": 0, "started_at": NOW - 5000, "last_exit_code": None,
           "last_error": None, "next_start_at": None}  # fmt: skip
    return {**doc, **fields}


def test_a_supervised_worker_joins_its_supervisor_and_its_heartbeat() -> None:
    running = supervised_row(sup(), beat(), NOW, alive_set((50, None), (100, 7)))
    assert (running.state, running.supervised, running.lag, running.restarts) == ("running", True, 0, 0)
    died = sup(state="restarting", pid=None, restarts=2, last_exit_code=-9, next_start_at=NOW + 2000)
    restarting = supervised_row(died, beat(), NOW, alive_set((50, None)))
    assert restarting.state == "restarting" and restarting.error is not None
    assert restarting.error.startswith("killed by SIGKILL")
    # a heartbeat of an earlier child (other pid) is not taken for the current one
    assert supervised_row(sup(pid=101), beat(), NOW, alive_set((50, None), (101, None))).state == "starting"
    config = sup(
        state="stopped", pid=None, last_exit_code=78, last_error="enrich flow enrich: cannot start: x"
    )
    gave_up = supervised_row(config, None, NOW, alive_set())
    assert (gave_up.state, gave_up.error) == ("dead", "enrich flow enrich: cannot start: x")
    assert supervised_row(
        sup(state="stopped", pid=None, last_exit_code=-15), None, NOW, alive_set()
    ).state == ("stopped")
    orphan = supervised_row(sup(), beat(), NOW, alive_set())  # supervisor and child killed
    assert orphan.state == "dead" and "supervisor (pid 50) is gone" in (orphan.error or "")


def test_exit_codes_are_told_in_words() -> None:
    assert exit_text(-9) == "killed by SIGKILL (kill -9 or the OOM killer)"
    assert exit_text(78) == "configuration error (exit 78)"
    assert exit_text(1) == "exited with 1" and exit_text(None) is None


def test_collect_reads_the_directory_and_prune_forgets_the_dead(tmp_path: Path) -> None:
    (tmp_path / "flow-enrich.heartbeat.json").write_bytes(orjson.dumps(beat(pid=2**22 + 1)))
    me = beat(name="api", kind="api", pid=os.getpid(), proc_start=proc_start(os.getpid()),
              updated_at=int(time.time() * 1000))  # fmt: skip
    (tmp_path / "api.heartbeat.json").write_bytes(orjson.dumps(me))
    (tmp_path / ".api.heartbeat.json.1.tmp").write_text("{half")
    (tmp_path / "broken.heartbeat.json").write_text("{half")
    rows = collect(tmp_path)
    assert [(r.name, r.state) for r in rows] == [("api", "running"), ("flow-enrich", "dead")]
    assert forget(tmp_path, rows) == ["flow-enrich"]
    assert (
        not (tmp_path / "flow-enrich.heartbeat.json").exists() and (tmp_path / "api.heartbeat.json").exists()
    )


# -- stack/registry.py -----------------------------------------------------------------------------------
def test_a_registration_writes_measures_and_removes_its_heartbeat(tmp_path: Path) -> None:
    samples = iter(
        [Sample(100, {"t": (2, None)}), Sample(300, {"t": (2, 5)})] + [Sample(300, {"t": (2, 0)})] * 50
    )
    reg = Registration(
        tmp_path, "flow-enrich", ["flow", "enrich"], probe=lambda: next(samples), interval_s=0.05
    )
    reg.start()
    try:
        assert reg.name == "flow-enrich" and reg.path == tmp_path / "flow-enrich.heartbeat.json"
        reg.running(metrics_url="http://127.0.0.1:9465/metrics")
        assert wait_until(lambda: (read_json(reg.path) or {}).get("lag") == 0, 10)
        doc = read_json(reg.path)
        assert doc is not None and doc["state"] == "running" and doc["pid"] == os.getpid()
        assert doc["proc_start"] == proc_start(os.getpid()) and doc["records"] == 300
        assert doc["inputs"] == {"t": {"partitions": 2, "lag": 0}}
    finally:
        reg.close()
    assert not reg.path.exists()
    reg._write()  # a late write after close brings nothing back
    assert not reg.path.exists()


def test_a_name_held_by_a_live_worker_gets_the_pid_appended(tmp_path: Path) -> None:
    (tmp_path / "flow-enrich.heartbeat.json").write_bytes(orjson.dumps(beat(pid=1, proc_start=proc_start(1))))
    assert Registration(tmp_path, "flow-enrich", ["flow", "enrich"]).name == f"flow-enrich-{os.getpid()}"
    (tmp_path / "api.heartbeat.json").write_bytes(orjson.dumps(beat(pid=2**22 + 3)))  # a dead one: taken over
    assert Registration(tmp_path, "api", ["api"]).name == "api"


def test_a_failed_start_stays_registered_with_its_reason(tmp_path: Path) -> None:
    reg = Registration(tmp_path, "alerts", ["alerts", "run"]).start()
    reg.fail("cannot start: metrics port 127.0.0.1:9466 is in use", 69)
    doc = read_json(tmp_path / "alerts-run.heartbeat.json")
    assert doc is not None and (doc["state"], doc["exit_code"]) == ("failed", 69)
    assert collect(tmp_path)[0].state == "dead"


def test_the_supervisor_names_its_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENRICH_WORKER_NAME", "enricher-2")
    reg = Registration(tmp_path, "flow-enrich", ["flow", "enrich"])
    assert (reg.name, reg.supervised) == ("enricher-2", True)
    assert "ENRICH_WORKER_NAME" not in os.environ  # not handed down to what this worker starts


SIGTERMED = """
import sys, time
from pathlib import Path
from stack.registry import Registration
reg = Registration(Path(sys.argv[1]), "flow-enrich", ["flow", "enrich"], interval_s=0.01)
reg.start(handle_sigterm=True)
reg.running()
print("up", flush=True)
while True:
    time.sleep(0.01)
"""


def test_sigterm_unregisters_then_terminates_as_before(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", SIGTERMED, str(tmp_path)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
    assert (tmp_path / "flow-enrich.heartbeat.json").exists()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == -signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


# -- connectors/progress.py ------------------------------------------------------------------------------
class FakeConsumer:
    def __init__(self, highs: dict[int, int]) -> None:
        self.highs = highs

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        assert cached, "lag must not cost a broker request"
        return 0, self.highs.get(tp.partition, -1001)


class Msg:
    def __init__(self, partition: int, offset: int) -> None:
        self._p, self._o = partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return "outliers"

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o


def test_lag_is_the_high_watermark_minus_the_next_offset() -> None:
    consumer = FakeConsumer({0: 10})
    assert partition_lag(consumer, "t", 0, 4) == 6
    assert partition_lag(consumer, "t", 0, 12) == 0
    assert partition_lag(consumer, "t", 1, 4) is None  # no fetch yet: unknown, never "caught up"
    assert partition_lag(consumer, "t", 0, -2) is None  # a logical offset (OFFSET_BEGINNING)


def test_consumer_lag_counts_from_assigned_offsets_and_consumed_messages() -> None:
    PROGRESS.reset()
    consumer = FakeConsumer({0: 10, 1: 7})
    lag = ConsumerLag(consumer, [TopicPartition("outliers", 0, 4), TopicPartition("outliers", 1, -1)])
    assert PROGRESS.snapshot()[1]["outliers"].lag is None
    lag.observe([Msg(0, 4), Msg(0, 5)])
    records, topics = PROGRESS.snapshot()
    assert records == 2 and topics["outliers"].partitions == 2
    assert topics["outliers"].lag == 10 - 6  # partition 1 started at its end (OFFSET_END): 0
    PROGRESS.reset()


# -- per-kind metrics ports ------------------------------------------------------------------------------
def test_each_worker_kind_has_its_own_default_metrics_port() -> None:
    ports = {default_metrics_port(k, i) for k in METRICS_PORT_OFFSET for i in (None, 1, 2)}
    assert len(ports) == 3 * len(METRICS_PORT_OFFSET)  # no two kinds or processes of one host collide
    assert [default_metrics_port(k) for k in ("flow-snapshot", "flow-enrich", "alerts", "flow-flatten")] == [
        9464, 9465, 9466, 9467]  # fmt: skip
    assert Settings(metrics_port_base=19000).metrics_port_for("alerts") == 19002
    assert Settings(metrics_port=0).metrics_port_for("alerts", 3) == 0  # explicit wins, 0 = off
