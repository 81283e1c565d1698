"""The API on the real Redis filled by the real flows (snapshot + enrichment as worker processes, the fleet
simulator on real Kafka): state correctness, every filter, stable pages while the flows write, SSE of state
changes and incidents, resuming with Last-Event-ID, ABAC on the simulated fleet."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from enrich.settings import Settings
from simulator.run import SimConfig, Simulation
from stack.procs import wait_until
from tests.integration.api_util import api_process, cleanup, create_key
from tests.integration.pipeline import running, vehicle_states
from tests.test_schemas import Target

pytestmark = pytest.mark.integration


class SseReader(threading.Thread):
    """Collects (id, event, data) of an SSE stream in the background."""

    def __init__(self, url: str, token: str, last_event_id: str | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.last = url, token, last_event_id
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        self.stop = threading.Event()
        self.status = 0

    def run(self) -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server went away at the end of the test
            self._read()

    def _read(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.last:
            headers["Last-Event-ID"] = self.last
        with httpx.stream("GET", self.url, headers=headers, timeout=httpx.Timeout(5, read=60)) as r:
            self.status = r.status_code
            eid, kind, data = "", "", ""
            for line in r.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith("id: "):
                    eid = line[4:]
                elif line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif line == "" and kind:
                    self.events.append((eid, kind, orjson.loads(data)))
                    eid, kind, data = "", "", ""


def all_pages(base: str, token: str, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        for _ in range(10_000):
            q = {**params, **({"cursor": cursor} if cursor else {})}
            r = http.get("/v1/vehicles", params=q)
            assert r.status_code == 200, r.text
            page = r.json()
            out += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return out
    raise AssertionError("no end")


def test_api_on_state_written_by_the_flows(pipeline_settings: Settings, tmp_path: Path) -> None:
    s = pipeline_settings
    ops = create_key(s, "ops", role="ops")
    beta = create_key(s, "partner", environment="beta")
    cfg = SimConfig(
        vehicles=120,
        rate=2500,
        duration=15,  # long enough for several list passes while the flows write, on a loaded machine
        scenarios=["headlights-left-on"],
        incidents_per_scenario=2,
        cdc_rate=4,
        ground_truth=tmp_path / "truth.json",
    )
    sim = Simulation(cfg, s)
    try:
        with running(["snapshot", "enrich"], s, tmp_path), api_process(s, tmp_path / "api.log") as base:
            fleet_sse = SseReader(f"{base}/v1/events", ops)
            fleet_sse.start()
            wait_until(lambda: fleet_sse.status == 200, timeout=10)
            producer = threading.Thread(target=sim.run, daemon=True)
            producer.start()
            # pages stay stable while the flows keep writing: each pass returns every car once, in order
            assert wait_until(lambda: len(vehicle_states(s)) >= 60, timeout=60)
            passes = 0
            while producer.is_alive() and passes < 20:
                known = set(vehicle_states(s))
                got = [v["car_id"] for v in all_pages(base, ops, limit=7)]
                assert got == sorted(set(got)), "a car twice or out of order"
                assert known <= set(got), known - set(got)
                passes += 1
            producer.join(timeout=60)
            assert passes >= 1  # at least one full listing while the flows were writing
            assert wait_until(lambda: len(vehicle_states(s)) == cfg.vehicles, timeout=60)

            def incidents() -> list[dict[str, Any]]:
                r = httpx.get(f"{base}/v1/incidents", headers={"Authorization": f"Bearer {ops}"})
                items: list[dict[str, Any]] = r.json()["items"]
                return items

            assert wait_until(lambda: len(incidents()) >= 1, timeout=90), "no incident from the flows"
            assert wait_until(lambda: any(k == "incident" for _i, k, _d in fleet_sse.events), timeout=30), (
                len(fleet_sse.events),
                fleet_sse.events[-1:] and fleet_sse.events[-1][:2],
                fleet_sse.is_alive(),
            )
            check_states_and_filters(base, ops, beta, s)
            check_resume(base, ops, fleet_sse, s)
            fleet_sse.stop.set()
    finally:
        cleanup(s)


def check_states_and_filters(base: str, ops: str, beta: str, s: Settings) -> None:
    states = vehicle_states(s)
    validator = Target("vehicle-state", None).validator()
    listed = {v["car_id"]: v for v in all_pages(base, ops, limit=50)}
    assert set(listed) == set(states)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {ops}"}) as http:
        for car in list(states)[:10]:
            body = http.get(f"/v1/vehicles/{car}").json()
            now = vehicle_states(s)[car]
            doc = {k: v for k, v in body.items() if k not in ("tags", "active_incidents")}
            validator.validate(doc)
            assert doc["version"] <= now["version"] and doc["car"] == now["car"]
    # every filter against a brute-force filter over the documents in Redis (flows idle now: stable)
    docs = list(vehicle_states(s).values())
    sample = docs[0]["car"]
    t_mid = sorted(d["last_seen"] for d in docs)[len(docs) // 2]
    lats = sorted(d["location"]["lat"] for d in docs if d["location"])
    lons = sorted(d["location"]["lon"] for d in docs if d["location"])
    box = (lats[len(lats) // 4], lons[len(lons) // 4], lats[3 * len(lats) // 4], lons[3 * len(lons) // 4])
    active = {
        i["car_id"]
        for i in httpx.get(
            f"{base}/v1/incidents", params={"status": "firing"}, headers={"Authorization": f"Bearer {ops}"}
        ).json()["items"]
    }
    cases: list[tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = [
        ({"fleet": sample["fleet"]}, lambda d: d["car"]["fleet"] == sample["fleet"]),
        ({"model": sample["model"]}, lambda d: d["car"]["model"] == sample["model"]),
        ({"status": "MAINTENANCE"}, lambda d: d["car"]["status"] == "MAINTENANCE"),
        ({"status": "ACTIVE"}, lambda d: d["car"]["status"] == "ACTIVE"),
        ({"environment": "beta"}, lambda d: d["car"]["environment"] == "beta"),
        ({"has_active_incident": "true"}, lambda d: d["car_id"] in active),
        ({"has_active_incident": "false"}, lambda d: d["car_id"] not in active),
        ({"last_seen_before": t_mid}, lambda d: d["last_seen"] < t_mid),
        ({"last_seen_after": t_mid}, lambda d: d["last_seen"] > t_mid),
        (
            {"bbox": ",".join(map(str, box))},
            lambda d: box[0] <= d["location"]["lat"] <= box[2] and box[1] <= d["location"]["lon"] <= box[3],
        ),
        (
            {"fleet": sample["fleet"], "status": "ACTIVE", "last_seen_after": t_mid},
            lambda d: (
                d["car"]["fleet"] == sample["fleet"]
                and d["car"]["status"] == "ACTIVE"
                and d["last_seen"] > t_mid
            ),
        ),
    ]
    for params, pred in cases:
        want = sorted(d["car_id"] for d in docs if pred(d))
        got = [v["car_id"] for v in all_pages(base, ops, limit=9, **params)]
        assert got == want, params
    assert any(d["car"]["status"] == "MAINTENANCE" for d in docs), "the simulator's CDC moved no car"
    # the partner key: only beta vehicles that are not at stage prod, and 404 on the others
    want_beta = sorted(
        d["car_id"] for d in docs if d["car"]["environment"] == "beta" and d["car"]["stage"] != "prod"
    )
    assert want_beta and [v["car_id"] for v in all_pages(base, beta, limit=13)] == want_beta
    hidden = next(d["car_id"] for d in docs if d["car"]["environment"] == "prod")
    r = httpx.get(f"{base}/v1/vehicles/{hidden}", headers={"Authorization": f"Bearer {beta}"})
    assert r.status_code == 404


def check_resume(base: str, ops: str, first: SseReader, s: Settings) -> None:
    """Reconnect with the id of an event in the middle of what the stream still retains: get exactly the
    events after it."""
    import redis

    from stores.vehicles.layout import Keys
    from stores.vehicles.model import stream_id_after

    events = list(first.events)
    states = [e for e in events if e[1] == "state"]
    assert states and all("car_id" in d and "signals" in d for _i, _k, d in states)
    oldest: Any = redis.Redis.from_url(s.redis_url).xrange(Keys.of(s.state_prefix).changes, count=1)
    assert oldest
    first_kept = oldest[0][0].decode()
    retained = [i for i, e in enumerate(events) if not stream_id_after(first_kept, e[0].partition(".")[0])]
    assert retained, "the stream trimmed every event the first reader saw"
    mid = retained[len(retained) // 2]
    resume = SseReader(f"{base}/v1/events", ops, last_event_id=events[mid][0])
    resume.start()
    expected = [(i, k) for i, k, _d in events[mid + 1 :]]
    got = wait_until(lambda: len(resume.events) >= len(expected), timeout=60)
    resume.stop.set()
    assert got, (len(resume.events), len(expected), resume.status, resume.events[:1] and resume.events[0][:2])
    assert [(i, k) for i, k, _d in resume.events[: len(expected)]] == expected
