"""The state core (enrich.pipeline.state): fold, rules and timers in event time, on in-memory inputs."""

from __future__ import annotations

import pickle
import random
from collections.abc import Collection, Mapping
from typing import Any

import orjson
import pytest

from enrich.asof import BEGINNING, Merged, Timeline
from enrich.pipeline.join import CarEvents
from enrich.pipeline.state import BucketInput, StateCore, StateOut, public_bytes
from enrich.pipeline.timers import Timers
from enrich.pipeline.watermark import Watermark
from enrich.rules.engine import RuleEngine
from enrich.rules.model import load_rules
from enrich.telemetry import Telemetry

T0 = 1_790_000_000_000
LIGHTS = "Vehicle.Body.Lights.Beam.Low.IsOn"
ENGINE = "Vehicle.Powertrain.CombustionEngine.IsRunning"
DOORS = [f"Vehicle.Cabin.Door.Row{r}.{s}Side.IsOpen" for r in (1, 2) for s in ("Driver", "Passenger")]
CAR_ROW = {"car_id": 1, "fleet": "busan"}


def parked(lights: bool, **more: Any) -> dict[str, Any]:
    return {LIGHTS: lights, ENGINE: False, **dict.fromkeys(DOORS, False), **more}


def engine(*ids: str) -> RuleEngine:
    rules = load_rules(None)
    return RuleEngine([r for r in rules if not ids or r.id in ids])


class Devices:
    """A snapshot of which car each device belongs to, behind the ``Lookup`` port."""

    def __init__(self, **cars: int) -> None:
        self.cars = dict(cars)

    def __call__(self, device_ids: Collection[str]) -> Mapping[str, Timeline | None]:
        return {
            d: Timeline([BEGINNING], [Merged({"device": {"device_id": d, "car_id": self.cars[d]}}, {}, 1)])
            if d in self.cars
            else None
            for d in device_ids
        }


def feed(
    core: StateCore,
    partition: str,
    events: list[tuple[int, Telemetry]],
    *,
    idle: bool = False,
    devices: int = 0,
) -> StateOut:
    cars: dict[int, CarEvents] = {}
    for car, tel in events:
        ce = cars.setdefault(car, CarEvents([], devices=devices))
        ce.add(tel, ({**CAR_ROW, "car_id": car}, {"reservation": None}))
    progress = max((t.ts for _c, t in events), default=0)
    return core.process(BucketInput(cars, partition, progress, idle), 0)


def outliers(out: StateOut | list[StateOut]) -> list[tuple[str, str, int, int | None]]:
    outs = out if isinstance(out, list) else [out]
    docs = [orjson.loads(b) for o in outs for _car, b in o.outliers]
    return [(d["rule_id"], d["status"], d["starts_at"], d["ends_at"]) for d in docs]


def test_for_deadline_fires_at_its_own_time_once_the_watermark_passes() -> None:
    core = StateCore(engine("headlights-left-on"), Devices(d1=1, d2=2))
    assert outliers(feed(core, "p0", [(1, Telemetry("d1", T0, 1, parked(True)))])) == []
    # p1 moves on, but p0 (where car 1 reports) is only quiet, not idle: nothing may fire yet
    assert outliers(feed(core, "p1", [(2, Telemetry("d2", T0 + 120_000, 1, {"Vehicle.Speed": 1.0}))])) == []
    # p0's source says it is idle: the watermark is p1's time; the deadline is evaluated at T0 + 60 s
    fired = feed(core, "p0", [], idle=True)
    assert outliers(fired) == [("headlights-left-on", "firing", T0, None)]
    off = feed(core, "p0", [(1, Telemetry("d1", T0 + 200_000, 2, parked(False)))])
    assert outliers(off) == [("headlights-left-on", "resolved", T0, T0 + 200_000)]


def test_a_silence_in_a_backlog_fires_at_its_data_defined_time_before_the_next_event() -> None:
    core = StateCore(engine("device-silent"), Devices(d1=1, d2=2))
    feed(core, "p1", [(2, Telemetry("d2", T0, 1, {"Vehicle.Speed": 1.0}))])
    # One batch of p0 holds d1 at T0 and at T0 + 900 s; the watermark (p1) is still at T0.
    out = feed(core, "p0", [(1, Telemetry("d1", T0, 1, {})), (1, Telemetry("d1", T0 + 900_000, 2, {}))])
    assert outliers(out) == [
        ("device-silent", "firing", T0 + 600_001, None),
        ("device-silent", "resolved", T0 + 600_001, T0 + 900_000),
    ]


