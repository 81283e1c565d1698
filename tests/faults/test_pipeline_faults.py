"""The whole pipeline under faults (issue 9's acceptance), on a private broker and Redis.

One simulator run of ``ENRICH_FAULT_EVENTS`` (default 100,000) telemetry events with every scenario, while
the snapshot, enrichment and alerts workers run under ``enrich run`` (the supervisor restarts what dies):

* kill -9 of the enrichment worker (at 25 % of the run), broker kill -9 and restart (45 %, back after a
  few seconds), Redis kill -9 and restart 10 s later (75 %), kill -9 of the alerts worker in the middle of
  a webhook retry (its receiver fails the first attempts);
* planted: a year-2100 event (15 %), a device swap of a car with an injected incident (35 %), a 5 MB event
  (85 %).

Then each test below checks one promise. The run happens once (module fixture); a fault-free replay of the
same input topics (fresh output topics and keys, no faults) gives the incident ids to compare with.

Four checks rely on the enrichment core (``enrich/pipeline``) as much as on the I/O: the dead letters (the
decoder's ``too_large`` and ``future_timestamp``), device-silent notifications and the incident ids (timers
at data-defined deadlines, watermark idleness), and no false incident (silence over current devices only).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from confluent_kafka import Message

from alerts.signing import new_secret
from connectors.kafka_writer import KafkaWriter
from enrich.pipeline.state import public_document
from enrich.settings import Settings
from enrich.telemetry import decode_telemetry
from simulator.model import car_values, encode_signals
from simulator.run import SimConfig, Simulation
from simulator.scenarios import SCENARIOS
from stack.procs import wait_until
from stack.topics import create_topics, topic_specs
from stores.redis_client import redis_client
from tests.faults.conftest import PrivateStack
from tests.faults.harness import FlakyHook, Mailbox, Supervised, TopicReader
from tests.integration.flow_proc import flow_env
from tests.integration.pipeline import run_to_eof

pytestmark = pytest.mark.integration

EVENTS = int(os.environ.get("ENRICH_FAULT_EVENTS", "100000"))
RATE = float(os.environ.get("ENRICH_FAULT_RATE", "2500"))
VEHICLES = int(os.environ.get("ENRICH_FAULT_VEHICLES", "1000"))
YEAR_2100_MS = 4_102_444_800_000
BIG_BYTES = 5 * 1024 * 1024
RULE_OF = {"headlights-left-on": "headlights-left-on", "low-battery": "low-12v-battery",
           "device-silent": "device-silent"}  # fmt: skip


@dataclass
class Run:
    settings: Settings
    truth: dict[str, Any]
    device_car: dict[str, int]
    planted: dict[str, str]  # "big" | "future" -> event id
    swap: dict[str, Any]
    telemetry_ids: set[str] = field(default_factory=set)
    offsets: dict[tuple[int, int], str] = field(default_factory=dict)  # (partition, offset) -> event id
    newest: dict[int, tuple[int, int, bytes]] = field(default_factory=dict)  # car -> (ts, seq, raw), accepted
    enriched_ids: set[str] = field(default_factory=set)
    letters: list[dict[str, Any]] = field(default_factory=list)
    outliers: list[dict[str, Any]] = field(default_factory=list)
    replay_outliers: list[dict[str, Any]] = field(default_factory=list)
    states: dict[int, dict[str, Any]] = field(default_factory=dict)
    hooks: dict[str, bytes] = field(default_factory=dict)  # accepted webhook deliveries by webhook-id
    mails: list[Any] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)

    def dead_ids(self) -> dict[str, str]:
        """Event id -> reason of every dead-lettered telemetry record."""
        out = {}
        for letter in self.letters:
            src = letter["source"]
            if src["topic"] == self.settings.topic_telemetry:
                out[self.offsets[(src["partition"], src["offset"])]] = letter["reason"]
        return out

    def expected_incidents(self) -> list[tuple[str, int]]:
        return [(RULE_OF[i["scenario"]], i["car_id"]) for i in self.truth["incidents"] if i["expect_alert"]]


def alerts_config(path: Path, hook_url: str) -> Path:
    cfg = {
        "route": {
            "receiver": "ops-hook", "group_by": ["alertname", "car_id"], "group_wait": "1s",
            "group_interval": "2s", "repeat_interval": "4h",
            "routes": [{"matchers": ['audience="customer"'], "receiver": "customer-email", "continue": True},
                       {"receiver": "ops-hook"}],
        },
        "receivers": [
            {"name": "customer-email", "email": {"to_customer": True}},
            {"name": "ops-hook", "webhook": {"url": hook_url, "secrets": [new_secret()],
                                             "send_resolved": True, "backoff": "300ms", "max_backoff": "2s",
                                             "max_attempts": 30}},
        ],
        "allow_private_targets": ["127.0.0.0/8"],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(cfg))
    return path


def plant(writer: KafkaWriter, s: Settings, device: str, ts: int, seq: int, signals: dict[str, Any]) -> str:
    doc = {"device_id": device, "ts": ts, "seq": seq, "signals": signals}
    writer.send_to(s.topic_telemetry, device, orjson.dumps(doc))
    writer.flush()
    return f"{device}:{seq}"


def collect(run: Run, s: Settings) -> None:
    """Read the telemetry topic: every event id and where it is."""

    def telemetry(msg: Message) -> None:
        doc = orjson.loads(msg.value() or b"{}")
        eid = f"{doc['device_id']}:{doc['seq']}"
        run.telemetry_ids.add(eid)
        run.offsets[(msg.partition() or 0, msg.offset() or 0)] = eid

    reader = TopicReader(s, s.topic_telemetry, telemetry)
    reader.read()
    reader.close()


def newest_accepted(run: Run, s: Settings) -> dict[int, tuple[int, int, bytes]]:
    """Per car, the newest (event time, seq) telemetry event that was not dead-lettered."""
    dead = run.dead_ids()
    newest: dict[int, tuple[int, int, bytes]] = {}

    def telemetry(msg: Message) -> None:
        doc = orjson.loads(msg.value() or b"{}")
        car = run.device_car.get(doc["device_id"])
        if car is None or f"{doc['device_id']}:{doc['seq']}" in dead:
            return
        key = (doc["ts"], doc["seq"])
        if car not in newest or key > newest[car][:2]:
            newest[car] = (doc["ts"], doc["seq"], msg.value() or b"")

    reader = TopicReader(s, s.topic_telemetry, telemetry)
    reader.read()
    reader.close()
    return newest


def read_all(s: Settings, topic: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    reader = TopicReader(s, topic, lambda m: out.append(orjson.loads(m.value() or b"{}")))
    reader.read()
    reader.close()
    return out


def states(s: Settings) -> dict[int, dict[str, Any]]:
    client = redis_client(s)
    keys = list(client.scan_iter(match=f"{s.state_prefix}car:*", count=1000))
    values: list[Any] = client.mget(keys) if keys else []
    return {
        int(k.decode().rsplit(":", 1)[1]): public_document(orjson.loads(v))
        for k, v in zip(keys, values, strict=True)
        if v
    }


def state_mismatches(run: Run) -> list[str]:
    out = []
    for car, (ts, seq, raw) in sorted(run.newest.items()):
        doc = run.states.get(car)
        if doc is None:
            out.append(f"car {car}: no state")
            continue
        tel = decode_telemetry(raw)
        if doc["last_seen"] != ts:
            out.append(
                f"car {car}: last_seen {doc['last_seen']} != newest event {tel.device_id}:{seq} at {ts}"
            )
            continue
        for path, value in tel.signals.items():
            got = doc["signals"].get(path)
            if got is None or got["value"] != value or got["ts"] != ts or got["device_id"] != tel.device_id:
                out.append(f"car {car}: {path} = {got} but newest event {tel.device_id}:{seq} says {value!r}")
                break
    return out


@pytest.fixture(scope="module")
def run(private_stack: PrivateStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("pipeline-faults")
    s = private_stack.settings(tmp)
    hook, mailbox = FlakyHook(fail_first=3), Mailbox()
    # a device swapped in during the broker outage waits for the snapshot flow to read its CDC again
    env = flow_env(s, ENRICH_JOIN_MAX_WAIT_MS="15000",
                   ENRICH_ALERTS_CONFIG=str(alerts_config(tmp / "alerts.yaml", hook.url)),
                   ENRICH_SMTP_HOST="127.0.0.1", ENRICH_SMTP_PORT=str(mailbox.port))  # fmt: skip
    duration = EVENTS / RATE
    sim = Simulation(SimConfig(vehicles=VEHICLES, rate=RATE, duration=duration, scenarios=list(SCENARIOS),
                               incidents_per_scenario=2, ground_truth=tmp / "truth.json"), s)  # fmt: skip
    device_car = {d.device_id: d.car_id for d in sim.fleet.devices.values()}
    incident_car = next(
        i.car_id for i in sim.injections if i.scenario == "headlights-left-on" and not i.control
    )
    sim.plan_device_swap(incident_car, 0.35 * duration)
    free = [c for c in sorted(sim.fleet.cars) if c not in sim.pinned]
    big_dev, future_dev = (sim.fleet.devices_of(c)[0] for c in free[:2])
    workers = {
        "snapshot": Supervised("snapshot", ["flow", "snapshot"], env, s.state_dir),
        "enrich": Supervised("enrich", ["flow", "enrich"], env, s.state_dir),
        "alerts": Supervised("alerts", ["alerts", "run"], env, s.state_dir),
    }
    result = Run(s, {}, device_car, {}, {})
    writer = KafkaWriter.from_settings(s, s.topic_telemetry, stage="test.plant")
    failure: list[BaseException] = []
    try:
        for w in workers.values():
            w.wait_running()
        started = time.perf_counter()

        def simulate() -> None:
            try:
                sim.run()
            except BaseException as exc:  # reported by the fixture
                failure.append(exc)

        thread = threading.Thread(target=simulate, daemon=True)
        thread.start()

        def event_time() -> int:
            return sim.start_ms + int((time.perf_counter() - started) * sim.time_scale * 1000)

        def future() -> None:
            values = car_values(sim.fleet.cars[future_dev.car_id], event_time())
            signals = encode_signals(values, future_dev.encoding)
            result.planted["future"] = plant(writer, s, future_dev.device_id, YEAR_2100_MS, 10**9, signals)

        def big() -> None:
            blob = {"Vehicle.Diagnostics.Dump": "x" * BIG_BYTES}
            result.planted["big"] = plant(writer, s, big_dev.device_id, event_time(), 10**9 + 1, blob)

        broker_back = threading.Thread(target=private_stack.kafka.start, daemon=True)

        def redis_restart() -> None:
            time.sleep(10)  # the outage itself, not synchronisation
            private_stack.redis.start()

        redis_back = threading.Thread(target=redis_restart, daemon=True)

        def broker_down() -> None:  # kill -9 now, start again in the background (it takes a few seconds)
            private_stack.kafka.kill()
            broker_back.start()

        def redis_down() -> None:  # kill -9 now, start again 10 s later in the background
            private_stack.redis.kill()
            redis_back.start()

        steps = [
            (0.15, "planted a year-2100 event", future),
            (0.25, "kill -9 enrichment worker", workers["enrich"].kill9),
            (0.45, "broker kill -9 (restarting)", broker_down),
            (0.75, "redis kill -9 (restarting 10 s later)", redis_down),
            (0.85, "planted a 5 MB event", big),
        ]
        alerts_killed = False
        while thread.is_alive() or steps or not alerts_killed:
            progress = sim.sent / EVENTS
            if steps and (progress >= steps[0][0] or not thread.is_alive()):
                _at, what, act = steps.pop(0)
                act()
                result.faults.append(f"{what} at {100 * progress:.0f}% of the run")
            if not alerts_killed and any(r.status == 500 for r in hook.requests):
                workers["alerts"].kill9()  # in the middle of the webhook's retries
                alerts_killed = True
                result.faults.append(f"kill -9 alerts worker mid-retry at {100 * progress:.0f}% of the run")
            if not thread.is_alive() and not steps and not alerts_killed:
                assert wait_until(lambda: bool(hook.requests), 180), workers["alerts"].tail()
                continue
            time.sleep(0.1)  # pacing the fault schedule against the simulator's progress
        thread.join()
        broker_back.join()
        redis_back.join()
        assert not failure, failure
        result.truth = orjson.loads((tmp / "truth.json").read_bytes())
        result.swap = sim.swapped[0]
        result.device_car.update({d.device_id: d.car_id for d in sim.fleet.devices.values()})
        collect(result, s)  # the telemetry (what was produced)

        # Drain: every accepted event enriched (distinct ids), then the states and the alerts settle.
        enriched = TopicReader(s, s.topic_enriched, lambda m: result.enriched_ids.add(_event_id(m)))
        dlq = TopicReader(s, s.topic_dlq, lambda m: result.letters.append(orjson.loads(m.value() or b"{}")))

        def drained() -> bool:
            dlq.read()
            enriched.read()
            return result.telemetry_ids - set(result.dead_ids()) <= result.enriched_ids

        mark = time.monotonic()
        wait_until(drained, 300, interval=1.0)
        result.faults.append(f"drained {time.monotonic() - mark:.0f}s after the run")
        enriched.close()
        dlq.close()
        result.newest = newest_accepted(result, s)

        def states_match() -> bool:
            result.states = states(s)
            return not state_mismatches(result)

        mark = time.monotonic()
        wait_until(states_match, 60, interval=2.0)
        result.faults.append(f"states settled in {time.monotonic() - mark:.0f}s")
        result.outliers = read_all(s, s.topic_outliers)
        expected = {inc for inc in _incident_ids(result.outliers, result.expected_incidents())}

        def alerts_settled() -> bool:
            told = _hook_statuses(hook.accepted())
            return all(told.get(i, [])[-1:] == ["resolved"] for i in expected)

        mark = time.monotonic()
        wait_until(alerts_settled, 90, interval=1.0)
        result.faults.append(f"alerts settled in {time.monotonic() - mark:.0f}s")
        time.sleep(5)  # a window in which duplicate notifications would arrive (several group intervals)
        result.hooks = hook.accepted()
        result.mails = list(mailbox.mails)
        for name, w in workers.items():
            result.restarts[name] = w.restarts()
            result.faults.append(f"{name}: {w.restarts()} restarts")
    finally:
        for w in workers.values():
            w.stop()
        hook.close()
        mailbox.close()
    # The same input without faults: fresh output topics and keys, both flows to the end of the input.
    token = f"r{uuid.uuid4().hex[:6]}"
    clean = s.model_copy(update={
        "topic_enriched": f"{token}.enriched", "topic_outliers": f"{token}.outliers",
        "topic_dlq": f"{token}.dlq", "snapshot_prefix": f"{token}:snap:", "state_prefix": f"{token}:state:",
        "history_dir": tmp / "replay", "state_dir": tmp / "replay-state",
    })  # fmt: skip
    create_topics(clean.kafka_bootstrap, topic_specs(clean))
    mark = time.monotonic()
    run_to_eof("snapshot", clean, tmp / "replay-snapshot.log")
    run_to_eof("enrich", clean, tmp / "replay-enrich.log")
    result.replay_outliers = read_all(clean, clean.topic_outliers)
    result.faults.append(f"fault-free replay took {time.monotonic() - mark:.0f}s")
    print("\nfaults injected:\n  " + "\n  ".join(result.faults))  # shown with -s / on failure
    yield result


def _event_id(msg: Message) -> str:
    head = (msg.value() or b"")[:200]
    start = head.index(b'"event_id":"') + 12
    return head[start : head.index(b'"', start)].decode()


def _incident_ids(outliers: list[dict[str, Any]], expected: list[tuple[str, int]]) -> list[str]:
    wanted = set(expected)
    return sorted({o["incident_id"] for o in outliers if (o["rule_id"], o["car_id"]) in wanted})


def _hook_statuses(accepted: dict[str, bytes]) -> dict[str, list[str]]:
    """Incident id -> the statuses the ops receiver was told, in order of the deliveries' alerts."""
    told: dict[str, list[str]] = defaultdict(list)
    for body in accepted.values():
        for alert in orjson.loads(body)["alerts"]:
            told[alert["incidentId"]].append(alert["status"])
    for statuses in told.values():
        statuses.sort(key=lambda st: st == "resolved")
    return told


