"""``enrich run <worker command...>``: run a worker as a child process and restart it when it dies.

    enrich run flow enrich            # the enrichment flow, restarted on a crash
    enrich run alerts run             # the alerts worker
    enrich run --name api-2 api --port 8001

* The child is ``python -m cli.main <worker command...>`` in its own process group; its stdout and stderr
  are appended to ``<state_dir>/workers/<name>.log``.
* When it exits it is started again after a backoff that doubles from ``first_backoff_s`` up to
  ``max_backoff_s`` (with jitter), and resets once a run lasted ``stable_after_s``.
* It is *not* restarted when it exits 0 (it finished, e.g. ``--until-eof``), 2 (usage error) or 78
  (``EXIT_CONFIG``, sysexits' EX_CONFIG: its configuration is wrong, restarting cannot help); the
  supervisor then exits with the same code. 69 (``EXIT_UNAVAILABLE``: something it needs on this host, such
  as its port, is taken) is restarted with backoff like a crash, since the holder may go away.
* The child gets ``ENRICH_WORKER_NAME=<name>``, so its own heartbeat (``stack/registry.py``) is
  ``<state_dir>/workers/<name>.heartbeat.json``, next to this status file.
* SIGTERM / SIGINT are forwarded to the child's process group; after ``stop_timeout_s`` it is killed. The
  supervisor then exits 0.

Status file ``<state_dir>/workers/<name>.json`` (rewritten atomically on every change; ``enrich status``
reads these)::

    {
      "v": 1,
      "name": "flow-enrich",               # the worker's name (the file's stem)
      "command": ["flow", "enrich"],       # the worker command (after `enrich run`)
      "supervisor_pid": 4211,              # this supervisor; the file is stale if it is not alive
      "pid": 4215,                         # the current child, null while none runs
      "state": "running",                  # running | restarting | stopped
      "restarts": 3,                       # children started after the first one
      "started_at": 1718000000123,         # epoch ms when the current (or last) child started
      "last_exit_code": -9,                # of the previous child (negative: killed by that signal), or null
      "last_error": "RuntimeError: boom",  # last error line the worker wrote to stderr, or null
      "next_start_at": null,               # epoch ms of the next start while restarting
      "log_file": "/…/workers/flow-enrich.log",
      "updated_at": 1718000000456          # epoch ms of this write
    }
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import orjson

EXIT_CONFIG = 78
EXIT_UNAVAILABLE = 69
WORKER_NAME_ENV = "ENRICH_WORKER_NAME"  # the child's name, for its heartbeat (stack/registry.py)
NO_RESTART = frozenset({0, 2, EXIT_CONFIG})
State = Literal["running", "restarting", "stopped"]
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
_LOGGED_ERROR = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|: cannot start: ")


@dataclass(frozen=True, slots=True)
class Policy:
    first_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    stable_after_s: float = 60.0
    stop_timeout_s: float = 30.0


@dataclass(slots=True)
class WorkerStatus:
    name: str
    command: list[str]
    log_file: str
    supervisor_pid: int = field(default_factory=os.getpid)
    pid: int | None = None
    state: State = "restarting"
    restarts: int = 0
    started_at: int | None = None
    last_exit_code: int | None = None
    last_error: str | None = None
    next_start_at: int | None = None
    updated_at: int = 0
    v: int = 1

    def write(self, path: Path) -> None:
        self.updated_at = _now_ms()
        tmp = path.with_suffix(".json.tmp")
        tmp.write_bytes(orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2))
        os.replace(tmp, path)


def read_status(path: Path) -> dict[str, Any]:
    """A worker's status file as a dict (for ``enrich status`` and tests)."""
    return orjson.loads(path.read_bytes())  # type: ignore[no-any-return]


def default_name(command: Sequence[str]) -> str:
    words = [w for w in command if not w.startswith("-")][:2]
    return "-".join(words) or "worker"


