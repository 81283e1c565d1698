"""How a worker command starts — settings, registration, metrics port, input topics — and how it says that it
cannot: one line on stderr and a non-zero exit, never a traceback::

    enrich flow enrich: cannot start: metrics port 127.0.0.1:9465 is in use (another worker?); choose one
    with --metrics-port or ENRICH_METRICS_PORT (0 = off)

Exit codes, as ``enrich run`` (stack/supervisor.py) reads them: 78 (``EXIT_CONFIG``, sysexits' EX_CONFIG)
the configuration is wrong (settings, tables, rules, alerts config, policies, topics that do not exist) —
not restarted; 69 (``EXIT_UNAVAILABLE``, EX_UNAVAILABLE) something it needs on this host is taken (its metrics
or HTTP port) — restarted with backoff, since the holder may go away.

A worker registered before it failed (stack/registry.py) keeps its heartbeat with the reason, so
``enrich status`` lists it as dead with that line.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from enrich.settings import Settings, get_settings
from stack.supervisor import EXIT_CONFIG, EXIT_UNAVAILABLE

if TYPE_CHECKING:
    from bytewax.dataflow import Dataflow

    from stack.registry import Kind, Probe, Registration

__all__ = ["EXIT_CONFIG", "EXIT_UNAVAILABLE", "cannot_start", "load_settings", "one_line", "register"]


def one_line(exc: BaseException | str, *, env_prefix: str | None = None) -> str:
    """An error as one line; pydantic's validation errors as ``field=value: why; ...`` (with ``env_prefix``
    the field as its environment variable, e.g. ``ENRICH_TELEMETRY_PARTITIONS='many': ...``)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
            name = f"{env_prefix}{where.upper()}" if env_prefix and "." not in where else where
            value = err.get("input")
            shown = f"={value!r}" if isinstance(value, str | int | float) else ""
            parts.append(f"{name}{shown}: {err.get('msg')}")
        return "; ".join(parts)
    text = " ".join(str(exc).split())
    return text[:600] + ("…" if len(text) > 600 else "")


def cannot_start(command: str, reason: str, code: int, registration: Registration | None = None) -> NoReturn:
    """Say why ``enrich <command>`` cannot start (one line on stderr) and exit with ``code``."""
    why = f"cannot start: {one_line(reason)}"
    if registration is not None:
        registration.fail(why, code)
    print(f"enrich {command}: {why}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def load_settings(command: str) -> Settings:
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as exc:
        cannot_start(command, f"invalid settings: {one_line(exc, env_prefix='ENRICH_')}", EXIT_CONFIG)


def register(
    settings: Settings,
    kind: Kind,
    command: Sequence[str],
    *,
    process_id: int | None = None,
    probe: Probe | None = None,
    handle_sigterm: bool = False,
    name: str | None = None,
) -> Registration:
    """Register this worker on the host (``<state>/workers/<name>.heartbeat.json``) and keep it fresh. The
    name: ``name``, else from the command (``flow-enrich``), with ``-<i>`` for process ``i`` of a cluster."""
    from stack.registry import Registration
    from stack.supervisor import default_name

    name = (name or default_name(command)) + (f"-{process_id}" if process_id else "")
    reg = Registration(settings.state_dir.resolve() / "workers", kind, command, name=name, probe=probe)
    return reg.start(handle_sigterm=handle_sigterm)


def _shown_host(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def serve_metrics(command: str, port: int, host: str, registration: Registration | None) -> str | None:
    """Serve Prometheus metrics on ``host:port`` (0 = off); its URL. A port in use: one line, exit 69."""
    if not port:
        return None
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        cannot_start(command, f"metrics port {host}:{port} is {_why(exc)}; choose one with --metrics-port "
                     "or ENRICH_METRICS_PORT (0 = off)", EXIT_UNAVAILABLE, registration)  # fmt: skip
    return f"http://{_shown_host(host)}:{port}/metrics"


def check_port(command: str, host: str, port: int, what: str, registration: Registration | None) -> None:
    """Exit with one line (69) unless ``host:port`` can be bound now (a server binds it right after)."""
    if not port:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            cannot_start(command, f"{what} {host}:{port} is {_why(exc)}", EXIT_UNAVAILABLE, registration)


def _why(exc: OSError) -> str:
    if exc.errno == 98:  # EADDRINUSE
        return "in use (another worker?)"
    return f"not available ({exc.strerror or exc})"


def input_topics(flow: Dataflow) -> list[str]:
    """The Kafka topics a dataflow reads (its ``KafkaBatchSource`` inputs)."""
    from flows.kafka_io import KafkaBatchSource

    found: list[str] = []

    def walk(step: Any) -> None:
        for sub in getattr(step, "substeps", ()):
            source = getattr(sub, "source", None)
            if isinstance(source, KafkaBatchSource):
                found.extend(t for t in source.topics if t not in found)
            walk(sub)

    walk(flow)
    return found


def check_topics(command: str, settings: Settings, topics: list[str], registration: Registration) -> None:
    """Exit with one line (78) when an input topic does not exist. Waits while the broker is away."""
    if not topics:
        return
    from flows.kafka_io import wait_for_metadata

    md = wait_for_metadata(settings.kafka_bootstrap, f"enrich {command}: checking its input topics")
    missing = [t for t in topics if t not in md.topics or md.topics[t].error is not None]
    if missing:
        where = settings.kafka_bootstrap
        why = (
            f"input topic(s) {', '.join(missing)} do not exist on {where} (create them: enrich topics create)"
        )
        cannot_start(command, why, EXIT_CONFIG, registration)
