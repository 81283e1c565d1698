"""``enrich alerts ...``: run the alerts worker, manage silences, list and replay dead letters."""

from __future__ import annotations

import logging
import time
from importlib import resources
from typing import TYPE_CHECKING, Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from enrich.settings import get_settings

if TYPE_CHECKING:
    from alerts.config import AlertsConfig
    from alerts.outbox import Outbox
    from alerts.worker import SilenceStore

alerts_app = typer.Typer(help="Alert routing and delivery (Alertmanager model; e-mail and signed webhooks).")
silence_app = typer.Typer(help="Silences: time-bounded label matchers that mute notifications.")
dlq_app = typer.Typer(help="Deliveries that failed their last attempt.")
alerts_app.add_typer(silence_app, name="silence")
alerts_app.add_typer(dlq_app, name="dlq")
console = Console(soft_wrap=True)


def _config() -> AlertsConfig:
    from alerts.config import load_config, parse_config

    path = get_settings().alerts_config
    if path is not None:
        return load_config(path)
    return parse_config(yaml.safe_load(resources.files("alerts").joinpath("default.yaml").read_text()))


def _outbox() -> Outbox:
    from alerts.outbox import Outbox
    from stores.redis_client import quick_client

    settings = get_settings()
    return Outbox(quick_client(settings), settings.alerts_prefix)


def _silences() -> SilenceStore:
    from alerts.worker import SilenceStore
    from stores.redis_client import quick_client

    settings = get_settings()
    return SilenceStore(quick_client(settings), settings.alerts_prefix)


@alerts_app.command("run")
def run(
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus metrics port (0 = off; default 9466, see ENRICH_METRICS_PORT_BASE)"),
    ] = None,
    metrics_host: Annotated[str, typer.Option(envvar="ENRICH_METRICS_HOST")] = "127.0.0.1",
) -> None:
    """Consume the outliers topic and deliver notifications until stopped (SIGTERM/SIGINT stop cleanly).
    Waits through Kafka and Redis outages; a configuration error stops it with one line (exit 78)."""
    import signal

    from alerts.errors import AlertsError
    from alerts.worker import AlertsWorker
    from cli import startup
    from cli.flows import run_worker
    from stack.registry import kafka_probe

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = "alerts run"
    s = startup.load_settings(command)
    reg = startup.register(s, "alerts", ["alerts", "run"], probe=kafka_probe)
    try:
        config = _config()
    except (AlertsError, OSError, yaml.YAMLError) as exc:
        startup.cannot_start(command, f"alerts configuration: {startup.one_line(exc)}", startup.EXIT_CONFIG,
                             reg)  # fmt: skip
    port = s.metrics_port_for("alerts") if metrics_port is None else metrics_port
    url = startup.serve_metrics(command, port, metrics_host, reg)
    worker = AlertsWorker(s, config)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.request_stop())
    logging.getLogger("alerts").info("alerts worker: %d receivers, outliers from %s on %s, state in %s",
                                     len(config.receivers), s.topic_outliers, s.kafka_bootstrap,
                                     s.redis_url)  # fmt: skip
    reg.running(metrics_url=url)
    run_worker(command, reg, worker.run, expected={})


@alerts_app.command("check")
def check() -> None:
    """Validate the alerts configuration (ENRICH_ALERTS_CONFIG or the default)."""
    cfg = _config()
    console.print(f"ok: {len(cfg.receivers)} receivers, {len(cfg.inhibit_rules)} inhibit rules")


@silence_app.command("add")
def silence_add(
    matcher: Annotated[list[str], typer.Option("--matcher", "-m", help='e.g. car_id="1038" (repeatable)')],
    duration: Annotated[str, typer.Option(help="e.g. 30m, 2h")] = "1h",
    comment: Annotated[str, typer.Option()] = "",
    created_by: Annotated[str, typer.Option()] = "",
) -> None:
    """Mute matching alerts for a while."""

    from enrich.rules.model import parse_duration

    store = _silences()
    sid = store.add(matcher, parse_duration(duration), created_by=created_by, comment=comment)
    console.print(f"silence {sid} until {duration} from now")


@silence_app.command("list")
def silence_list() -> None:

    now = int(time.time() * 1000)
    table = Table("id", "matchers", "active", "ends", "comment")
    for s in _silences().all():
        ends = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(s.ends_at / 1000))
        table.add_row(s.id, " ".join(map(str, s.matchers)), "yes" if s.active(now) else "no", ends, s.comment)
    console.print(table)


@silence_app.command("expire")
def silence_expire(silence_id: str) -> None:
    ok = _silences().expire(silence_id)
    console.print("expired" if ok else "no such silence")
    if not ok:
        raise typer.Exit(1)


@dlq_app.command("list")
def dlq_list() -> None:
    table = Table("job", "receiver", "kind", "attempts", "last error", "incidents")
    for job in _outbox().dlq():
        table.add_row(
            job.id, job.receiver, job.kind, str(job.attempts), job.last_error or "", ", ".join(job.incidents)
        )
    console.print(table)


@dlq_app.command("replay")
def dlq_replay(
    job_ids: Annotated[list[str] | None, typer.Argument(help="Jobs to replay (default: all)")] = None,
) -> None:
    n = _outbox().replay(list(job_ids) if job_ids else None)
    console.print(f"replayed {n} deliveries")
