"""Workers register themselves on their host: ``<state_dir>/workers/<name>.heartbeat.json``.

Every worker command (``enrich flow snapshot|enrich|flatten``, ``enrich alerts run``, ``enrich api``) writes
its heartbeat file when it starts and rewrites it every ``interval_s`` from a background thread. A clean exit
(it finished, or SIGTERM / SIGINT stopped it) removes the file. A worker that cannot start or crashes leaves
it with ``state: "failed"``, its exit code and the error; one killed with SIGKILL (or by the OOM killer)
leaves its last heartbeat behind: its pid is gone, so ``enrich status`` (``stack/status.py``) shows it dead.

Under ``enrich run`` the supervisor hands its worker name to the child (``ENRICH_WORKER_NAME``), so the
heartbeat sits next to the supervisor's status file ``<name>.json`` (``stack/supervisor.py``) and
``enrich status`` joins the two. Started directly, a worker is named after its command (``flow-enrich``,
``alerts-run``, ``api``; ``-<i>`` appended for process ``-i i`` of a cluster), and ``-<pid>`` is appended
when a live worker already holds the name.

File format (v1; written atomically)::

    {
      "v": 1,
      "name": "flow-enrich",            # the file's stem
      "kind": "flow-enrich",            # flow-snapshot | flow-enrich | flow-flatten | alerts | api
      "command": ["flow", "enrich"],    # the arguments after `enrich`
      "pid": 4215,
      "proc_start": 8812345,            # /proc/<pid>/stat start time (clock ticks): a reused pid is not it
      "supervised": false,              # started by `enrich run`
      "state": "running",               # starting | running | failed
      "started_at": 1718000000123,      # epoch ms
      "updated_at": 1718000002123,      # epoch ms of this write; the next is due interval_s later
      "interval_s": 2.0,
      "metrics_url": "http://127.0.0.1:9465/metrics",   # null while metrics are off
      "url": null,                      # the API's base URL
      "inputs": {"telemetry": {"partitions": 4, "lag": 0}},   # Kafka inputs (connectors/progress.py)
      "lag": 0,                         # summed over the inputs; null while unknown or without inputs
      "records": 123456,                # records read since start (the API: requests served)
      "rate": 2034.5,                   # per second over the last ~10 s (since start when younger)
      "unit": "records/s",              # or "requests/s"
      "waiting_for": [],                # dependencies unreachable right now ("kafka", "redis")
      "exit_code": null,                # with state "failed"
      "last_error": "WARNING enrich.health: redis unreachable ...",   # the failure, else the last
      "last_error_at": 1718000001000    # WARNING/ERROR line it logged, or null
    }
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from stack.supervisor import WORKER_NAME_ENV, default_name

HEARTBEAT_SUFFIX = ".heartbeat.json"
INTERVAL_S = 2.0
RATE_WINDOW_S = 10.0
Kind = Literal["flow-snapshot", "flow-enrich", "flow-flatten", "alerts", "api"]


@dataclass(frozen=True, slots=True)
class Sample:
    """What a worker reports about its work: records (or requests) so far and its Kafka inputs
    (topic -> (partitions, summed lag or None while unknown))."""

    records: int | None
    inputs: dict[str, tuple[int, int | None]]
    unit: str = "records/s"


Probe = Callable[[], Sample]


def kafka_probe() -> Sample:
    """The Kafka readers of this process (connectors/progress.py)."""
    from connectors.progress import PROGRESS

    records, topics = PROGRESS.snapshot()
    return Sample(records, {t: (p.partitions, p.lag) for t, p in topics.items()})


def proc_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/<pid>/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def heartbeat_path(workers_dir: Path, name: str) -> Path:
    return workers_dir / f"{name}{HEARTBEAT_SUFFIX}"


def read_json(path: Path) -> dict[str, Any] | None:
    """A heartbeat or supervisor status file, or None when it is missing or half-written."""
    try:
        doc = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def pid_alive(pid: int | None, started: int | None = None) -> bool:
    """``pid`` runs (not a zombie) and, when ``started`` is given, is the process that started then."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    if not fields or fields[0] in ("Z", "X"):
        return False
    return started is None or proc_start(pid) == started


