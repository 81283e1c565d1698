"""IdleProbe: a partition is idle only when the broker confirms nothing was appended for idle_s."""

from __future__ import annotations

from collections.abc import Callable

from connectors.idleness import IdleProbe


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def probe_of(answers: list[int | None]) -> tuple[Callable[[], int | None], list[float]]:
    asked: list[float] = []

    def high() -> int | None:
        asked.append(0.0)
        return answers[-1]

    return high, asked


def run(probe: IdleProbe, clock: Clock, high: Callable[[], int | None], until: float) -> float | None:
    """Poll every 0.1 s of the fake clock until ``until``; the time idle was reported, if it was."""
    while clock.t < until:
        if probe.poll(high):
            return clock.t
        clock.t = round(clock.t + 0.1, 6)
    return None


def test_idle_once_the_broker_confirmed_the_same_high_watermark_for_idle_s() -> None:
    clock = Clock()
    probe = IdleProbe(2.0, every_s=0.5, clock=clock)
    high, asked = probe_of([42])
    at = run(probe, clock, high, 110.0)
    assert at is not None and 102.0 <= at <= 102.6
    assert len(asked) <= 6  # at most every every_s, not every poll
    assert not probe.poll(high)  # once per quiet period


def test_a_broker_that_does_not_answer_never_counts_as_quiet() -> None:
    clock = Clock()
    probe = IdleProbe(2.0, every_s=0.5, clock=clock)
    answers: list[int | None] = [42]
    high, _ = probe_of(answers)
    assert run(probe, clock, high, 101.5) is None  # quiet for 1.5 s
    answers.append(None)  # broker down for 10 s
    assert run(probe, clock, high, 111.5) is None
    answers.append(42)  # back, nothing appended: idle_s more of confirmed quiet are needed
    at = run(probe, clock, high, 120.0)
    assert at is not None and at >= 113.5


def test_a_pause_counts_only_if_nothing_was_appended_during_it() -> None:
    clock = Clock()
    probe = IdleProbe(2.0, every_s=0.5, clock=clock)
    answers: list[int | None] = [42]
    high, _ = probe_of(answers)
    assert not probe.poll(high)  # quiet period starts
    clock.t += 30  # the worker was paused (a Redis restart) while producers went on
    answers.append(900)
    assert not probe.poll(high)  # the high watermark moved: a new period starts, not idle
    assert run(probe, clock, high, clock.t + 1.9) is None
    clock.t += 0.5
    assert run(probe, clock, high, clock.t + 1.0) is not None


def test_a_paused_worker_with_nothing_appended_is_idle_at_once() -> None:
    clock = Clock()
    probe = IdleProbe(2.0, every_s=0.5, clock=clock)
    assert not probe.poll(lambda: 42)
    clock.t += 30
    assert probe.poll(lambda: 42)


def test_a_record_ends_the_period_and_rearms_the_report() -> None:
    clock = Clock()
    probe = IdleProbe(2.0, every_s=0.5, clock=clock)
    assert run(probe, clock, lambda: 42, 110.0) is not None
    probe.record()
    start = clock.t
    at = run(probe, clock, lambda: 43, start + 10)
    assert at is not None and at - start >= 2.0


def test_reset_starts_the_period_over() -> None:
    clock = Clock()
    probe = IdleProbe(2.0, every_s=0.5, clock=clock)
    assert not probe.poll(lambda: 7)
    clock.t += 1.5
    probe.reset()  # the broker became unreachable
    assert not probe.poll(lambda: 7)
    clock.t += 1.0
    assert not probe.poll(lambda: 7)  # 2.5 s since the first answer, but only 1 s since the reset
    clock.t += 1.0
    assert probe.poll(lambda: 7)