# -- the checks --------------------------------------------------------------------------------------------


def test_workers_survive_the_outages(run: Run) -> None:
    """Only the kills restarted a worker: the broker and Redis outages were waited out."""
    assert run.restarts == {"snapshot": 0, "enrich": 1, "alerts": 1}


def test_no_event_is_lost(run: Run) -> None:
    assert len(run.telemetry_ids) >= EVENTS
    accepted = run.telemetry_ids - set(run.dead_ids())
    missing = accepted - run.enriched_ids
    assert not missing, f"{len(missing)} events never enriched, e.g. {sorted(missing)[:5]}"
    assert run.enriched_ids <= accepted  # nothing enriched that was dead-lettered or never produced


def test_the_dead_letters_are_exactly_the_planted_ones(run: Run) -> None:
    assert run.dead_ids() == {run.planted["big"]: "too_large", run.planted["future"]: "future_timestamp"}


def test_the_latest_state_is_the_newest_event_of_each_car(run: Run) -> None:
    assert len(run.newest) >= VEHICLES
    assert not state_mismatches(run)


def check_notified_once(run: Run, rules: set[str]) -> None:
    expected = [(rule, car) for rule, car in run.expected_incidents() if rule in rules]
    incidents: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for o in run.outliers:
        incidents[(o["rule_id"], o["car_id"])][o["incident_id"]].append(o)
    told = _hook_statuses(run.hooks)
    for rule, car in expected:
        found = incidents.get((rule, car), {})
        seen = {i: ([e["status"] for e in events], told.get(i)) for i, events in found.items()}
        assert len(found) == 1, f"{rule} car {car}: one incident expected, got (outliers, told ops) {seen}"
        [(incident, events)] = found.items()
        # ops (send_resolved: true): firing then resolved, or one message carrying both when it was already
        # over when first notified — never anything twice
        assert told.get(incident) in (["firing", "resolved"], ["resolved"]), (rule, car, seen)
        if rule == "headlights-left-on":  # audience=customer: one e-mail to the renting customer
            customer = events[0]["snapshot"]["reservation"]["customer_email"]
            mails = {m.message_id for m in run.mails if customer in m.to and f"car {car}" in m.subject}
            assert len(mails) == 1, (car, customer, [m.subject for m in run.mails if customer in m.to])


