"""``enrich demo``: run the whole pipeline on the local stack with the fleet simulator and show every part of
the product working.

The demo is a list of steps (``STEPS``), each a function of the shared ``Demo`` context, shown in order:
the workers start, the simulator publishes a fleet, the flows catch up (``enrich status``), then Kafka, the
latest state in Redis, the outliers against the ground truth, the HTTP API (keys, a vehicle with its ETag,
what each key sees, server-sent events), the alert e-mails and webhooks, the batch flattening with its drift
alert, the Parquet history, ``enrich sql`` over it, and the fleet console's address with a key. A new part
of the product is one function and one line in ``STEPS``; the context carries what later parts need (the
API's address and keys, the flattened tables). With ``keep`` the workers (and the console) run on until
Ctrl-C.

Output: ``cli/console.py`` (rich on a terminal, tables folded cleanly when narrower than they need,
``--plain`` for logs). Everything the libraries log — librdkafka, the workers, Python warnings — goes to
``<state>/logs/``, never to the screen.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis
from confluent_kafka import Consumer, KafkaError, TopicPartition
from rich.table import Table

from cli.console import CliConsole
from cli.demo_alerts import LocalReceivers, show_deliveries, start_alerts_worker
from cli.demo_api import show_api, start_api
from cli.demo_console import show_console, show_sql, wait_for_interrupt
from cli.demo_flatten import run_flatten_demo
from enrich.pipeline.state import public_document
from enrich.settings import Settings
from simulator.run import SimConfig, SimReport, Simulation
from simulator.scenarios import SCENARIOS


@dataclass
class Demo:
    """What the steps share. Filled in as the demo goes: the API's address and keys after ``workers`` and
    ``api``, the flattened tables after ``flatten``."""

    settings: Settings
    console: CliConsole
    vehicles: int
    rate: float
    duration: float
    log_dir: Path
    keep: bool = False  # leave the workers and the console running until Ctrl-C
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    receivers: LocalReceivers | None = None
    api_base: str = ""
    api_keys: dict[str, str] = field(default_factory=dict)  # "ops" (every fleet), "partner" (beta)
    sim: Simulation | None = None
    report: SimReport | None = None
    truth_file: Path = Path()
    truth: dict[str, Any] = field(default_factory=dict)
    before: dict[str, int] = field(default_factory=dict)  # messages per topic when the demo started
    enriched: int = 0
    flatten_out: Path | None = None  # the Parquet tables of the flatten step

    @property
    def topics(self) -> list[str]:
        s = self.settings
        return [s.topic_telemetry, *s.cdc_topics.values(), s.topic_enriched, s.topic_outliers, s.topic_dlq]


def kafka_logger(settings: Settings) -> dict[str, Any]:
    """Client settings that send librdkafka's own log lines to Python logging (the demo's log file)."""
    return {"bootstrap.servers": settings.kafka_bootstrap, "logger": logging.getLogger("demo.kafka")}


def topic_counts(settings: Settings, topics: list[str]) -> dict[str, int]:
    """Messages currently in each topic (high minus low watermark, summed over partitions)."""
    consumer = Consumer({**kafka_logger(settings), "group.id": f"demo-{uuid.uuid4().hex}"})
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
    consumer = Consumer({**kafka_logger(settings), "group.id": f"demo-{uuid.uuid4().hex}"})
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


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a worker the demo starts: its settings, metrics off (the demo's workers must not
    take the ports of workers you run yourself; `enrich status` shows them all the same)."""
    return {**os.environ, **settings.as_env(), "ENRICH_METRICS_PORT": "0", **extra}