class _LastError(logging.Handler):
    """Remembers the last WARNING-or-worse line the worker logged (first line of the message)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.line: str | None = None
        self.at: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage().strip().splitlines()
        except Exception:  # a broken log call must not break the worker
            return
        first = text[0] if text else ""
        self.line = f"{record.levelname} {record.name}: {first}"[:500]
        self.at = int(record.created * 1000)


class Registration:
    """The heartbeat of one worker process. ``start()`` writes it and starts the writer thread; ``close()``
    removes it (clean exit); ``fail(reason, code)`` keeps it as the record of a failure.

    Invariant: once closed or failed, no later write brings the file back (writes and removal share a lock).
    """

    def __init__(
        self,
        workers_dir: Path,
        kind: Kind,
        command: Sequence[str],
        *,
        name: str | None = None,
        probe: Probe | None = None,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.dir = workers_dir
        self.kind = kind
        self.command = list(command)
        given = os.environ.pop(WORKER_NAME_ENV, None)  # for this process only, not for the workers it starts
        self.supervised = given is not None
        self.name = given or self._free_name(name or default_name(self.command))
        self.path = heartbeat_path(workers_dir, self.name)
        self.probe = probe
        self.interval_s = interval_s
        self.pid = os.getpid()
        self.doc: dict[str, Any] = {
            "v": 1, "name": self.name, "kind": kind, "command": self.command, "pid": self.pid,
            "proc_start": proc_start(self.pid), "supervised": self.supervised, "state": "starting",
            "started_at": _now_ms(), "updated_at": 0, "interval_s": interval_s, "metrics_url": None,
            "url": None, "inputs": {}, "lag": None, "records": None, "rate": None, "unit": "records/s",
            "waiting_for": [], "exit_code": None, "last_error": None, "last_error_at": None,
        }  # fmt: skip
        self._errors = _LastError()
        self._samples: deque[tuple[float, int]] = deque()
        # Re-entrant: the SIGTERM handler runs on the main thread, which may hold it already.
        self._lock = threading.RLock()
        self._measuring = threading.Lock()
        self._done = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def _free_name(self, wanted: str) -> str:
        """``wanted``, unless a live worker (or a live supervisor) holds it: then ``wanted-<pid>``."""
        other = read_json(heartbeat_path(self.dir, wanted))
        if (
            other is not None
            and other.get("pid") != os.getpid()
            and pid_alive(other.get("pid"), other.get("proc_start"))
        ):
            return f"{wanted}-{os.getpid()}"
        supervisor = read_json(self.dir / f"{wanted}.json")
        if supervisor is not None and pid_alive(supervisor.get("supervisor_pid")):
            return f"{wanted}-{os.getpid()}"
        return wanted

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self, *, handle_sigterm: bool = False) -> Registration:
        """Write the first heartbeat and keep writing. ``handle_sigterm``: for workers that die on SIGTERM
        (bytewax flows), remove the heartbeat first, then die of it as before."""
        self.dir.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()
        if not root.handlers:  # keep warnings on stderr (logging's last resort ends with a first handler)
            logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        root.addHandler(self._errors)
        self._samples.append((time.monotonic(), 0))  # counted from the start: a rate from the first beat
        if handle_sigterm:
            signal.signal(signal.SIGTERM, self._on_sigterm)
        self._write()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._thread.start()
        return self

    def running(self, **fields: Any) -> None:
        """The worker serves now (``metrics_url``, ``url`` ...)."""
        with self._lock:
            self.doc.update(fields, state="running")
        self._write()

    def close(self) -> None:
        """Clean exit: remove the heartbeat."""
        with self._lock:
            self._done = True
            self.path.unlink(missing_ok=True)
        self._stop_thread()

    def fail(self, reason: str, exit_code: int) -> None:
        """The worker cannot start or crashed: keep its heartbeat as the record of why."""
        with self._lock:
            if self._done:
                return
            self.doc.update(state="failed", exit_code=exit_code, last_error=reason[:1000],
                            last_error_at=_now_ms(), updated_at=_now_ms())  # fmt: skip
            self._dump()
            self._done = True
        self._stop_thread()

    def _stop_thread(self) -> None:
        logging.getLogger().removeHandler(self._errors)
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _on_sigterm(self, signum: int, _frame: Any) -> None:
        with contextlib.suppress(Exception), self._lock:  # a write in progress finishes; none follows
            self._done = True
            self.path.unlink(missing_ok=True)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    # -- writing ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._wake.wait(self.interval_s):
            try:
                self._write()
            except Exception as exc:  # a full disk must not stop the worker; say so once per interval
                print(f"heartbeat {self.path}: {exc}", file=sys.stderr, flush=True)

    def _measure(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"waiting_for": _waiting_for()}
        if self._errors.line is not None:
            fields.update(last_error=self._errors.line, last_error_at=self._errors.at)
        if self.probe is None:
            return fields
        sample = self.probe()
        now = time.monotonic()
        inputs = {t: {"partitions": n, "lag": lag} for t, (n, lag) in sample.inputs.items()}
        lags = [lag for _n, lag in sample.inputs.values()]
        fields.update(
            inputs=inputs, unit=sample.unit, records=sample.records,
            lag=None if not lags or any(v is None for v in lags) else sum(v for v in lags if v),
        )  # fmt: skip
        if sample.records is not None:
            self._samples.append((now, sample.records))
            while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
                self._samples.popleft()
            (t0, r0), (t1, r1) = self._samples[0], self._samples[-1]
            fields["rate"] = round((r1 - r0) / (t1 - t0), 1) if t1 > t0 else None
        return fields

    def _write(self) -> None:
        with self._measuring:
            fields = self._measure()
        with self._lock:
            if self._done:
                return
            if self.doc["state"] != "failed":
                self.doc.update(fields)
            self.doc["updated_at"] = _now_ms()
            self._dump()

    def _dump(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{self.pid}.tmp")
        tmp.write_bytes(orjson.dumps(self.doc, option=orjson.OPT_INDENT_2))
        os.replace(tmp, self.path)


def _waiting_for() -> list[str]:
    """Dependencies this process's clients cannot reach right now (connectors/health.py)."""
    from connectors.health import _MONITORS

    return sorted(name for name, m in list(_MONITORS.items()) if not m.up)


def _now_ms() -> int:
    return int(time.time() * 1000)