def last_error_of(lines: Sequence[str]) -> str | None:
    """The line that best says why a worker failed: a Python exception line, else the last logged error."""
    for line in reversed(lines):
        if _EXCEPTION.match(line):
            return line
    for line in reversed(lines):
        if _LOGGED_ERROR.search(line):
            return line
    return None


class Supervisor:
    def __init__(
        self,
        name: str,
        command: Sequence[str],
        state_dir: Path,
        *,
        policy: Policy | None = None,
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy or Policy()
        self.argv = list(argv) if argv is not None else [sys.executable, "-m", "cli.main", *command]
        self.env = {**(os.environ if env is None else env), WORKER_NAME_ENV: name}
        self.dir = state_dir / "workers"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.status_file = self.dir / f"{name}.json"
        self.log_file = self.dir / f"{name}.log"
        self.status = WorkerStatus(name, list(command), str(self.log_file))
        self._stop = threading.Event()
        self._signal: int | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    # -- signals ---------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop(signum)

    def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop the worker (forward ``signum``) and do not restart it."""
        self._signal = signum
        self._stop.set()
        child = self._child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signum)

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped or until the worker exits with a code that is not restarted."""
        backoff = self.policy.first_backoff_s
        self._write()
        while not self._stop.is_set():
            started = time.monotonic()
            code = self._run_once()
            if self._stop.is_set():
                break
            if code in NO_RESTART:
                self._set(state="stopped", pid=None, next_start_at=None)
                return code
            if time.monotonic() - started >= self.policy.stable_after_s:
                backoff = self.policy.first_backoff_s
            delay = random.uniform(backoff / 2, backoff)
            self._set(state="restarting", pid=None, next_start_at=_now_ms() + int(delay * 1000))
            print(f"[enrich run] {self.name} exited with {code}; restarting in {delay:.1f}s "
                  f"(restart {self.status.restarts + 1})", file=sys.stderr, flush=True)  # fmt: skip
            if self._stop.wait(delay):
                break
            backoff = min(self.policy.max_backoff_s, backoff * 2)
            self.status.restarts += 1
        self._set(state="stopped", pid=None, next_start_at=None)
        return 0

    def _run_once(self) -> int:
        tail: deque[str] = deque(maxlen=80)
        with open(self.log_file, "ab") as log:
            child = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.PIPE,
                                     env=self.env, start_new_session=True)  # fmt: skip
            self._child = child
            if self._stop.is_set():  # a signal raced the start
                self.stop(self._signal or signal.SIGTERM)
            self._set(state="running", pid=child.pid, started_at=_now_ms(), next_start_at=None)
            assert child.stderr is not None
            reader = threading.Thread(target=self._pump, args=(child.stderr, log, tail), daemon=True)
            reader.start()
            code = self._wait(child)
            reader.join(timeout=5)
        self._child = None
        self._set(last_exit_code=code, last_error=last_error_of(list(tail)) or self.status.last_error)
        return code

    def _wait(self, child: subprocess.Popen[bytes]) -> int:
        while True:
            try:
                return child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self._stop.is_set():
                try:
                    return child.wait(timeout=self.policy.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.pid, signal.SIGKILL)
                    return child.wait()

    def _pump(self, stream: IO[bytes], log: IO[bytes], tail: deque[str]) -> None:
        """Copy the child's stderr to the log file, remembering its last lines and errors."""
        for raw in iter(stream.readline, b""):
            log.write(raw)
            log.flush()
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            tail.append(line)
            if _LOGGED_ERROR.search(line) or _EXCEPTION.match(line):
                self._set(last_error=line)

    def _set(self, **changes: Any) -> None:
        with self._lock:
            for key, value in changes.items():
                setattr(self.status, key, value)
            self.status.write(self.status_file)

    def _write(self) -> None:
        with self._lock:
            self.status.write(self.status_file)


def _now_ms() -> int:
    return int(time.time() * 1000)
