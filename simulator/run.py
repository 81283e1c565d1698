"""``enrich simulate``: publish the initial CDC load, then paced telemetry and CDC changes, into Kafka.

Event time runs ``time_scale`` times faster than the wall clock and ends at about "now", so the requested
scenarios fit in a short run and no event lies in the future. Production goes through the engine's one
writer (connectors/kafka_writer.py): no per-message callback, a full queue waits, a broker restart only
delays; the rate is held by a token budget checked every few ms. ``plan_device_swap`` plants a device
swap (delete + insert in the device table, the new device reports from then on) of a chosen car at a
chosen moment, e.g. of a car with an injected incident. The CDC rows take the shape of the configured join
model (``ENRICH_TABLES_FILE``, see ``simulator.shape``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from connectors.kafka_writer import KafkaWriter
from enrich.settings import Settings
from enrich.tables import load_model
from simulator.cdc import CdcEncoder, CdcFormat
from simulator.model import Car, Device, Fleet, car_values, encode_signals, silenced
from simulator.scenarios import ScenarioName, plan_injections, sim_span_needed
from simulator.shape import Shape


@dataclass(slots=True)
class SimConfig:
    vehicles: int = 100
    devices_per_car: int = 1
    rate: float = 1000.0
    duration: float = 10.0
    scenarios: list[ScenarioName] = field(default_factory=list)
    cdc_format: CdcFormat = "debezium"
    seed: int = 1
    time_scale: float | None = None  # None = just fast enough for the scenarios
    incidents_per_scenario: int | None = None  # None = vehicles // 500, at least 1
    cdc_rate: float | None = None  # CDC changes per second; None = rate / 2000, at least 0.5
    ground_truth: Path = Path("ground-truth.json")
    linger_ms: float = 10.0  # the producer's batching (a latency measurement uses what devices would)


@dataclass(slots=True)
class SimReport:
    events: int
    cdc_messages: int
    wall_s: float
    produce_s: float
    rate_achieved: float
    delivery_errors: int
    time_scale: float
    started_at: int
    ended_at: int
    ground_truth: Path


class Simulation:
    def __init__(self, config: SimConfig, settings: Settings, *, now_ms: int | None = None) -> None:
        self.config = config
        self.settings = settings
        self.rng = random.Random(config.seed)
        span_needed = sim_span_needed(config.scenarios)
        self.time_scale = config.time_scale or max(1.0, span_needed / config.duration)
        self.span_s = config.duration * self.time_scale
        now = int(time.time() * 1000) if now_ms is None else now_ms
        self.start_ms = now - int(self.span_s * 1000) + int(config.duration * 1000)
        self.fleet = Fleet(self.rng, config.vehicles, config.devices_per_car, self.start_ms)
        per = config.incidents_per_scenario or max(1, config.vehicles // 500)
        cars = sorted(self.fleet.cars)
        first_device = {d.car_id: d.device_id for d in reversed(list(self.fleet.devices.values()))}
        self.injections = plan_injections(
            self.rng, config.scenarios, cars, first_device,
            per_scenario=per, start_ms=self.start_ms, span_s=self.span_s,
        )  # fmt: skip
        self.pinned: set[int] = set()
        for inj in self.injections:
            car = self.fleet.cars[inj.car_id]
            car.injections.append(inj)
            self.pinned.add(inj.car_id)
            if inj.scenario == "headlights-left-on" and inj.car_id not in self.fleet.active_reservation:
                self.fleet.start_reservation(inj.car_id, self.start_ms - 600_000)
        model = load_model(settings.tables_file)
        self.shape = Shape(model)
        self.cdc = CdcEncoder(config.cdc_format, tables=model.tables)
        self.delivery_errors = 0
        self.cdc_messages = 0
        self.sent = 0  # telemetry events produced so far (read by tests while the run goes on)
        self.swaps: list[tuple[float, int]] = []  # (seconds into the run, car id), planted device swaps
        self.swapped: list[dict[str, Any]] = []  # what the planted swaps did

    def plan_device_swap(self, car_id: int, at_s: float) -> None:
        """Swap the car's (first) device for a new one ``at_s`` wall seconds into the run."""
        if car_id not in self.fleet.cars:
            raise ValueError(f"no car {car_id}")
        self.swaps.append((at_s, car_id))
        self.swaps.sort()

    # -- Kafka -----------------------------------------------------------------------------------------
    def _producer(self) -> KafkaWriter:
        s = self.settings
        return KafkaWriter(s.kafka_bootstrap, s.topic_telemetry, stage="simulator.produce",
                           max_message_bytes=s.kafka_max_message_bytes,
                           config={"linger.ms": self.config.linger_ms})  # fmt: skip

    def _cdc(self, producer: KafkaWriter, table: str, op: Any, row: dict[str, Any], commit_ms: int) -> None:
        for key, value in self.cdc.encode(table, op, row, commit_ms):
            producer.send_to(self.settings.cdc_topic(table), key, value)
            self.cdc_messages += 1

    def _reservation(self, producer: KafkaWriter, op: Any, row: dict[str, Any], commit_ms: int) -> None:
        shaped = self.shape.reservation(row)
        if shaped is not None:
            self._cdc(producer, shaped[0], op, shaped[1], commit_ms)

    def initial_load(self, producer: KafkaWriter) -> None:
        t = self.start_ms - 1000
        shape = self.shape
        for car in self.fleet.cars.values():
            self._cdc(producer, shape.car_table, "load", shape.car(car.row(t)), t)
            for table, row in shape.extra_rows(car.car_id, t):
                self._cdc(producer, table, "load", row, t)
        for device in self.fleet.devices.values():
            self._cdc(producer, shape.device_table, "load", shape.device(device.row()), t)
        for res in self.fleet.reservations.values():
            self._reservation(producer, "load", res.row(), t)
        producer.flush()

    # -- CDC changes during the run --------------------------------------------------------------------
    def swap_device(self, producer: KafkaWriter, car_id: int, t_ms: int) -> tuple[str, str]:
        """Replace the car's first device by a new one (CDC delete + insert). Returns (old, new) ids."""
        old = self.fleet.devices_of(car_id)[0]
        new = self.fleet.new_device(car_id, installed_at=t_ms)
        new.encoding = old.encoding
        del self.fleet.devices[old.device_id]
        self._devices_changed = True
        self._cdc(producer, self.shape.device_table, "delete", self.shape.device(old.row()), t_ms)
        self._cdc(producer, self.shape.device_table, "insert", self.shape.device(new.row()), t_ms)
        return old.device_id, new.device_id

    def random_change(self, producer: KafkaWriter, t_ms: int) -> None:
        free = [c for c in self.rng.sample(sorted(self.fleet.cars), min(8, len(self.fleet.cars)))]
        free = [c for c in free if c not in self.pinned]
        if not free:
            return
        car_id = free[0]
        kind = self.rng.random()
        if kind < 0.4:
            car = self.fleet.cars[car_id]
            car.status = "MAINTENANCE" if car.status == "ACTIVE" else "ACTIVE"
            self._cdc(producer, self.shape.car_table, "update", self.shape.car(car.row(t_ms)), t_ms)
        elif kind < 0.6:
            self.swap_device(producer, car_id, t_ms)
        elif car_id in self.fleet.active_reservation:
            res = self.fleet.end_reservation(car_id, t_ms)
            if res is not None:
                self._reservation(producer, "update", res.row(), t_ms)
        else:
            res = self.fleet.start_reservation(car_id, t_ms)
            self._reservation(producer, "insert", res.row(), t_ms)

    # -- telemetry -------------------------------------------------------------------------------------
    def run(self, progress: Callable[[int, float], None] | None = None) -> SimReport:
        cfg = self.config
        producer = self._producer()
        self.initial_load(producer)
        topic = self.settings.topic_telemetry
        send = producer.send_to
        dumps = orjson.dumps
        cars = self.fleet.cars
        order: list[Device] = list(self.fleet.devices.values())
        self.rng.shuffle(order)
        self._devices_changed = False
        cdc_rate = cfg.cdc_rate if cfg.cdc_rate is not None else max(0.5, cfg.rate / 2000)
        total = int(cfg.rate * cfg.duration)
        sent = 0
        cdc_due = 0.0
        tick = 0.005
        burst_cap = max(1, int(cfg.rate * tick * 4))
        min_burst = max(1, int(cfg.rate * tick))
        idx = 0
        start = time.perf_counter()
        last_report = start
        while sent < total:
            elapsed = time.perf_counter() - start
            owed = min(total, int(cfg.rate * elapsed) + 1) - sent
            if owed <= 0 or (owed < min_burst and sent + owed < total):
                # caught up: sleep until a tick's worth of events is owed (no busy waiting at low rates)
                time.sleep(max(0.0005, (sent + min_burst) / cfg.rate - elapsed))
                continue
            owed = min(owed, burst_cap)
            t_ms = self.start_ms + int(elapsed * self.time_scale * 1000)
            while cdc_rate > 0 and cdc_due <= elapsed * cdc_rate:
                cdc_due += 1
                self.random_change(producer, t_ms)
            while self.swaps and self.swaps[0][0] <= elapsed:
                _at, swap_car = self.swaps.pop(0)
                old_id, new_id = self.swap_device(producer, swap_car, t_ms)
                self.swapped.append(
                    {"car_id": swap_car, "old_device": old_id, "new_device": new_id, "at": t_ms}
                )
            if self._devices_changed:
                order = list(self.fleet.devices.values())
                self.rng.shuffle(order)
                self._devices_changed = False
            n = len(order)
            for _ in range(owed):
                device = order[idx % n]
                idx += 1
                car: Car = cars[device.car_id]
                if car.injections and silenced(device, car, t_ms):
                    continue  # the device is quiet; the budget goes to the next device
                device.seq += 1
                payload: dict[str, Any] = {
                    "device_id": device.device_id,
                    "ts": t_ms,
                    "seq": device.seq,
                    "signals": encode_signals(car_values(car, t_ms), device.encoding),
                }
                send(topic, device.device_id, dumps(payload))
                sent += 1
            self.sent = sent
            producer.poll()
            if progress is not None and time.perf_counter() - last_report >= 1.0:
                last_report = time.perf_counter()
                progress(sent, sent / (last_report - start))
        produce_s = time.perf_counter() - start
        producer.flush()  # waits (and says so) while the broker is away; nothing is dropped
        wall = time.perf_counter() - start
        end_ms = self.start_ms + int(cfg.duration * self.time_scale * 1000)
        self.write_ground_truth(cfg.ground_truth)
        return SimReport(
            events=sent,
            cdc_messages=self.cdc_messages,
            wall_s=wall,
            produce_s=produce_s,
            rate_achieved=sent / wall,
            delivery_errors=self.delivery_errors + producer.rejected,
            time_scale=self.time_scale,
            started_at=self.start_ms,
            ended_at=end_ms,
            ground_truth=cfg.ground_truth,
        )

    def write_ground_truth(self, path: Path) -> None:
        truth = {
            "v": 1,
            "seed": self.config.seed,
            "started_at": self.start_ms,
            "time_scale": self.time_scale,
            "vehicles": self.config.vehicles,
            "devices_per_car": self.config.devices_per_car,
            "incidents": [inj.to_truth() for inj in self.injections],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(orjson.dumps(truth, option=orjson.OPT_INDENT_2))