def test_every_condition_incident_is_notified_once_per_receiver(run: Run) -> None:
    """Incidents of rules on signal values (headlights, 12 V battery): start = the first event showing it."""
    check_notified_once(run, {"headlights-left-on", "low-12v-battery"})


def test_every_silence_incident_is_notified_once_per_receiver(run: Run) -> None:
    """Incidents of the timer rule device-silent: start = the device's last event + the threshold."""
    check_notified_once(run, {"device-silent"})


def test_no_false_incident(run: Run) -> None:
    expected = set(run.expected_incidents())
    fired = {(o["rule_id"], o["car_id"]) for o in run.outliers if o["status"] == "firing"}
    false = fired - expected
    evidence = [o for o in run.outliers if (o["rule_id"], o["car_id"]) in false]
    assert false == set(), (evidence, run.faults, run.swap)
    per_incident = defaultdict(set)
    for o in run.outliers:
        per_incident[(o["rule_id"], o["car_id"])].add(o["incident_id"])
    assert all(len(ids) == 1 for ids in per_incident.values()), per_incident


def test_the_same_incident_ids_as_a_run_without_faults(run: Run) -> None:
    faulty = {o["incident_id"] for o in run.outliers}
    clean = {o["incident_id"] for o in run.replay_outliers}
    assert set(_incident_ids(run.outliers, run.expected_incidents())) <= faulty
    assert faulty == clean
