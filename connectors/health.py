"""Whether the process can reach Kafka and Redis right now, as seen by its own clients.

Every client of the engine reports to the monitor of its dependency: a failed call (``failure``) and the
first call that works again (``recovered``). The monitor turns that into

* the gauge ``enrich_dependency_up{dependency}`` (1 up, 0 down),
* the counter ``enrich_dependency_outages_total{dependency}`` (one per up → down transition),
* the counter ``enrich_dependency_retries_total{dependency}`` (every failed attempt that will be retried),
* one WARNING line when an outage starts, one every ``REMIND_S`` while it lasts, one INFO line when it ends,
* ``generation``: incremented at the end of every outage, so caches that may have missed invalidations
  while the dependency was away can notice and drop what they hold.

Invariant: a monitor is down from the first failure until the next success, whichever thread sees them. A
failure within ``FLAP_S`` of a recovery continues the same outage (e.g. Redis accepting connections while it
still loads its data, or a broker answering before its partitions are ready): counted and logged once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Literal

from prometheus_client import Counter, Gauge

Dependency = Literal["kafka", "redis"]
REMIND_S = 15.0
FLAP_S = 5.0

log = logging.getLogger("enrich.health")

DEPENDENCY_UP = Gauge(
    "enrich_dependency_up", "1 while the dependency answers, 0 during an outage", ["dependency"]
)
OUTAGES = Counter("enrich_dependency_outages_total", "Outages seen (up -> down transitions)", ["dependency"])
RETRIES = Counter("enrich_dependency_retries_total", "Failed attempts retried with backoff", ["dependency"])


class DependencyMonitor:
    def __init__(self, name: Dependency) -> None:
        self.name = name
        self.up = True
        self.down_since: float | None = None
        self.failures = 0  # in the current outage
        self.generation = 0
        self._last_log = 0.0
        self._recovered_at = float("-inf")
        self._outage_started = 0.0
        self._lock = threading.Lock()
        DEPENDENCY_UP.labels(name).set(1)

    def failure(self, error: BaseException | str, *, what: str = "") -> None:
        """A call failed and will be retried."""
        RETRIES.labels(self.name).inc()
        now = time.monotonic()
        with self._lock:
            self.failures += 1
            if self.up and now - self._recovered_at < FLAP_S:  # the same outage, not over after all
                self.up = False
                self.down_since = self._outage_started
                DEPENDENCY_UP.labels(self.name).set(0)
            elif self.up:
                self.up = False
                self.failures = 1
                self.down_since = self._outage_started = now
                self._last_log = now
                OUTAGES.labels(self.name).inc()
                DEPENDENCY_UP.labels(self.name).set(0)
                log.warning("%s unreachable%s: %s; waiting and retrying with backoff", self.name,
                            f" ({what})" if what else "", error)  # fmt: skip
            elif now - self._last_log >= REMIND_S:
                self._last_log = now
                log.warning("%s still unreachable after %.0fs (%d failed attempts): %s", self.name,
                            now - (self.down_since or now), self.failures, error)  # fmt: skip

    def recovered(self) -> None:
        """A call worked. Cheap when already up (called on hot paths). ``failures`` keeps counting until a
        new outage starts."""
        if self.up:
            return
        with self._lock:
            if self.up:
                return
            took = time.monotonic() - (self.down_since or time.monotonic())
            log.info("%s reachable again after %.1fs (%d failed attempts)", self.name, took, self.failures)
            self.up = True
            self.down_since = None
            self._recovered_at = time.monotonic()
            self.generation += 1
            DEPENDENCY_UP.labels(self.name).set(1)

    def outage_s(self) -> float:
        """Seconds since the current outage started (0 while up)."""
        since = self.down_since
        return 0.0 if since is None else time.monotonic() - since


_MONITORS: dict[Dependency, DependencyMonitor] = {}
_MONITORS_LOCK = threading.Lock()


def monitor(name: Dependency) -> DependencyMonitor:
    """The process-wide monitor of one dependency."""
    found = _MONITORS.get(name)
    if found is None:
        with _MONITORS_LOCK:
            found = _MONITORS.get(name)
            if found is None:
                found = _MONITORS[name] = DependencyMonitor(name)
    return found
