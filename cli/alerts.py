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
    import redis

    from alerts.outbox import Outbox

    settings = get_settings()
    return Outbox(redis.Redis.from_url(settings.redis_url), settings.alerts_prefix)


def _silences() -> SilenceStore:
    import redis

    from alerts.worker import SilenceStore

    settings = get_settings()
    return SilenceStore(redis.Redis.from_url(settings.redis_url), settings.alerts_prefix)


@alerts_app.command("run")
def run() -> None:
    """Consume the outliers topic and deliver notifications until stopped."""
    from alerts.worker import AlertsWorker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    AlertsWorker(get_settings(), _config()).run()


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
    import redis

    from alerts.worker import SilenceStore

    ok = SilenceStore(redis.Redis.from_url(get_settings().redis_url), get_settings().alerts_prefix).expire(
        silence_id
    )
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