def test_a_device_swapped_out_of_the_car_stops_counting() -> None:
    def run(snapshot: Devices) -> list[tuple[str, str, int, int | None]]:
        core = StateCore(engine("device-silent"), snapshot)
        got = outliers(feed(core, "p0", [(1, Telemetry("d1", T0, 1, {}))]))
        for i in range(1, 20):  # d2 (same car, other partition) keeps reporting for 950 s
            got += outliers(feed(core, "p1", [(1, Telemetry("d2", T0 + i * 50_000, i, {}))]))
        return got + outliers(feed(core, "p0", [], idle=True))

    assert run(Devices(d1=1, d2=1)) == [("device-silent", "firing", T0 + 600_001, None)]  # d1 is silent
    assert run(Devices(d2=1)) == []  # d1 was removed from the car: its silence is not the car's


def random_stream(seed: int) -> list[tuple[str, int, Telemetry]]:
    """(partition, car, event) for 6 cars on 2 partitions over ~30 min: lights left on, short and long
    silences, flapping battery — in partition order with per-car event-time order."""
    rng = random.Random(seed)
    out = []
    for car in range(1, 7):
        dev, part = f"d{car}", f"p{car % 2}"
        t, seq = T0, 0
        while t < T0 + 1_800_000:
            seq += 1
            lights = 300_000 < t - T0 < 500_000 and car % 3 == 0
            volts = 11.0 if (t - T0) // 200_000 % 2 and car % 2 else 12.5
            out.append((part, car, Telemetry(dev, t, seq, parked(lights, **{
                "Vehicle.LowVoltageBattery.CurrentVoltage": volts}))))  # fmt: skip
            gap = rng.choice([5_000, 20_000, 40_000]) if not (car == 4 and seq == 30) else 700_000
            t += gap
    out.sort(key=lambda x: (x[2].ts, x[1]))
    return out


def run_stream(stream: list[tuple[str, int, Telemetry]], cores: int, batch: int) -> set[tuple[Any, ...]]:
    """Feed a stream to ``cores`` buckets (cars by id) in batches of ``batch`` events per partition;
    every bucket hears every partition's report, as in the flow."""
    buckets = [StateCore(engine(), Devices(**{f"d{c}": c for c in range(1, 7)})) for _ in range(cores)]
    per_part: dict[str, list[tuple[int, Telemetry]]] = {}
    for part, car, tel in stream:
        per_part.setdefault(part, []).append((car, tel))
    found: set[tuple[Any, ...]] = set()
    chunks = {p: [evs[i : i + batch] for i in range(0, len(evs), batch)] for p, evs in per_part.items()}
    for i in range(max(len(c) for c in chunks.values())):
        for part, parts in chunks.items():
            if i < len(parts):
                for b, core in enumerate(buckets):
                    mine = [(c, t) for c, t in parts[i] if c % cores == b]
                    if not mine:  # the partition report still reaches the bucket
                        core.watermark.observe(part, max(t.ts for _c, t in parts[i]), False)
                    for o in [feed(core, part, mine)] if mine else []:
                        found |= {(d["incident_id"], *x) for d, x in zip(
                            [orjson.loads(b) for _c, b in o.outliers], outliers(o), strict=True)}  # fmt: skip
    for core in buckets:
        for part in chunks:
            found |= set(outliers(feed(core, part, [], idle=True)))
    return found


def test_incidents_are_the_same_however_the_input_is_batched_or_split() -> None:
    stream = random_stream(5)
    one = run_stream(stream, cores=1, batch=1)
    assert any(x[1] == "headlights-left-on" for x in one) and any(x[1] == "device-silent" for x in one)
    assert any(x[1] == "low-12v-battery" for x in one)
    assert run_stream(stream, cores=1, batch=40) == one
    assert run_stream(stream, cores=2, batch=7) == one
    assert run_stream(stream, cores=3, batch=1000) == one


