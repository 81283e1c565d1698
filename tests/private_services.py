"""Private Kafka brokers and Redis servers for tests that kill, restart or reconfigure them.

Each lives in its own state directory on free loopback ports, started with the native stack's own classes
(stack/kafka.py, stack/redis_server.py), so the shared services are never touched. ``kill`` is kill -9,
``stop`` a clean shutdown; ``start`` waits until the service answers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from enrich.settings import Settings
from stack.kafka import KafkaBroker
from stack.procs import free_port, wait_until
from stack.redis_server import RedisServer, redis_answers
from stack.topics import broker_ready


def _kill9(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 30)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class PrivateRedis:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.server = RedisServer(root, port=self.port)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def ready(self) -> bool:
        return redis_answers(self.url, timeout=0.5)

    def start(self, timeout: float = 30) -> None:
        self.server.start()
        assert wait_until(self.ready, timeout), f"private redis on {self.port} did not start"

    def kill(self) -> None:
        """kill -9 (data written before is in the AOF: the OS has it, no fsync needed for a process crash)."""
        _kill9(self.server.process.pid())
        self.server.process.pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        self.server.process.stop()

    def restart(self, *, hard: bool = False, down_s: float = 0.0) -> None:
        self.kill() if hard else self.stop()
        time.sleep(down_s)  # the outage itself (what the test is about), not synchronisation
        self.start()


class PrivateKafka:
    def __init__(self, root: Path, settings: Settings) -> None:
        lib = settings.kafka_lib_dir or settings.state_dir.resolve() / "kafka" / "lib"
        self.broker = KafkaBroker(root, port=free_port(), controller_port=free_port(), heap="512m", lib=lib,
                                  max_message_bytes=settings.kafka_max_message_bytes)  # fmt: skip
        self.bootstrap = self.broker.bootstrap

    def start(self, timeout: float = 120) -> None:
        self.broker.install()  # a no-op once the jars are resolved (the shared stack's lib directory)
        self.broker.start()
        if not wait_until(lambda: broker_ready(self.bootstrap, timeout=1.0), timeout, interval=0.25):
            raise AssertionError(f"private Kafka did not start:\n{self.broker.log_tail()}")

    def kill(self) -> None:
        _kill9(self.broker.process.pid())
        self.broker.process.pid_file.unlink(missing_ok=True)

    def stop(self) -> None:
        self.broker.process.stop()

    def restart(self, *, hard: bool = True, down_s: float = 0.0) -> None:
        self.kill() if hard else self.stop()
        time.sleep(down_s)  # the outage itself, not synchronisation
        self.start()
