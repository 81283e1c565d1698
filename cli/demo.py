"""``enrich demo``: run the whole pipeline on the local stack with the fleet simulator and show it working."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, TopicPartition
from rich.console import Console
from rich.table import Table

from cli.demo_alerts import LocalReceivers, show_deliveries, start_alerts_worker
from cli.demo_api import show_api, start_api
from cli.demo_flatten import run_flatten_demo
from enrich.pipeline.state import public_document
from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from simulator.scenarios import SCENARIOS


def topic_counts(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Messages currently in each topic (high minus low watermark, summed over partitions)."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"demo-{uuid.uuid4().hex}"}
    )
    try:
        out: dict[str, int] = {}
        md = consumer.list_topics(timeout=10)
        for topic in topics:
            total = 0
            for p in md.topics[topic].partitions if topic in md.topics else {}:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                total += high - low
            out[topic] = total
        return out
    finally:
        consumer.close()


def latest_message(settings: Settings, topic: str) -> bytes | None:
    """The newest message of partition 0 of ``topic``."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"demo-{uuid.uuid4().hex}",
            "log_level": 0,
        }
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        if high <= low:
            return None
        consumer.assign([TopicPartition(topic, 0, high - 1)])
        for _ in range(20):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                value: bytes | None = msg.value()
                return value
            err = msg.error() if msg is not None else None
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                return None
        return None
    finally:
        consumer.close()


def _start_flows(settings: Settings, log_dir: Path) -> list[subprocess.Popen[bytes]]:
    """Start the snapshot and enrichment workers (with recovery under the state dir)."""
    procs = []
    log_dir.mkdir(parents=True, exist_ok=True)
    for name in ("snapshot", "enrich"):
        with open(log_dir / f"flow-{name}.log", "ab") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cli.main", "flow", name, "--metrics-port", "0"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def _wait_caught_up(settings: Settings, console: Console, target: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    done = 0
    while time.monotonic() < deadline:
        done = topic_counts(settings, [settings.topic_enriched])[settings.topic_enriched]
        if done >= target:
            break
        time.sleep(0.5)
    return done


def _booking_role(settings: Settings) -> str:
    """The child role that names the renting customer (the simulator's reservations)."""
    from enrich.tables import load_model
    from simulator.shape import Shape

    booking = Shape(load_model(settings.tables_file)).booking
    return booking.name if booking is not None else ""


def _show_states(settings: Settings, console: Console, truth: dict[str, Any]) -> None:
    client = redis.Redis.from_url(settings.redis_url)
    incident_cars = [i["car_id"] for i in truth["incidents"] if not i["control"]][:3]
    keys = [f"{settings.state_prefix}car:{car}" for car in incident_cars]
    table = Table("car", "model", "last seen", "km/h", "engine", "low beam", "12 V", "customer")
    for raw in client.mget(keys):
        if raw is None:
            continue
        st = public_document(orjson.loads(raw))
        sig = {k: v["value"] for k, v in st["signals"].items()}
        car = st["car"] or {}
        res = st.get(_booking_role(settings)) or {}
        table.add_row(
            str(st["car_id"]),
            str(car.get("model", "?")),
            time.strftime("%H:%M:%S", time.gmtime(st["last_seen"] / 1000)),
            f"{sig.get('Vehicle.Speed', '?')}",
            "on" if sig.get("Vehicle.Powertrain.CombustionEngine.IsRunning") else "off",
            "on" if sig.get("Vehicle.Body.Lights.Beam.Low.IsOn") else "off",
            f"{sig.get('Vehicle.LowVoltageBattery.CurrentVoltage', '?')}",
            res.get("customer_email", "-"),
        )
    n_states = sum(1 for _ in client.scan_iter(match=f"{settings.state_prefix}car:*", count=1000))
    console.rule(f"latest vehicle state in Redis ({n_states:,} vehicles; three with injected outliers)")
    console.print(table)
    if incident_cars:
        key = f"{settings.state_prefix}car:{incident_cars[0]}"
        console.print(f"  read one yourself: redis-cli GET {key}  (the stored record: values and stamps)",
                      emoji=False, markup=False, highlight=False)  # fmt: skip


RULE_OF = {
    "headlights-left-on": "headlights-left-on",
    "low-battery": "low-12v-battery",
    "device-silent": "device-silent",
}