# -- the steps -------------------------------------------------------------------------------------------
def start_workers(d: Demo) -> None:
    d.console.rule("workers")
    d.before = topic_counts(d.settings, d.topics)
    env = worker_env(d.settings)
    for name in ("snapshot", "enrich"):
        with open(d.log_dir / f"flow-{name}.log", "ab") as log:
            d.procs.append(subprocess.Popen([sys.executable, "-m", "cli.main", "flow", name], env=env,
                                            stdout=log, stderr=subprocess.STDOUT))  # fmt: skip
    d.receivers = LocalReceivers()
    d.procs.append(start_alerts_worker(d.settings, d.receivers, d.log_dir))
    api, d.api_base = start_api(d.settings, d.log_dir)
    d.procs.append(api)
    d.console.print(
        f"started the CDC snapshot flow, the enrichment flow, the alerts worker and the HTTP API "
        f"({d.api_base}); logs in {d.log_dir}. A local SMTP mailbox listens on "
        f"127.0.0.1:{d.receivers.smtp_port} and a webhook receiver at {d.receivers.hook_url}.",
        highlight=False,
    )


def simulate(d: Demo) -> None:
    d.truth_file = Path(d.settings.state_dir) / "demo-ground-truth.json"
    config = SimConfig(vehicles=d.vehicles, rate=d.rate, duration=d.duration, scenarios=list(SCENARIOS),
                       ground_truth=d.truth_file)  # fmt: skip
    d.sim = Simulation(config, d.settings)
    d.console.rule("fleet simulator")
    d.console.print(
        f"{d.vehicles} cars, {len(d.sim.fleet.devices)} devices, {len(d.sim.injections)} injected "
        f"outliers/controls; {d.rate:,.0f} events/s for {d.duration:.0f}s, event time x{d.sim.time_scale:.0f}"
    )
    d.report = d.sim.run(
        lambda sent, r: d.console.print(f"  {sent:>8} events  {r:>9,.0f}/s", highlight=False)
    )
    d.console.print(
        f"sent {d.report.events:,} telemetry events ({d.report.rate_achieved:,.0f}/s) "
        f"and {d.report.cdc_messages:,} CDC messages ({config.cdc_format})"
    )
    d.truth = orjson.loads(d.truth_file.read_bytes())


def catch_up(d: Demo, timeout: float = 120.0) -> None:
    """Wait until every telemetry event is enriched, then show the workers as `enrich status` does."""
    from cli.status import render
    from stack.status import collect

    s = d.settings
    target = topic_counts(s, [s.topic_telemetry])[s.topic_telemetry]
    d.console.print("waiting for the enrichment flow to catch up ...")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.enriched = topic_counts(s, [s.topic_enriched])[s.topic_enriched]
        if d.enriched >= target:
            break
        time.sleep(0.5)
    workers = s.state_dir.resolve() / "workers"
    mine = {p.pid for p in d.procs}
    deadline = time.monotonic() + 10  # the heartbeats (every 2 s) catch up with the flows
    while time.monotonic() < deadline and not all(r.caught_up for r in collect(workers) if r.pid in mine):
        time.sleep(0.5)
    d.console.rule("workers on this host (enrich status)")
    render(collect(workers), d.console, color=not d.console.plain, workers_dir=workers)


def _booking_role(settings: Settings) -> str:
    """The child role that names the renting customer (the simulator's reservations)."""
    from enrich.tables import load_model
    from simulator.shape import Shape

    booking = Shape(load_model(settings.tables_file)).booking
    return booking.name if booking is not None else ""


def show_topics(d: Demo) -> None:
    after = topic_counts(d.settings, d.topics)
    table = Table("topic", "added", "total")
    for topic in d.topics:
        table.add_row(topic, f"{after[topic] - d.before.get(topic, 0):,}", f"{after[topic]:,}")
    d.console.rule("data in Kafka")
    d.console.print(table)
    sample = latest_message(d.settings, d.settings.topic_telemetry)
    if sample is not None:
        d.console.rule(f"latest telemetry event ({d.settings.topic_telemetry}, partition 0)")
        d.console.print_json(sample.decode())


