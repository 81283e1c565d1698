"""What ``enrich status`` shows: every worker registered on this host, from two kinds of files in
``<state_dir>/workers/``:

* ``<name>.json`` — the supervisor's status of a worker under ``enrich run`` (``stack/supervisor.py``);
* ``<name>.heartbeat.json`` — the heartbeat a worker writes itself (``stack/registry.py``), with its input
  lag, throughput and last logged error.

A worker is **running** while its process lives and its heartbeat is fresh (it was rewritten within
``STALE_AFTER`` intervals), **starting** until it serves, **unresponsive** when it lives but stopped writing
heartbeats, **restarting** while its supervisor waits to start it again, **dead** when it is gone without a
clean exit (SIGKILL, OOM killer, a crash, a failed start, a supervisor that gave up or was killed), and
**stopped** when its supervisor stopped it cleanly. A clean exit of a worker started directly removes its
heartbeat: it is no longer listed. A pid is only taken for the worker when the process's start time matches
the one in its heartbeat, so a reused pid never makes a dead worker look alive.

Pure except for reading the files and asking ``alive(pid, start_time)``: tests pass their own.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from stack.registry import HEARTBEAT_SUFFIX, pid_alive, read_json

State = Literal["running", "starting", "unresponsive", "restarting", "dead", "stopped"]
STALE_AFTER = 5  # heartbeat intervals without a write: unresponsive
MIN_STALE_S = 10.0
Alive = Callable[[int | None, int | None], bool]
KAFKA_READERS = frozenset({"flow-snapshot", "flow-enrich", "alerts"})  # they report input lag


@dataclass(frozen=True, slots=True)
class WorkerRow:
    name: str
    state: State
    kind: str | None = None
    pid: int | None = None
    supervised: bool = False
    started_at: int | None = None  # epoch ms of the current (or last) process
    lag: int | None = None  # summed input lag; None: unknown or no Kafka inputs
    inputs: dict[str, Any] = field(default_factory=dict)
    rate: float | None = None
    unit: str = "records/s"
    restarts: int | None = None  # supervised only
    error: str | None = None
    metrics_url: str | None = None
    url: str | None = None
    waiting_for: list[str] = field(default_factory=list)
    heartbeat_at: int | None = None

    @property
    def healthy(self) -> bool:
        return self.state in ("running", "starting", "stopped")

    @property
    def caught_up(self) -> bool:
        """Running, and every Kafka input read to its end (workers without Kafka inputs: serving)."""
        if self.state != "running" or self.waiting_for:
            return False
        return self.kind not in KAFKA_READERS or (bool(self.inputs) and self.lag == 0)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy, "caught_up": self.caught_up}


def exit_text(code: int | None) -> str | None:
    """What an exit code says: ``-9`` → killed by SIGKILL, 78 → configuration error, ..."""
    if code is None:
        return None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}" + (" (kill -9 or the OOM killer)" if code == -signal.SIGKILL else "")
    if code == 78:
        return "configuration error (exit 78)"
    if code == 69:
        return "something it needs on this host is taken, e.g. its port (exit 69)"
    return f"exited with {code}"


def _clock(ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else "?"


def _stale(hb: dict[str, Any], now_ms: int) -> bool:
    limit = max(MIN_STALE_S, STALE_AFTER * float(hb.get("interval_s") or 2.0)) * 1000
    return now_ms - int(hb.get("updated_at") or 0) > limit


def _from_heartbeat(hb: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": hb.get("kind"),
        "pid": hb.get("pid"),
        "started_at": hb.get("started_at"),
        "lag": hb.get("lag"),
        "inputs": hb.get("inputs") or {},
        "rate": hb.get("rate"),
        "unit": hb.get("unit") or "records/s",
        "metrics_url": hb.get("metrics_url"),
        "url": hb.get("url"),
        "waiting_for": list(hb.get("waiting_for") or []),
        "heartbeat_at": hb.get("updated_at"),
    }


def direct_row(hb: dict[str, Any], now_ms: int, alive: Alive = pid_alive) -> WorkerRow:
    """A worker started directly (no supervisor): its heartbeat alone."""
    name = str(hb.get("name"))
    base = _from_heartbeat(hb)
    if hb.get("state") == "failed":
        error = hb.get("last_error") or exit_text(hb.get("exit_code"))
        return WorkerRow(name, "dead", **{**base, "lag": None, "rate": None}, error=error)
    if not alive(hb.get("pid"), hb.get("proc_start")):
        error = (f"gone without a clean exit after its last heartbeat at {_clock(hb.get('updated_at'))} "
                 "(killed, e.g. kill -9 or the OOM killer?)")  # fmt: skip
        if hb.get("last_error"):
            error += f"; last logged: {hb['last_error']}"
        return WorkerRow(name, "dead", **{**base, "lag": None, "rate": None}, error=error)
    if _stale(hb, now_ms):
        quiet = (now_ms - int(hb.get("updated_at") or 0)) / 1000
        return WorkerRow(name, "unresponsive", **base, error=f"alive but no heartbeat for {quiet:.0f}s")
    state: State = "starting" if hb.get("state") == "starting" else "running"
    error = f"waiting for {', '.join(base['waiting_for'])}" if base["waiting_for"] else None
    return WorkerRow(name, state, **base, error=error)


def supervised_row(
    sup: dict[str, Any], hb: dict[str, Any] | None, now_ms: int, alive: Alive = pid_alive
) -> WorkerRow:
    """A worker under ``enrich run``: the supervisor's status, with the current child's heartbeat."""
    name = str(sup.get("name"))
    child = sup.get("pid")
    current = hb if hb is not None and child and hb.get("pid") == child else None
    base = _from_heartbeat(current) if current is not None else {"pid": child, "kind": (hb or {}).get("kind")}
    base["started_at"] = sup.get("started_at")
    restarts = int(sup.get("restarts") or 0)
    code = sup.get("last_exit_code")
    error = sup.get("last_error") or exit_text(code)
    common: dict[str, Any] = {**base, "supervised": True, "restarts": restarts}
    if not alive(sup.get("supervisor_pid"), None):
        if sup.get("state") == "stopped":
            if code in (2, 78):  # the supervisor gave up: restarting could not help
                return WorkerRow(name, "dead", **common, error=error or exit_text(code))
            return WorkerRow(name, "stopped", **common, error=None)
        if child and alive(child, (current or {}).get("proc_start")):
            lost = f"its supervisor (pid {sup.get('supervisor_pid')}) is gone: it is not restarted if it dies"
            return WorkerRow(name, "running", **common, error=lost)
        gone = f"its supervisor (pid {sup.get('supervisor_pid')}) is gone without a clean stop"
        return WorkerRow(name, "dead", **{**common, "pid": None},
                         error=gone + (f"; last error: {error}" if error else ""))  # fmt: skip
    state = sup.get("state")
    if state == "restarting":
        when = f"; next start at {_clock(sup.get('next_start_at'))}" if sup.get("next_start_at") else ""
        return WorkerRow(name, "restarting", **{**common, "pid": None}, error=(error or "exited") + when)
    if state == "stopped":
        return WorkerRow(name, "stopped", **common)
    if not alive(child, None):
        return WorkerRow(name, "restarting", **{**common, "pid": None}, error=error or "exited")
    if current is None or current.get("state") == "starting":
        return WorkerRow(name, "starting", **common, error=error if restarts else None)
    if _stale(current, now_ms):
        quiet = (now_ms - int(current.get("updated_at") or 0)) / 1000
        return WorkerRow(name, "unresponsive", **common, error=f"alive but no heartbeat for {quiet:.0f}s")
    waiting = f"waiting for {', '.join(common['waiting_for'])}" if common.get("waiting_for") else None
    earlier = f"last restart: {error}" if restarts and error else None
    return WorkerRow(name, "running", **common, error=waiting or earlier)


def collect(workers_dir: Path, *, now_ms: int | None = None, alive: Alive = pid_alive) -> list[WorkerRow]:
    """Every worker registered under ``workers_dir``, by name."""
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    if not workers_dir.is_dir():
        return []
    beats: dict[str, dict[str, Any]] = {}
    sups: dict[str, dict[str, Any]] = {}
    for path in workers_dir.iterdir():
        if path.name.startswith(".") or not path.name.endswith(".json"):
            continue
        doc = read_json(path)
        if doc is None:
            continue
        if path.name.endswith(HEARTBEAT_SUFFIX):
            beats[path.name[: -len(HEARTBEAT_SUFFIX)]] = doc
        elif "supervisor_pid" in doc:
            sups[path.name[: -len(".json")]] = doc
    rows = [supervised_row(sup, beats.get(name), now, alive) for name, sup in sups.items()]
    rows += [direct_row(hb, now, alive) for name, hb in beats.items() if name not in sups]
    return sorted(rows, key=lambda r: r.name)


def forget(workers_dir: Path, rows: list[WorkerRow]) -> list[str]:
    """Remove the files of workers that are dead or stopped (``enrich status --prune``)."""
    gone = []
    for row in rows:
        if row.state not in ("dead", "stopped"):
            continue
        for suffix in (".json", HEARTBEAT_SUFFIX):  # logs stay: they are the evidence
            (workers_dir / f"{row.name}{suffix}").unlink(missing_ok=True)
        gone.append(row.name)
    return gone
