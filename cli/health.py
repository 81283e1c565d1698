"""``enrich health ...``: health checks for containers and probes (Docker HEALTHCHECK, Compose, Kubernetes).

* ``http URL`` — 2xx within the timeout (flows: their metrics endpoint; API: ``/readyz``).
* ``alerts`` — the alerts worker can work and is working: its config loads, Redis answers, the outliers
  topic has a leader, the SMTP server greets, and a Redis connection from this host other than the check's
  own was active within ``--idle`` seconds (the worker polls Redis every 0.2 s; a dead or hung worker stops).
* ``auto`` — finds the ``enrich`` command running beside it (in the same container) and runs the check that
  fits it, so one image-level HEALTHCHECK serves every service. :func:`check_for` is the mapping; Compose's
  per-service healthchecks are tested against it.

Exit 0 when healthy, 1 with the reason on stderr otherwise.
"""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from enrich.settings import WorkerKind, default_metrics_port

health_app = typer.Typer(help="Health checks for containers and probes (exit 0 = healthy).")

DEFAULT_API_PORT = 8000


def _fail(reason: str) -> None:
    typer.echo(f"unhealthy: {reason}", err=True)
    raise typer.Exit(1)


def _option(args: Sequence[str], names: tuple[str, ...]) -> str | None:
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def check_for(args: Sequence[str], env: Mapping[str, str]) -> list[str] | None:
    """The ``enrich health ...`` arguments that check a process running ``enrich <args>`` with ``env``, or
    None for commands that serve nothing (one-shots such as ``topics create`` or ``simulate``)."""
    words = [a for a in args if not a.startswith("-")]
    if words[:1] == ["flow"] and words[1:2] in (["snapshot"], ["enrich"]):
        port = _option(args, ("--metrics-port",)) or env.get("ENRICH_METRICS_PORT")
        if port is None:  # the kind's default (enrich/settings.py)
            kind: WorkerKind = "flow-snapshot" if words[1] == "snapshot" else "flow-enrich"
            process = _option(args, ("-i", "--process-id"))
            base = int(env.get("ENRICH_METRICS_PORT_BASE") or 9464)
            port = str(default_metrics_port(kind, int(process) if process else None, base))
        if port == "0":
            return None  # metrics off: nothing to ask
        host = _local(_option(args, ("--metrics-host",)) or env.get("ENRICH_METRICS_HOST", ""))
        return ["http", f"http://{host}:{port}/metrics"]
    if words[:1] == ["api"]:
        port = _option(args, ("--port",)) or env.get("ENRICH_API_PORT") or str(DEFAULT_API_PORT)
        host = _local(_option(args, ("--host",)) or env.get("ENRICH_API_HOST", ""))
        return ["http", f"http://{host}:{port}/readyz"]
    if words[:2] == ["alerts", "run"]:
        return ["alerts"]
    return None


def enrich_args(argv: Sequence[str]) -> list[str] | None:
    """The arguments after the ``enrich`` command in a process's argv (console script or ``-m cli.main``)."""
    for i, a in enumerate(argv):
        if Path(a).name == "enrich":
            return list(argv[i + 1 :])
        if a == "-m" and i + 1 < len(argv) and argv[i + 1] == "cli.main":
            return list(argv[i + 2 :])
    return None


def running_commands(proc: Path = Path("/proc")) -> list[tuple[list[str], dict[str, str]]]:
    """(args, environment) of every other ``enrich`` process visible here, health checks excluded."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            args = enrich_args(argv)
            if args is None or args[:1] == ["health"]:
                continue
            raw = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        env = dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)
        found.append((args, env))
    return found


@health_app.command("http")
def http(
    url: Annotated[str, typer.Argument(help="URL that must answer 2xx")],
    timeout: Annotated[float, typer.Option(help="Seconds")] = 3.0,
) -> None:
    """GET the URL; healthy on a 2xx answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # a configured local URL
            status = int(resp.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        _fail(f"{url}: {exc}")
        return
    if not 200 <= status < 300:
        _fail(f"{url} answered {status}")


def _smtp_greets(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            banner = conn.recv(512).decode(errors="replace")
    except OSError as exc:
        return f"SMTP {host}:{port}: {exc}"
    return None if banner.startswith("220") else f"SMTP {host}:{port} greeted {banner.strip()!r}"


def _alerts_node(url: str, prefix: str, timeout: float) -> Any:
    """A plain client of the Redis the alerts worker uses: on a Redis Cluster, the master of the alerts
    slot (where the lease is polled and every alerts key lives), so its client list shows the worker."""
    import redis

    from alerts.outbox import alerts_keyspace
    from stores.redis_client import cluster_url

    plain = cluster_url(url)
    if plain is None:
        return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    cluster: Any = redis.RedisCluster.from_url(plain, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        node = cluster.get_node_from_key(f"{alerts_keyspace(prefix, cluster)}leader")
        return redis.Redis(node.host, node.port, socket_connect_timeout=timeout, socket_timeout=timeout)
    finally:
        cluster.close()


@health_app.command("alerts")
def alerts(
    idle: Annotated[float, typer.Option(help="Max seconds since the worker last used Redis")] = 30.0,
    timeout: Annotated[float, typer.Option(help="Seconds per dependency")] = 5.0,
    worker: Annotated[bool, typer.Option(help="Require the worker's own Redis activity")] = True,
    dependencies: Annotated[
        bool, typer.Option(help="Require the config, Kafka and SMTP (off for a liveness probe)")
    ] = True,
) -> None:
    """The alerts worker's config, Redis, Kafka and SMTP are usable, and the worker here is using Redis."""
    import redis
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from cli.alerts import _config
    from enrich.settings import get_settings

    settings = get_settings()
    if dependencies:
        try:
            _config()
        except Exception as exc:  # any load error makes the worker useless
            _fail(f"alerts config: {exc}")
    client = None
    try:
        client = _alerts_node(settings.redis_url, settings.alerts_prefix, timeout)
        client.ping()
        me = client.client_info()
        clients = client.client_list(_type="normal")
    except redis.RedisError as exc:
        _fail(f"Redis {settings.redis_url}: {exc}")
        return
    finally:
        if client is not None:
            client.close()
    if dependencies:
        admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 0})
        try:
            md = admin.list_topics(settings.topic_outliers, timeout=timeout).topics[settings.topic_outliers]
        except KafkaException as exc:
            _fail(f"Kafka {settings.kafka_bootstrap}: {exc}")
            return
        if md.error is not None or any(p.leader < 0 for p in md.partitions.values()):
            _fail(f"topic {settings.topic_outliers}: {md.error or 'partitions without a leader'}")
        problem = _smtp_greets(settings.smtp_host, settings.smtp_port, timeout)
        if problem:
            _fail(problem)
    if worker:
        my_ip = str(me["addr"]).rsplit(":", 1)[0]
        active = [
            c
            for c in clients
            if str(c["addr"]).rsplit(":", 1)[0] == my_ip
            and str(c["id"]) != str(me["id"])
            and float(c["idle"]) <= idle
        ]
        if not active:
            _fail(f"no Redis activity from an alerts worker on {my_ip} in the last {idle:g}s")


@health_app.command("auto")
def auto() -> None:
    """Check whatever `enrich` command runs beside this check (the image's HEALTHCHECK)."""
    commands = running_commands()
    if not commands:
        _fail("no enrich process runs here")
    args, env = commands[0]
    chosen = check_for(args, env)
    if chosen is None:
        return  # a one-shot or a process that serves nothing: alive is all there is to know
    if chosen[0] == "http":
        http(chosen[1])
    else:
        alerts()