def show_states(d: Demo) -> None:
    s = d.settings
    client = redis.Redis.from_url(s.redis_url)
    incident_cars = [i["car_id"] for i in d.truth["incidents"] if not i["control"]][:3]
    table = Table("car", "model", "seen", "km/h", "engine", "low beam", "12 V", "renting customer")
    for raw in client.mget([f"{s.state_prefix}car:{car}" for car in incident_cars]):
        if raw is None:
            continue
        st = public_document(orjson.loads(raw))
        sig = {k: v["value"] for k, v in st["signals"].items()}
        car, res = st["car"] or {}, st.get(_booking_role(s)) or {}
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
    n_states = sum(1 for _ in client.scan_iter(match=f"{s.state_prefix}car:*", count=1000))
    d.console.rule(f"latest vehicle state in Redis ({n_states:,} vehicles)")
    d.console.print(table)
    if incident_cars:
        key = f"{s.state_prefix}car:{incident_cars[0]}"
        hint = f"  cars with injected outliers; the stored record: redis-cli GET {key}"
        d.console.print(hint, emoji=False, markup=False, highlight=False)


RULE_OF = {
    "headlights-left-on": "headlights-left-on",
    "low-battery": "low-12v-battery",
    "device-silent": "device-silent",
}


def show_outliers(d: Demo) -> None:
    """The outlier events of this run, next to the simulator's ground truth."""
    s = d.settings
    consumer = Consumer({**kafka_logger(s), "group.id": f"demo-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.partition.eof": True})  # fmt: skip
    consumer.subscribe([s.topic_outliers])
    events: list[dict[str, Any]] = []
    eofs, deadline = 0, time.monotonic() + 15
    while eofs < s.stream_partitions and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            err = msg.error()
            if err is not None:
                eofs += err.code() == KafkaError._PARTITION_EOF
            else:
                events.append(orjson.loads(msg.value() or b"{}"))
    consumer.close()
    events = [e for e in events if e["generated_at"] >= d.started_ms]  # this run's only
    incidents = d.truth["incidents"]
    expected = {(RULE_OF[i["scenario"]], i["car_id"]) for i in incidents if i["expect_alert"]}
    controls = {(RULE_OF[i["scenario"]], i["car_id"]) for i in incidents if i["control"]}
    table = Table("rule", "car", "status", "since", "ground truth")
    for e in sorted(events, key=lambda e: (e["rule_id"], e["car_id"], e["status"] != "firing"))[-24:]:
        key = (e["rule_id"], e["car_id"])
        verdict = "injected" if key in expected else ("CONTROL: must not alert" if key in controls else "-")
        since = time.strftime("%H:%M:%S", time.gmtime(e["starts_at"] / 1000))
        table.add_row(e["rule_id"], str(e["car_id"]), e["status"], since, verdict)
    d.console.rule(f"outliers ({s.topic_outliers}): {len(events)} events this run")
    d.console.print(table)
    fired = {(e["rule_id"], e["car_id"]) for e in events if e["status"] == "firing"}
    d.console.print(f"ground truth: {len(expected & fired)} of {len(expected)} injected incidents fired; "
                    f"{len(controls & fired)} of {len(controls)} control vehicles alerted")  # fmt: skip


def api(d: Demo) -> None:
    car = next((i["car_id"] for i in d.truth["incidents"] if i["expect_alert"]), None)
    d.api_keys = show_api(d.settings, d.console, d.api_base, car)


def deliveries(d: Demo) -> None:
    assert d.receivers is not None
    deadline = time.monotonic() + 15  # notifications leave after group_wait; give the worker a moment
    fired = sum(1 for i in d.truth["incidents"] if i["expect_alert"])
    while time.monotonic() < deadline and len(d.receivers.hooks) < fired:
        time.sleep(0.5)
    show_deliveries(d.console, d.receivers)


