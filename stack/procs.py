"""Background processes tracked by pid files: start detached, check alive, stop only what we started."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from stack.errors import StackError


@dataclass(frozen=True, slots=True)
class Managed:
    """A process of the stack: its name, its pid file and a marker (the state directory's absolute path).

    Every stack process runs with its working directory inside the state directory; the marker guards
    against a recycled pid: we never signal a process whose cwd or command line does not contain it.
    """

    name: str
    pid_file: Path
    marker: str

    def pid(self) -> int | None:
        """The pid of our live process, or None (a stale pid file is removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        if _is_ours(pid, self.marker):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(
        self, argv: Sequence[str], *, log_file: Path, cwd: Path, env: dict[str, str] | None = None
    ) -> int:
        """Start ``argv`` detached (own session, output to ``log_file``) and record its pid."""
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def stop(self, timeout: float = 30.0) -> bool:
        """SIGTERM our process, wait for it, SIGKILL after ``timeout``. True when something was stopped."""
        pid = self.pid()
        if pid is None:
            return False
        _signal(pid, signal.SIGTERM)
        if not wait_until(lambda: not _alive(pid), timeout):
            _signal(pid, signal.SIGKILL)
            if not wait_until(lambda: not _alive(pid), 10.0):
                raise StackError(f"{self.name} (pid {pid}) did not exit after SIGKILL")
        self.pid_file.unlink(missing_ok=True)
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for test servers, demo receivers, throw-away stacks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound on ``host`` right now."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(size: int, host: str = "127.0.0.1") -> int:
    """A base port with ``size`` consecutive ports free above it (for layouts of default ports moved)."""
    for _ in range(50):
        base = free_port(host)
        if base + size < 65000 and all(port_free(base + i, host) for i in range(size)):
            return base
    raise RuntimeError("no block of free ports")


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` seconds pass. Returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    if state == "Z":
        _reap(pid)
        return False
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _is_ours(pid: int, marker: str) -> bool:
    if not _alive(pid):
        return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, PermissionError):
        return False
    return cwd.startswith(marker) or marker in cmdline