def two_device_stream(seed: int) -> list[tuple[str, int, Telemetry]]:
    """Cars with two devices on different partitions: the telematics unit sends the lights and engine,
    the battery monitor the voltage, often at the same event time."""
    rng = random.Random(seed)
    out = []
    for car in range(1, 5):
        for dev, part in ((f"t{car}", "p0"), (f"b{car}", "p1")):
            t, seq = T0, 0
            while t < T0 + 1_500_000:
                seq += 1
                if dev.startswith("t"):
                    lights = 200_000 < t - T0 < 400_000 + car * 20_000
                    signals = parked(lights)
                else:
                    signals = {
                        "Vehicle.LowVoltageBattery.CurrentVoltage": 11.0 if (t - T0) // 150_000 % 2 else 12.5
                    }
                out.append((part, car, Telemetry(dev, t, seq, signals)))
                t += rng.choice([10_000, 20_000, 30_000]) if not (dev == "b2" and seq == 20) else 650_000
    return out


def run_partitions(
    stream: list[tuple[str, int, Telemetry]], batch: dict[str, int], cores: int
) -> set[tuple[Any, ...]]:
    """Deliver each partition in batches of its own size, partitions taking turns; buckets by car."""
    devices = Devices(**{f"{k}{c}": c for c in range(1, 5) for k in "tb"})
    buckets = [StateCore(engine(), devices) for _ in range(cores)]
    queues = {
        p: [(c, t) for q, c, t in sorted(stream, key=lambda x: x[2].ts) if q == p] for p in ("p0", "p1")
    }
    found: set[tuple[Any, ...]] = set()

    def take(o: StateOut) -> None:
        found.update(
            (orjson.loads(b)["incident_id"], *x) for (_c, b), x in zip(o.outliers, outliers(o), strict=True)
        )

    first = True
    while any(queues.values()):
        for part, q in queues.items():
            # first every device's first event (all at T0), so each car's partitions are known
            size = sum(1 for _c, t in q if t.ts == T0) if first else batch[part]
            chunk, queues[part] = q[:size], q[size:]
            if not chunk:
                continue
            for b, core in enumerate(buckets):
                mine = [(c, t) for c, t in chunk if c % cores == b]
                if mine:
                    take(feed(core, part, mine))
                else:
                    core.watermark.observe(part, max(t.ts for _c, t in chunk), False)
        first = False
    for core in buckets:
        for part in queues:
            take(feed(core, part, [], idle=True))
    return found


def test_a_car_on_two_partitions_sees_its_events_in_event_time_order() -> None:
    stream = two_device_stream(3)
    one = run_partitions(stream, {"p0": 1, "p1": 1}, cores=1)
    assert {x[1] for x in one} >= {"headlights-left-on", "low-12v-battery", "device-silent"}
    assert run_partitions(stream, {"p0": 50, "p1": 3}, cores=1) == one  # p0 runs far ahead of p1
    assert run_partitions(stream, {"p0": 2, "p1": 40}, cores=2) == one  # p1 runs ahead, two buckets


def test_out_of_order_events_never_regress_state_or_rules() -> None:
    core = StateCore(engine("headlights-left-on"), Devices(d1=1))
    feed(core, "p0", [(1, Telemetry("d1", T0 + 10_000, 5, parked(False)))])
    late = feed(core, "p0", [(1, Telemetry("d1", T0, 1, parked(True, **{"Vehicle.Speed": 3.0})))])
    doc = orjson.loads(public_bytes(late.states[1]))
    assert doc["signals"][LIGHTS]["value"] is False  # the newer value stays
    assert doc["signals"]["Vehicle.Speed"]["value"] == 3.0  # a signal only the late event carried
    assert core.cars[1].alerts == {}  # rules never saw the lights "on"


def test_a_recovery_snapshot_resumes_exactly() -> None:
    stream = random_stream(11)
    half = len(stream) // 2

    def run(resume_at: int | None) -> tuple[list[Any], dict[int, Any]]:
        core = StateCore(engine(), Devices(**{f"d{c}": c for c in range(1, 7)}))
        got: list[Any] = []
        states: dict[int, Any] = {}
        for i, (part, car, tel) in enumerate(stream):
            if i == resume_at:
                snap = pickle.loads(pickle.dumps(core.snapshot()))
                core = StateCore(engine(), Devices(**{f"d{c}": c for c in range(1, 7)}), snap)
            out = feed(core, part, [(car, tel)])
            got += outliers(out)
            for c, body in out.states.items():
                doc = orjson.loads(public_bytes(body))
                states[c] = {k: v for k, v in doc.items() if k != "updated_at"}
        return got, states

    assert run(half) == run(None)


