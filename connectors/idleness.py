"""When a source partition may call itself idle: only on the broker's word, never on the consumer's silence.

A partition is idle (it stops holding the event-time watermark back, see ``enrich.pipeline.watermark``) when
nothing was appended to it for ``idle_s``. Not hearing from it proves nothing: the broker may be down (its
producers are buffering and will deliver a backlog when it is back), or this worker may have been paused
(a Redis restart blocks the flow while the producers go on). Calling such a partition idle lets the other
partitions' backlogs carry the watermark past its events before they are read, and timers then fire early
(a false ``device-silent``, an incident id that a fault-free run does not have).

So the source asks the broker. ``IdleProbe.poll`` is called when a read returned nothing and the consumer has
seen the end of the partition (EOF, no record since); at most every ``every_s`` it asks for the partition's
high watermark (a ListOffsets round trip, not the consumer's cached value). Invariants:

* A quiet period starts at a successful answer and lasts while every later answer is the same high
  watermark (nothing appended). A failed or timed-out answer, a different high watermark, or any record read
  (``record``) ends it; so time the broker was unreachable never counts.
* The partition is idle once a quiet period spans ``idle_s`` between two successful answers — so a pause of
  the worker counts only when the broker confirms nothing arrived during it. ``poll`` says so once per quiet
  period; the next record starts over.
* The high watermark may exceed the position by transaction markers (never delivered), so "unchanged", not
  "equal to the position", is the test; records waiting below it would be delivered and end the period.

Pure: the clock and the probe are arguments, so it is tested without a broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable

PROBE_TIMEOUT_S = 0.5  # a slow answer only delays idleness; it never makes a partition idle early


class IdleProbe:
    def __init__(
        self, idle_s: float, every_s: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle_s = idle_s
        self.clock = clock
        self.every_s = min(1.0, idle_s / 4) if every_s is None else every_s
        self.sent = False  # idle was reported for the current quiet period
        self._since: float | None = None  # first answer of the current quiet period
        self._high = -1
        self._due = 0.0

    def record(self) -> None:
        """A record was read: any quiet period is over."""
        self._since = None
        self.sent = False

    def reset(self) -> None:
        """The consumer is not at the end any more, or the broker cannot be reached."""
        self._since = None

    def poll(self, high_watermark: Callable[[], int | None]) -> bool:
        """True (once per quiet period) when the broker confirmed nothing was appended for ``idle_s``.

        ``high_watermark`` asks the broker; it returns None when it has no answer (unreachable, timeout).
        The period is measured from when the first answer had arrived to when the last one was asked for,
        so it never exceeds what the broker vouched for."""
        now = self.clock()
        if self.sent or now < self._due:
            return False
        self._due = now + self.every_s
        high = high_watermark()
        if high is None or high < 0:
            self._since = None
            return False
        if self._since is None or high != self._high:
            self._since, self._high = self.clock(), high
            return False
        if now - self._since >= self.idle_s:
            self.sent = True
            return True
        return False