def _show_outliers(settings: Settings, console: Console, truth: dict[str, Any], since_wall_ms: int) -> None:
    """The outlier events of this run, next to the simulator's ground truth."""
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"demo-{uuid.uuid4().hex}",
         "auto.offset.reset": "earliest", "enable.partition.eof": True}
    )  # fmt: skip
    consumer.subscribe([settings.topic_outliers])
    events: list[dict[str, Any]] = []
    eofs, parts = 0, settings.stream_partitions
    deadline = time.monotonic() + 15
    while eofs < parts and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            err = msg.error()
            if err is not None:
                eofs += err.code() == KafkaError._PARTITION_EOF
            else:
                events.append(orjson.loads(msg.value() or b"{}"))
    consumer.close()
    events = [e for e in events if e["generated_at"] >= since_wall_ms]  # this run's only
    table = Table("rule", "car", "status", "since (event time)", "customer", "expected by ground truth")
    expected = {(RULE_OF[i["scenario"]], i["car_id"]) for i in truth["incidents"] if i["expect_alert"]}
    controls = {(RULE_OF[i["scenario"]], i["car_id"]) for i in truth["incidents"] if i["control"]}
    for e in sorted(events, key=lambda e: (e["rule_id"], e["car_id"], e["status"] != "firing"))[-24:]:
        key = (e["rule_id"], e["car_id"])
        verdict = "yes" if key in expected else ("CONTROL - should not alert" if key in controls else "-")
        res = e["snapshot"].get(_booking_role(settings)) or {}
        table.add_row(e["rule_id"], str(e["car_id"]), e["status"],
                      time.strftime("%H:%M:%S", time.gmtime(e["starts_at"] / 1000)),
                      res.get("customer_email", "-"), verdict)  # fmt: skip
    console.rule(f"outliers ({settings.topic_outliers}): {len(events)} events this run")
    console.print(table)
    fired = {(e["rule_id"], e["car_id"]) for e in events if e["status"] == "firing"}
    console.print(f"ground truth: {len(expected & fired)} of {len(expected)} injected incidents fired; "
                  f"{len(controls & fired)} of {len(controls)} control vehicles alerted")  # fmt: skip


def run_demo(settings: Settings, console: Console, *, vehicles: int, rate: float, duration: float) -> None:
    demo_started_ms = int(time.time() * 1000)
    topics = [
        settings.topic_outliers,
        settings.topic_telemetry,
        *settings.cdc_topics.values(),
        settings.topic_enriched,
        settings.topic_dlq,
    ]
    before = topic_counts(settings, topics)
    console.rule("workers")
    log_dir = Path(settings.state_dir) / "logs"
    procs = _start_flows(settings, log_dir)
    receivers = LocalReceivers()
    procs.append(start_alerts_worker(settings, receivers, log_dir))
    api_proc, api_base = start_api(settings, log_dir)
    procs.append(api_proc)
    console.print(
        f"started the CDC snapshot flow, the enrichment flow and the alerts worker (logs in {log_dir}); "
        f"a local SMTP mailbox on 127.0.0.1:{receivers.smtp_port} and a webhook receiver at "
        f"{receivers.hook_url}",
        highlight=False,
    )
    truth = Path(settings.state_dir) / "demo-ground-truth.json"
    config = SimConfig(
        vehicles=vehicles,
        rate=rate,
        duration=duration,
        scenarios=list(SCENARIOS),
        ground_truth=truth,
    )
    sim = Simulation(config, settings)
    console.rule("fleet simulator")
    console.print(
        f"{vehicles} cars, {len(sim.fleet.devices)} devices, "
        f"{len(sim.injections)} injected outliers/controls; "
        f"{rate:,.0f} events/s for {duration:.0f}s, event time x{sim.time_scale:.0f}"
    )
    report = sim.run(lambda sent, r: console.print(f"  {sent:>8} events  {r:>9,.0f}/s", highlight=False))
    console.print(
        f"sent {report.events:,} telemetry events ({report.rate_achieved:,.0f}/s) "
        f"and {report.cdc_messages:,} CDC messages ({config.cdc_format})"
    )
    target = topic_counts(settings, [settings.topic_telemetry])[settings.topic_telemetry]
    console.print("waiting for the enrichment flow to catch up ...")
    done = _wait_caught_up(settings, console, target)
    after = topic_counts(settings, topics)
    table = Table("topic", "messages added", "total")
    for topic in topics:
        table.add_row(topic, f"{after[topic] - before.get(topic, 0):,}", f"{after[topic]:,}")
    console.rule("data in Kafka")
    console.print(table)
    sample = latest_message(settings, settings.topic_telemetry)
    if sample is not None:
        console.rule(f"latest telemetry event ({settings.topic_telemetry}, partition 0)")
        console.print_json(sample.decode())
    doc = orjson.loads(truth.read_bytes())
    _show_states(settings, console, doc)
    _show_outliers(settings, console, doc, demo_started_ms)
    show_api(settings, console, api_base)
    deadline = time.monotonic() + 15  # notifications leave after group_wait; give the worker a moment
    fired = sum(1 for i in doc["incidents"] if i["expect_alert"])
    while time.monotonic() < deadline and len(receivers.hooks) < fired:
        time.sleep(0.5)
    show_deliveries(console, receivers)
    cars = [(c.car_id, c.model, c.fleet) for c in sim.fleet.cars.values()]
    run_flatten_demo(settings, console, receivers, cars, Path(settings.state_dir) / "demo-flatten")
    receivers.close()
    history = Path(settings.history_dir or Path(settings.state_dir) / "history")
    deadline = time.monotonic() + 3 * settings.snapshot_interval_s
    files: list[Path] = []
    while time.monotonic() < deadline and not files:  # written at the end of the next epoch
        files = list(history.glob("*/date=*/hour=*/*.parquet"))
        time.sleep(0.5)
    console.print(f"Parquet history: {len(files)} files under {history} (raw and enriched, by date/hour)")
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)
    console.print(f"enriched {done - before.get(settings.topic_enriched, 0):,} of {report.events:,} events; "
                  "workers stopped (the stack keeps running: `enrich stack down` stops it)")  # fmt: skip
    kinds = Counter((i["scenario"], "control" if i["control"] else "incident") for i in doc["incidents"])
    console.rule(f"ground truth ({truth})")
    for (scenario, kind), n in sorted(kinds.items()):
        console.print(f"  {scenario:<20} {kind:<9} {n}")