def test_timers_are_lazy_and_cost_only_what_is_due() -> None:
    timers = Timers(resolution_ms=1000)
    for car in range(10_000):
        timers.file(car, T0 + 600_000 + car)
    timers.file(5, T0 + 700_000)  # later than filed: kept at the earlier one
    timers.file(6, T0 + 1_000)  # earlier: moved
    assert timers.filed(5) == T0 + 600_005 and timers.filed(6) == T0 + 1_000
    assert timers.due(T0 + 500_000) == [(T0 + 1_000, 6)]
    assert timers.due(T0 + 500_000) == []
    due = timers.due(T0 + 600_002)
    assert due == [(T0 + 600_000, 0), (T0 + 600_001, 1), (T0 + 600_002, 2)]
    timers.cancel(3)
    assert [k for _t, k in timers.due(T0 + 600_004)] == [4] and len(timers) == 10_000 - 6


def test_watermark_idleness_and_monotony() -> None:
    wm = Watermark()
    assert wm.observe("a", 100, False) == 100
    assert wm.observe("b", 50, False) == 100  # never backwards
    assert wm.observe("a", 300, False) == 100  # b holds it
    assert wm.observe("b", 50, True) == 300  # b is idle
    assert wm.observe("b", 200, False) == 300  # b is back, behind: still never backwards
    assert wm.observe("a", 400, True) == 300 and wm.observe("b", 350, True) == 401  # all idle: past newest


def test_the_end_of_a_bounded_input_releases_what_waits_for_other_partitions() -> None:
    core = StateCore(engine("headlights-left-on"), Devices(t1=1, b1=1))
    feed(core, "p1", [(1, Telemetry("b1", T0, 1, {"Vehicle.Speed": 0.0}))])
    held = feed(core, "p0", [(1, Telemetry("t1", T0 + i * 10_000, i, parked(True))) for i in range(1, 10)])
    assert held.states == {} and core.cars[1].held  # p1 has not got past them yet
    end = core.finish(0)
    assert orjson.loads(public_bytes(end.states[1]))["signals"][LIGHTS]["ts"] == T0 + 90_000
    assert outliers(end) == [("headlights-left-on", "firing", T0 + 10_000, None)]


def test_the_end_of_what_kafka_holds_folds_held_events_without_firing_deadlines() -> None:
    core = StateCore(engine("headlights-left-on"), Devices(t1=1, b1=1))
    feed(core, "p1", [(1, Telemetry("b1", T0, 1, {"Vehicle.Speed": 0.0}))])
    feed(core, "p0", [(1, Telemetry("t1", T0 + i * 10_000, i, parked(True))) for i in range(1, 10)])
    end = core.drain(0)
    assert orjson.loads(public_bytes(end.states[1]))["signals"][LIGHTS]["ts"] == T0 + 90_000
    assert outliers(end) == [("headlights-left-on", "firing", T0 + 10_000, None)]  # at an event, not a timer
    assert not core.cars[1].held and not core.watermark.idle


@pytest.mark.parametrize("first", ["p0", "p1"])
def test_a_car_with_two_devices_is_in_event_time_order_from_its_first_event(first: str) -> None:
    """The join says the car has two devices: its first events wait for both partitions, so the arrival
    order of the partitions changes nothing (the incident starts at the first lights-on reading)."""
    core = StateCore(engine("headlights-left-on"), Devices(a=1, b=1), partitions=["p0", "p1"])
    batches = {
        "p0": [(1, Telemetry("a", T0 + 100_000, 2, parked(True)))],
        "p1": [(1, Telemetry("b", T0 + 10_000, 1, parked(True)))],
    }
    second = "p1" if first == "p0" else "p0"
    out = feed(core, first, batches[first], devices=2)
    assert out.states == {} and core.cars[1].held  # the other device has not been heard from
    outs = [out, feed(core, second, batches[second], devices=2), core.finish(0)]
    assert outliers(outs) == [("headlights-left-on", "firing", T0 + 10_000, None)]


def test_the_watermark_waits_for_every_required_partition() -> None:
    wm = Watermark(required=frozenset({"a", "b"}))
    assert wm.observe("a", 100, False) is None  # b has not reported: no event time yet
    assert wm.observe("b", 0, True) == 100  # b is idle: a alone holds it
    assert wm.observe("a", 300, False) == 300
