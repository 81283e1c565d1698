"""The console in a real browser (Debian's headless Chromium, driven by playwright) against ``enrich api``:

* on the real pipeline (simulator → Kafka → snapshot and enrichment flows → Redis): the page opens with a key
  typed into its form, the fleet view shows the simulated vehicles, an incident the simulator injects
  appears in the feed within 2 s of the flow emitting it (no reload), the vehicle page draws its charts,
  a partner key sees only its environment's vehicles; then ``enrich sql``'s documented examples on the
  history that run wrote, against counts computed from the events it produced;
* with 10,000 simulated vehicles (states written through the store's real writer, as the flow's sink does):
  first paint and full load times, live-update latency (state written → drawn), keyboard navigation, the
  content security policy, and screenshots (test artifacts under ``test-artifacts/``).
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from stack.procs import wait_until
from stores.history_archive import archive_topic
from stores.history_sql import EXAMPLES, HistorySQL
from tests.conftest import settings_for_test
from tests.integration.api_util import api_process, cleanup, create_key
from tests.integration.console_util import FleetWriter, artifact, chromium
from tests.integration.outputs import read_topic
from tests.integration.pipeline import running, vehicle_states

pytestmark = pytest.mark.integration
VIEWPORT = {"width": 1400, "height": 1000}
LOADED = "() => window.consoleMetrics && window.consoleMetrics.fleetComplete !== null"


def metric(page: Any, expr: str) -> Any:
    return page.evaluate(f"() => window.consoleMetrics && ({expr})")


def legend_total(page: Any) -> int:
    counts = page.eval_on_selector_all(
        "#legend .n", "els => els.map(e => Number(e.textContent.replace(/,/g, '')))"
    )
    return int(sum(counts))


@dataclass
class Live:
    s: Settings
    base: str
    ops: str
    partner: str
    sim: Simulation
    producer: threading.Thread


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    import uuid

    from stack.topics import create_topics, topic_specs

    tmp = tmp_path_factory.mktemp("console")
    token = f"tc{uuid.uuid4().hex[:8]}"
    s = settings_for_test(kafka_bootstrap, redis_url, token, tmp)
    create_topics(s.kafka_bootstrap, topic_specs(s))
    cfg = SimConfig(
        vehicles=160,
        rate=1500,
        duration=10,
        scenarios=["headlights-left-on"],
        incidents_per_scenario=2,
        cdc_rate=2,
        ground_truth=tmp / "truth.json",
    )
    sim = Simulation(cfg, s)
    ops = create_key(s, "ops", role="ops")
    partner = create_key(s, "partner", environment="beta")
    try:
        with (
            running(["snapshot", "enrich"], s, tmp, ENRICH_HISTORY_FLUSH_S="1"),
            api_process(s, tmp / "api.log") as base,
        ):
            yield Live(s, base, ops, partner, sim, threading.Thread(target=sim.run, daemon=True))
    finally:
        cleanup(s)


def test_console_on_the_running_pipeline(live: Live) -> None:
    s, sim = live.s, live.sim
    with chromium() as browser:
        ctx = browser.new_context(bypass_csp=True, viewport=VIEWPORT)  # playwright's polling needs eval
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(live.base + "/")
        page.get_by_label("API key", exact=True).fill("fe_not_a_key")
        page.get_by_role("button", name="Open the console").click()
        page.get_by_role("alert").filter(has_text="not valid").wait_for(timeout=5000)
        page.get_by_label("API key", exact=True).fill(live.ops)
        page.get_by_role("button", name="Open the console").click()
        page.wait_for_function(LOADED)
        live.producer.start()  # the fleet starts driving only now: everything arrives live

        # the fleet view fills with the simulated vehicles, through the event stream
        want = sim.config.vehicles
        assert wait_until(lambda: legend_total(page) == want, timeout=60), legend_total(page)
        assert metric(page, "window.consoleMetrics.events") > 0

        # an injected incident appears in the feed without a reload, within 2 s of its write to the store
        # (the change-stream entry the API's event stream carries); also shown: since the flow's rule fired
        truth_cars = {i.car_id for i in sim.injections if not i.control}
        assert wait_until(lambda: metric(page, "Object.keys(window.consoleMetrics.feedShown).length") > 0, 60)
        shown: dict[str, float] = metric(page, "window.consoleMetrics.feedShown")
        written: dict[str, int] = metric(page, "window.consoleMetrics.feedWritten")
        lags, since_rule, car_of = [], [], {}
        for iid, at in shown.items():
            r = httpx.get(f"{live.base}/v1/incidents/{iid}", headers={"Authorization": f"Bearer {live.ops}"})
            inc = r.json()
            assert inc["car_id"] in truth_cars, inc
            car_of[iid] = inc["car_id"]
            lags.append(at - written[iid])
            since_rule.append(at - inc["generated_at"])
        print(f"incident written -> feed: {[f'{lag:.0f} ms' for lag in lags]}; "
              f"rule fired -> feed: {[f'{lag:.0f} ms' for lag in since_rule]}; "
              f"stream reconnects: {metric(page, 'window.consoleMetrics.reconnects')}")  # fmt: skip
        assert all(lag <= 2000 for lag in lags), lags
        iid = next(iter(shown))
        item = page.locator(f'#feed li[data-incident-id="{iid}"]')
        assert item.is_visible() and "headlights-left-on" in item.inner_text()
        page.screenshot(path=str(artifact("console-pipeline.png")), full_page=True)

        # the vehicle page of that car: attributes, its incident, charts drawn from the history route
        car = car_of[iid]
        item.get_by_role("link").click()
        page.wait_for_function(f"() => location.hash === '#/vehicles/{car}'")
        page.get_by_role("heading", name=f"Car {car}").wait_for()
        assert wait_until(lambda: page.locator(".incident-list li[data-incident-id]").count() >= 1, 10)
        assert page.locator("text=customer_email").count() >= 1  # the active reservation
        assert page.locator("#dev-title ~ h4").count() >= 1  # the device row from /v1/devices
        live.producer.join(timeout=60)
        assert wait_until(
            lambda: (
                page.eval_on_selector_all(
                    "canvas[data-signal]", "cs => cs.filter(c => Number(c.dataset.points || 0) >= 2).length"
                )
                >= 3
            ),
            30,
        ), "speed, 12 V and charge charts"
        labels = page.eval_on_selector_all(
            "canvas[data-signal]", "cs => cs.map(c => c.getAttribute('aria-label'))"
        )
        assert any(lbl.startswith("Speed") for lbl in labels) and any("12 V" in lbl for lbl in labels)
        page.screenshot(path=str(artifact("console-vehicle.png")), full_page=True)

        # a partner key sees only its environment's vehicles (not those at stage prod: the shipped policies)
        docs = vehicle_states(s).values()
        visible = {
            d["car_id"] for d in docs if d["car"]["environment"] == "beta" and d["car"]["stage"] != "prod"
        }
        assert visible
        partner = browser.new_context(bypass_csp=True, viewport=VIEWPORT).new_page()
        partner.goto(f"{live.base}/#key={live.partner}")
        partner.wait_for_function(
            "() => window.consoleMetrics && window.consoleMetrics.fleetComplete !== null"
        )
        assert wait_until(lambda: legend_total(partner) == len(visible), 10), legend_total(partner)
        envs = partner.eval_on_selector_all(
            ".grid-body .row div:nth-child(5)", "els => els.map(e => e.textContent)"
        )
        assert envs and set(envs) == {"beta"}
        assert "key=" not in partner.url  # the key left the address bar (kept in this tab only)
        hidden = next(d["car_id"] for d in docs if d["car_id"] not in visible)
        partner.goto(f"{live.base}/#/vehicles/{hidden}")
        partner.get_by_text("No such vehicle, or not visible with this key.").wait_for()
        # a link with a key that is not valid lands on the sign-in form, saying so
        bad = browser.new_context(bypass_csp=True, viewport=VIEWPORT).new_page()
        bad.goto(f"{live.base}/#key=fe_000000000000_notakey")
        bad.get_by_role("alert").filter(has_text="not valid").wait_for(timeout=10_000)
        assert bad.get_by_label("API key", exact=True).is_visible()
        assert not errors, errors


def test_sql_examples_answer_from_the_history(live: Live) -> None:
    """The documented queries, on the history the pipeline above wrote, against the produced events."""
    s = live.s
    if live.producer.ident is None:
        live.producer.start()
    live.producer.join(timeout=120)
    produced = {}
    for msg in read_topic(s.kafka_bootstrap, s.topic_enriched):
        doc = orjson.loads(msg.value() or b"{}")
        produced[doc["event_id"]] = doc
    assert produced
    root = Path(s.history_dir or "")

    def on_disk() -> int:
        db = HistorySQL(root)
        try:
            return int(db.arrow("select count(*) n from enriched").column("n")[0].as_py())
        finally:
            db.close()

    assert wait_until(lambda: on_disk() >= len(produced), timeout=60), (on_disk(), len(produced))
    outliers = [orjson.loads(m.value() or b"{}") for m in read_topic(s.kafka_bootstrap, s.topic_outliers)]
    assert outliers, "the simulator's incidents fired"
    written = archive_topic(s.kafka_bootstrap, s.topic_outliers, root, "outliers")
    assert sum(written.values()) == len(outliers)
    assert (
        sum(archive_topic(s.kafka_bootstrap, s.topic_outliers, root, "outliers").values()) == 0
    )  # idempotent

    db = HistorySQL(root)
    try:

        def rows(name: str, **params: Any) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = db.arrow(EXAMPLES[name][1], params).to_pylist()
            return out

        def hour(ts: int) -> tuple[dt.date, int]:
            t = dt.datetime.fromtimestamp(ts / 1000, tz=dt.UTC)
            return t.date(), t.hour

        per_hour = Counter((d["car_id"], *hour(d["ts"])) for d in produced.values())
        got = {(r["car_id"], r["date"], r["hour"]): r["events"] for r in rows("events-per-car-per-hour")}
        assert got == dict(per_hour)

        per_day: dict[tuple[str, dt.date], set[str]] = defaultdict(set)
        for o in outliers:
            day = dt.datetime.fromtimestamp(o["starts_at"] / 1000, tz=dt.UTC).date()
            per_day[(o["rule_id"], day)].add(o["incident_id"])
        got_days = {(r["rule_id"], r["day"]): r["incidents"] for r in rows("incidents-per-rule-per-day")}
        assert got_days == {k: len(v) for k, v in per_day.items()}

        car = Counter(d["car_id"] for d in produced.values()).most_common(1)[0][0]
        mine = sorted((d for d in produced.values() if d["car_id"] == car), key=lambda d: (d["ts"], d["seq"]))
        history = rows("signal-history", car=car)
        assert [r["speed_kmh"] for r in history] == [d["signals"].get("Vehicle.Speed") for d in mine]
        assert [r["battery_12v"] for r in history] == [
            d["signals"].get("Vehicle.LowVoltageBattery.CurrentVoltage") for d in mine
        ]
        assert [int(r["at"].timestamp() * 1000) for r in history] == [d["ts"] for d in mine]

        # partition pruning: an unreadable file in another hour is never opened by a query for this hour
        date, hr = hour(mine[0]["ts"])
        # (a later day no event of the run falls in — the next day's hour 00 holds data around midnight;
        # later, because the view takes its schema from the first file in path order)
        other = root / "enriched" / f"date={date + dt.timedelta(days=400)}" / "hour=00"
        other.mkdir(parents=True)
        (other / "broken.parquet").write_bytes(b"not parquet")
        db2 = HistorySQL(root)
        pruned = db2.arrow(EXAMPLES["one-hour"][1], {"date": str(date), "hour": hr}).to_pylist()
        assert sum(r["events"] for r in pruned) == sum(
            1 for d in produced.values() if hour(d["ts"]) == (date, hr)
        )
        with pytest.raises(Exception, match=r"broken\.parquet"):
            db2.arrow("select count(*) from enriched")
        db2.close()
    finally:
        db.close()
    # the same from the command line, as CSV
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "cli.main", "sql", "--example", "incidents-per-rule-per-day", "-f", "csv",
         "--history", str(root)],
        capture_output=True, check=True, env={**__import__("os").environ, **s.as_env()},
    )  # fmt: skip
    lines = out.stdout.decode().strip().splitlines()
    assert lines[0] == '"rule_id","day","incidents"' and len(lines) == 1 + len(per_day)


def test_console_with_ten_thousand_vehicles(
    redis_url: str, kafka_bootstrap: str, tmp_path: Path, unique: Any
) -> None:
    """First paint and live-update latency with 10,000 vehicles; keyboard use; the security policy."""
    token = unique("")[:-1]
    s = Settings(
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        state_prefix=f"{token}:state:",
        api_prefix=f"{token}:api:",
        alerts_prefix=f"{token}:alerts:",
        snapshot_prefix=f"{token}:snap:",
    )
    fleet = FleetWriter(s, 10_000)
    cars = sorted(fleet.fleet.cars)
    t = fleet.now - 40 * 60_000
    for step in range(3):  # three samples per car for the charts (one per 30 s of event time)
        fleet.fill(t + step * 30_000)
    t += 60_000
    key = create_key(s, "ops", role="ops")
    partner = create_key(s, "partner", environment="beta")
    # an incident with a delivery log, for the vehicle page
    row = fleet.fleet.cars[cars[5]].row(0)
    inc = {
        "incident_id": f"low-12v-battery:{cars[5]}:{t}", "fingerprint": "ab12", "rule_id": "low-12v-battery",
        "status": "firing", "severity": "warning", "car_id": cars[5], "device_id": None,
        "labels": {"fleet": row["fleet"]}, "annotations": {"summary": "12 V battery below 11.8 V"},
        "starts_at": t, "ends_at": None, "generated_at": int(time.time() * 1000),
        "snapshot": {"car": row, "reservation": None, "signals": {}},
    }  # fmt: skip
    fleet.write([cars[5]], t, [inc])
    log = {"status": "delivered", "attempts": 2, "last_error": None, "http_status": 200, "at": t, "job": "j1"}
    redis.Redis.from_url(redis_url).hset(
        f"{s.alerts_prefix}log:{inc['incident_id']}", "ops-webhook", orjson.dumps(log)
    )
    try:
        with api_process(s, tmp_path / "api.log") as base, chromium() as browser:
            # the charts' route: the car's samples, authorised like the vehicle itself
            prod = next(c for c in cars if fleet.fleet.cars[c].environment == "prod")
            r = httpx.get(f"{base}/v1/vehicles/{prod}/history", headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200 and r.json()["ts"] == [t - 60_000 + i * 30_000 for i in range(3)]
            assert set(r.json()["signals"]) >= {"Vehicle.Speed", "Vehicle.LowVoltageBattery.CurrentVoltage"}
            r = httpx.get(
                f"{base}/v1/vehicles/{prod}/history", headers={"Authorization": f"Bearer {partner}"}
            )
            assert r.status_code == 404
            # the page under its real content security policy: it runs, nothing is blocked
            strict = browser.new_page(viewport=VIEWPORT)
            violations: list[str] = []
            strict.on(
                "console",
                lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
            )
            strict.goto(f"{base}/#key={key}")
            strict.locator(".grid-body .row").first.wait_for(timeout=20_000)
            assert not violations, violations
            strict.close()

            page = browser.new_context(bypass_csp=True, viewport=VIEWPORT).new_page()
            page.goto(f"{base}/#key={key}")
            page.wait_for_function(LOADED, timeout=20_000)
            first, complete, n = metric(
                page,
                "[consoleMetrics.fleetFirstPaint, consoleMetrics.fleetComplete, consoleMetrics.vehicles]",
            )
            assert n == 10_000 and legend_total(page) == 10_000
            assert page.locator(".grid-body .row").count() < 60  # virtualised: not 10,000 rows in the DOM
            # live: 1,000 cars per batch, 10 batches a second, for 5 s (10,000 state changes per second)
            page.evaluate(
                "() => { window.consoleMetrics.latencies = []; window.consoleMetrics.updates = 0; }"
            )
            start = time.monotonic()
            for k in range(50):
                part = cars[(k % 10) * 1000 : (k % 10 + 1) * 1000]
                fleet.write(part, t + (k + 1) * 1000)
                time.sleep(max(0.0, start + (k + 1) * 0.1 - time.monotonic()))
            assert wait_until(lambda: metric(page, "consoleMetrics.updates") >= 50_000, 15), metric(
                page, "consoleMetrics.updates"
            )
            lat = sorted(metric(page, "consoleMetrics.latencies"))
            p50, p95 = lat[len(lat) // 2], lat[int(len(lat) * 0.95)]
            figures = (
                f"10,000 vehicles: first vehicles drawn {first:.0f} ms, all {complete:.0f} ms after "
                f"navigation; live update (state written -> drawn) p50 {p50:.0f} ms, p95 {p95:.0f} ms "
                f"over {len(lat):,} updates"
            )
            print("\n" + figures)
            artifact("console-10k-figures.txt").write_text(figures + "\n")
            page.screenshot(path=str(artifact("console-10k.png")))
            # The targets are first paint <= 1 s and live p95 <= 500 ms; the figures above are what this run
            # measured. Speed is gated by benchmarks, not timed tests (this machine is shared and noisy): the
            # test fails only on a gross regression, three times the target.
            assert first <= 3000 and complete <= 3000, figures
            assert p95 <= 1500, figures

            # keyboard: filter the table, move with the arrows, open a vehicle with Enter
            page.get_by_label("State", exact=True).select_option("incident")
            assert wait_until(lambda: page.locator(".grid-body .row").count() == 1, 5)
            page.locator("#grid").focus()
            page.keyboard.press("Home")
            page.keyboard.press("Enter")
            page.wait_for_function(f"() => location.hash === '#/vehicles/{cars[5]}'")
            page.get_by_role("heading", name=f"Car {cars[5]}").wait_for()
            deliveries = page.locator(".deliveries tbody tr")
            deliveries.first.wait_for(timeout=10_000)
            assert (
                "ops-webhook" in deliveries.first.inner_text()
                and "delivered" in deliveries.first.inner_text()
            )
            assert wait_until(
                lambda: (
                    page.eval_on_selector_all(
                        "canvas[data-signal]",
                        "cs => cs.filter(c => Number(c.dataset.points || 0) >= 3).length",
                    )
                    >= 3
                ),
                10,
            )
            page.screenshot(path=str(artifact("console-10k-vehicle.png")), full_page=True)
            page.go_back()
            page.locator("#map").focus()
            page.keyboard.press("ArrowRight")
            label = page.locator("#map").get_attribute("aria-label") or ""
            assert label.startswith("Fleet map. Highlighted: car ")
            page.keyboard.press("Enter")
            page.wait_for_function("() => location.hash.startsWith('#/vehicles/')")
    finally:
        cleanup(s)
