"""`enrich health`: which check fits which command, finding the command in /proc, HTTP status handling."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.health import check_for, enrich_args, running_commands
from cli.main import app


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["flow", "enrich"], {}, ["http", "http://127.0.0.1:9465/metrics"]),
        (["flow", "snapshot"], {}, ["http", "http://127.0.0.1:9464/metrics"]),
        (["flow", "snapshot"], {"ENRICH_METRICS_PORT_BASE": "19000"},
         ["http", "http://127.0.0.1:19000/metrics"]),
        (["flow", "snapshot", "--metrics-port", "9500"], {}, ["http", "http://127.0.0.1:9500/metrics"]),
        (["flow", "enrich"], {"ENRICH_METRICS_PORT": "9600", "ENRICH_METRICS_HOST": "0.0.0.0"},
         ["http", "http://127.0.0.1:9600/metrics"]),
        (["flow", "enrich", "--metrics-port=0"], {}, None),  # metrics off: nothing to ask
        (["flow", "enrich", "-i", "1", "-a", "h0:1;h1:1"], {"ENRICH_METRICS_HOST": "10.1.2.3"},
         ["http", "http://10.1.2.3:9475/metrics"]),  # process 1 of a cluster: 10 above process 0
        (["flow", "enrich", "-i", "1"], {"ENRICH_METRICS_PORT": "9465"}, ["http", "http://127.0.0.1:9465/metrics"]),
        (["api"], {"ENRICH_API_HOST": "0.0.0.0"}, ["http", "http://127.0.0.1:8000/readyz"]),
        (["api", "--port", "8080"], {}, ["http", "http://127.0.0.1:8080/readyz"]),
        (["alerts", "run"], {}, ["alerts"]),
        (["topics", "create"], {}, None),
        (["simulate", "--vehicles", "200"], {}, None),
        (["flow", "recovery", "status", "/x"], {}, None),
    ],
)  # fmt: skip
def test_each_command_gets_its_check(
    args: list[str], env: dict[str, str], expected: list[str] | None
) -> None:
    assert check_for(args, env) == expected


def test_the_enrich_arguments_are_found_in_a_process_command_line() -> None:
    assert enrich_args(["/usr/local/bin/python", "/usr/local/bin/enrich", "flow", "enrich"]) == [
        "flow",
        "enrich",
    ]
    assert enrich_args(["python", "-m", "cli.main", "api"]) == ["api"]
    assert enrich_args(["/sbin/docker-init", "--", "enrich", "alerts", "run"]) == ["alerts", "run"]
    assert enrich_args(["redis-server", "*:6379"]) is None


def test_running_commands_reads_proc_and_skips_health_checks(tmp_path: Path) -> None:
    def proc(pid: int, argv: list[str], env: dict[str, str]) -> None:
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (d / "environ").write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in env.items()))

    proc(1, ["/sbin/docker-init", "--", "enrich", "flow", "enrich"], {"ENRICH_METRICS_PORT": "9500"})
    proc(7, ["/usr/local/bin/python", "/usr/local/bin/enrich", "health", "auto"], {})
    proc(9, ["sleep", "10"], {})
    (tmp_path / "self").mkdir()
    found = running_commands(tmp_path)
    assert found == [(["flow", "enrich"], {"ENRICH_METRICS_PORT": "9500"})]
    args, env = found[0]
    assert check_for(args, env) == ["http", "http://127.0.0.1:9500/metrics"]


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_http_check_needs_a_2xx(server: str) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["health", "http", f"{server}/ok"]).exit_code == 0
    not_ready = runner.invoke(app, ["health", "http", f"{server}/readyz"])
    assert not_ready.exit_code == 1
    assert "answered 503" in not_ready.output
