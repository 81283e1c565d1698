"""Building blocks of the fault-injection run: supervised workers that can be killed -9, a webhook receiver
that fails its first requests, a mailbox, and an incremental topic reader."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from connectors.kafka_config import consumer_config
from enrich.settings import Settings
from stack.procs import free_port, wait_until
from stack.supervisor import read_status


class Supervised:
    """``enrich run --name NAME <command>``: a worker under the supervisor, which restarts it when killed."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], state_dir: Path) -> None:
        self.name = name
        self.status_file = state_dir / "workers" / f"{name}.json"
        self.log_file = state_dir / "workers" / f"{name}.log"
        argv = [sys.executable, "-m", "cli.main", "run", "--name", name, "--max-backoff", "2",
                "--stable-after", "10", *command]  # fmt: skip
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def status(self) -> dict[str, Any]:
        return read_status(self.status_file) if self.status_file.exists() else {}

    def child(self) -> int | None:
        st = self.status()
        return st.get("pid") if st.get("state") == "running" else None

    def wait_running(self, timeout: float = 60) -> int:
        assert wait_until(lambda: self.child() is not None, timeout), (
            f"{self.name} not running: {self.tail()}"
        )
        pid = self.child()
        assert pid is not None
        return pid

    def kill9(self) -> int:
        """kill -9 the worker (not the supervisor); returns the killed pid."""
        pid = self.wait_running()
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: self.child() != pid, 30), f"{self.name} was not restarted"
        return pid

    def restarts(self) -> int:
        return int(self.status().get("restarts", 0))

    def tail(self, chars: int = 3000) -> str:
        return self.log_file.read_text(errors="replace")[-chars:] if self.log_file.exists() else "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass(frozen=True)
class HookRequest:
    headers: dict[str, str]
    body: bytes
    status: int


class FlakyHook:
    """A webhook receiver on loopback answering 500 to its first ``fail_first`` requests, then 200."""

    def __init__(self, fail_first: int) -> None:
        self.fail_left = fail_first
        self.requests: list[HookRequest] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer.lock:
                    status = 500 if outer.fail_left > 0 else 200
                    outer.fail_left -= status == 500
                    outer.requests.append(
                        HookRequest({k.lower(): v for k, v in self.headers.items()}, body, status)
                    )
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fleet-ops"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def accepted(self) -> dict[str, bytes]:
        """Body of every accepted delivery by ``webhook-id`` (receivers dedupe on it)."""
        with self.lock:
            return {r.headers["webhook-id"]: r.body for r in self.requests if r.status == 200}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Mail:
    to: list[str]
    message_id: str
    subject: str
    text: str


class Mailbox:
    def __init__(self) -> None:
        self.mails: list[Mail] = []
        outer = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                msg = message_from_bytes(envelope.content)
                part = msg.get_body(("plain",)) if hasattr(msg, "get_body") else None
                text = part.get_content() if part is not None else ""
                outer.mails.append(
                    Mail(list(envelope.rcpt_tos), str(msg["Message-ID"]), str(msg["Subject"]), text)
                )
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()


class TopicReader:
    """Reads every partition of a topic from the beginning, keeping its position between calls."""

    def __init__(self, settings: Settings, topic: str, handle: Callable[[Message], None]) -> None:
        conf: dict[str, Any] = {
            "bootstrap.servers": settings.kafka_bootstrap, "group.id": f"faults-{uuid.uuid4().hex}",
            "enable.auto.commit": False, "enable.partition.eof": False,
            **consumer_config(settings.kafka_max_message_bytes),
        }  # fmt: skip
        self.consumer = Consumer(conf)
        md = self.consumer.list_topics(topic, timeout=30)
        self.parts = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
        self.consumer.assign(self.parts)
        self.next: dict[int, int] = {tp.partition: 0 for tp in self.parts}  # next offset to read
        self.handle = handle

    def read(self, max_s: float = 60.0) -> int:
        """Read up to the end of every partition as it is now (high watermarks taken at the call).
        Returns the number of messages read."""
        ends = {tp.partition: self.consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in self.parts}
        n = 0
        deadline = _now() + max_s
        while any(self.next[p] < end for p, end in ends.items()):
            if _now() > deadline:
                raise TimeoutError(f"topic not read to its end in {max_s}s: {self.next} < {ends}")
            for msg in self.consumer.consume(5000, 0.5):
                err = msg.error()
                if err is None:
                    self.next[msg.partition() or 0] = (msg.offset() or 0) + 1
                    self.handle(msg)
                    n += 1
                elif err.code() not in (KafkaError._PARTITION_EOF, KafkaError._TRANSPORT):
                    raise RuntimeError(f"consume error: {err}")
        return n

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.consumer.close()


def _now() -> float:
    import time

    return time.monotonic()