def flatten(d: Demo) -> None:
    assert d.receivers is not None and d.sim is not None
    cars = [(c.car_id, c.model, c.fleet) for c in d.sim.fleet.cars.values()]
    work = Path(d.settings.state_dir) / "demo-flatten"
    run_flatten_demo(d.settings, d.console, d.receivers, cars, work)
    d.flatten_out = work / "tables"


def history(d: Demo) -> None:
    path = Path(d.settings.history_dir or Path(d.settings.state_dir) / "history")
    deadline = time.monotonic() + 3 * d.settings.snapshot_interval_s
    files: list[Path] = []
    while time.monotonic() < deadline and not files:  # written at the end of the next epoch
        files = list(path.glob("*/date=*/hour=*/*.parquet"))
        time.sleep(0.5)
    d.console.rule("Parquet history")
    d.console.print(f"{len(files)} files under {path} (raw and enriched, by date/hour)", highlight=False)


def sql(d: Demo) -> None:
    show_sql(d.settings, d.console)


def fleet_console(d: Demo) -> None:
    show_console(d.console, d.api_base, keep=d.keep)


# One entry per part of the product, shown in this order.
STEPS: list[tuple[str, Callable[[Demo], None]]] = [
    ("workers", start_workers),
    ("simulator", simulate),
    ("catch up", catch_up),
    ("kafka", show_topics),
    ("state", show_states),
    ("outliers", show_outliers),
    ("api", api),
    ("alerts", deliveries),
    ("flatten", flatten),
    ("history", history),
    ("sql", sql),
    ("console", fleet_console),
]


def stop_workers(d: Demo) -> None:
    for proc in d.procs:
        proc.terminate()
    for proc in d.procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if d.receivers is not None:
        d.receivers.close()


def summary(d: Demo) -> None:
    sent = d.report.events if d.report else 0
    enriched = d.enriched - d.before.get(d.settings.topic_enriched, 0)
    d.console.print(f"enriched {enriched:,} of {sent:,} events; workers stopped "
                    "(the stack keeps running: `enrich stack down` stops it)")  # fmt: skip
    kinds = Counter((i["scenario"], "control" if i["control"] else "incident") for i in d.truth["incidents"])
    d.console.rule(f"ground truth ({d.truth_file})")
    for (scenario, kind), n in sorted(kinds.items()):
        d.console.print(f"  {scenario:<20} {kind:<9} {n}", highlight=False)


def run_demo(d: Demo) -> None:
    try:
        for _name, step in STEPS:
            step(d)
        if d.keep:
            wait_for_interrupt(d.console)
    finally:
        stop_workers(d)
    summary(d)


@contextlib.contextmanager
def library_output_to(log_file: Path) -> Iterator[None]:
    """While the demo runs, everything written to stderr (librdkafka's own log lines, Python warnings and
    logging) goes to ``log_file``; the demo itself prints to stdout."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_file, "ab") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        root.removeHandler(handler)
        handler.close()
        logging.captureWarnings(False)


def main(
    settings: Settings,
    console: CliConsole,
    *,
    vehicles: int,
    rate: float,
    duration: float,
    keep: bool = False,
) -> int:
    """Bring the stack up (reusing servers that already answer), run the steps; 1 when the demo failed."""
    from stack.manager import Stack

    log_dir = Path(settings.state_dir) / "logs"
    demo_log = log_dir / "demo.log"
    d = Demo(settings, console, vehicles, rate, duration, log_dir, keep)
    failed: Exception | None = None
    with library_output_to(demo_log):
        try:
            timings = Stack(settings).up()
            console.print(f"stack ready ({timings['total']:.1f}s): kafka {settings.kafka_bootstrap}, "
                          f"redis {settings.redis_url}", highlight=False)  # fmt: skip
            run_demo(d)
        except Exception as exc:
            logging.getLogger("demo").exception("the demo failed")
            failed = exc
    if failed is not None:
        console.print(f"demo failed: {type(failed).__name__}: {failed} (details in {demo_log})",
                      highlight=False, markup=False)  # fmt: skip
        return 1
    return 0
