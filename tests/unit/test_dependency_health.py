"""The dependency monitor: one outage counted and logged once, flaps folded into it, the gauge follows."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from connectors.health import FLAP_S, DependencyMonitor


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"dependency": "kafka"}) or 0.0


def test_outages_are_counted_once_and_flaps_fold_into_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="enrich.health")
    clock = [1000.0]
    monkeypatch.setattr("connectors.health.time.monotonic", lambda: clock[0])
    mon = DependencyMonitor("kafka")
    outages, retries = sample("enrich_dependency_outages_total"), sample("enrich_dependency_retries_total")
    mon.failure("connection refused")
    mon.failure("connection refused")
    assert not mon.up and sample("enrich_dependency_up") == 0
    clock[0] += 3
    mon.recovered()
    assert mon.up and sample("enrich_dependency_up") == 1 and mon.generation == 1
    clock[0] += FLAP_S / 2
    mon.failure("still loading")  # came back only half-way: the same outage
    assert not mon.up and mon.outage_s() == pytest.approx(3 + FLAP_S / 2)
    mon.recovered()
    clock[0] += FLAP_S * 2
    mon.failure("gone again")  # a new outage
    assert sample("enrich_dependency_outages_total") == outages + 2
    assert sample("enrich_dependency_retries_total") == retries + 4
    assert caplog.text.count("kafka unreachable") == 2
    mon.recovered()
    mon.recovered()  # cheap and silent when up
    assert caplog.text.count("reachable again") == 3
