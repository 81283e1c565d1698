"""``enrich flow ...`` (run dataflows as workers) and ``enrich snapshot ...`` (read the snapshot store)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from cli.recovery import recovery_app
from enrich.settings import Settings, get_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from bytewax.dataflow import Dataflow

    from flows.runner import RunOptions
    from stores.redis_snapshot import RedisSnapshotStore

flow_app = typer.Typer(help="Run a dataflow as a worker process (bytewax, with recovery).")
flow_app.add_typer(recovery_app, name="recovery")
snapshot_app = typer.Typer(help="Read the CDC snapshot store.")

RecoveryDir = Annotated[
    Path | None,
    typer.Option("--recovery-dir", "-r", help="Recovery directory (default <state>/recovery/<flow>)"),
]
ProcessId = Annotated[
    int | None, typer.Option("--process-id", "-i", help="This worker's index in the cluster")
]
Addresses = Annotated[
    str | None, typer.Option("--addresses", "-a", help="host:port of every worker process, ';'-separated")
]
NoRecovery = Annotated[
    bool, typer.Option("--no-recovery", help="Run without recovery (state is lost on restart)")
]
UntilEof = Annotated[bool, typer.Option("--until-eof", help="Stop at the end of the input (batch/benchmark)")]
MetricsPort = Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port (0 = off)")]
MetricsHost = Annotated[
    str,
    typer.Option(
        envvar="ENRICH_METRICS_HOST",
        help="Bind address of the metrics server (0.0.0.0 where probes or Prometheus scrape from outside)",
    ),
]


def snapshot_store(settings: Settings, *, wait: bool = True) -> RedisSnapshotStore:
    """The snapshot store; ``wait=False`` gives up quickly while Redis is away (HTTP API, one-shot reads)."""
    from stores.redis_client import quick_client, redis_client
    from stores.redis_snapshot import RedisSnapshotStore

    return RedisSnapshotStore.from_settings(
        settings, redis_client(settings) if wait else quick_client(settings)
    )


def _run_options(
    settings: Settings,
    name: str,
    recovery_dir: Path | None,
    no_recovery: bool,
    process_id: int | None,
    addresses: str | None,
) -> RunOptions:
    from flows.runner import RunOptions

    rdir = None if no_recovery else (recovery_dir or settings.state_dir / "recovery" / name)
    return RunOptions(
        recovery_dir=rdir,
        snapshot_interval_s=settings.snapshot_interval_s,
        process_id=process_id,
        addresses=addresses.split(";") if addresses else None,
        recovery_partitions=settings.recovery_partitions,
    )


def _serve_metrics(settings: Settings, port: int | None, host: str) -> None:
    chosen = settings.metrics_port if port is None else port
    if chosen:
        from prometheus_client import start_http_server

        start_http_server(chosen, addr=host)


def _run_flow(
    name: str,
    build: Callable[[Settings], Dataflow],
    recovery_dir: Path | None,
    process_id: int | None,
    addresses: str | None,
    no_recovery: bool,
    metrics_port: int | None,
    metrics_host: str,
) -> None:
    import yaml
    from pydantic import ValidationError

    from enrich.errors import EnrichError
    from flows.recovery import RecoveryLayoutError
    from flows.runner import run
    from stack.supervisor import EXIT_CONFIG

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = get_settings()
        flow = build(settings)
    except (EnrichError, ValidationError, OSError, yaml.YAMLError) as exc:
        # Bad configuration (settings, tables, rules): restarting cannot help, say so with EX_CONFIG.
        logging.getLogger("enrich").error("configuration error: %s", exc)
        raise typer.Exit(EXIT_CONFIG) from exc
    _serve_metrics(settings, metrics_port, metrics_host)
    try:
        run(flow, _run_options(settings, name, recovery_dir, no_recovery, process_id, addresses))
    except RecoveryLayoutError as exc:  # the recovery directories do not fit this cluster: not restarted
        typer.echo(f"enrich flow {name}: {exc}", err=True)
        raise typer.Exit(2) from exc


@flow_app.command("snapshot")
def flow_snapshot(
    recovery_dir: RecoveryDir = None,
    process_id: ProcessId = None,
    addresses: Addresses = None,
    no_recovery: NoRecovery = False,
    until_eof: UntilEof = False,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """CDC topics → the versioned snapshot in Redis (position-checked, never backwards)."""
    from enrich.tables import load_model
    from flows.snapshot import build_flow

    def build(settings: Settings) -> Dataflow:
        tables = load_model(settings.tables_file).tables
        return build_flow(settings, tables, lambda: snapshot_store(settings), tail=not until_eof)

    _run_flow("snapshot", build, recovery_dir, process_id, addresses, no_recovery, metrics_port, metrics_host)


@flow_app.command("enrich")
def flow_enrich(
    recovery_dir: RecoveryDir = None,
    process_id: ProcessId = None,
    addresses: Addresses = None,
    no_recovery: NoRecovery = False,
    until_eof: UntilEof = False,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """Telemetry → join with the snapshot → enriched topic, latest vehicle state in Redis, Parquet history."""
    from flows.enrichment import build_flow

    def build(settings: Settings) -> Dataflow:
        return build_flow(settings, tail=not until_eof)

    _run_flow("enrich", build, recovery_dir, process_id, addresses, no_recovery, metrics_port, metrics_host)


@snapshot_app.command("get")
def snapshot_get(
    kind: Annotated[str, typer.Argument(help="device, car, a child role of the join model, or a table name")],
    key: Annotated[str, typer.Argument(help="Primary key")],
    at: Annotated[int | None, typer.Option(help="As of this event time (epoch ms; default: now)")] = None,
) -> None:
    """Print a device's join (its row, its car's, the car's chosen children, as of ``--at``), or the kept
    versions of one row of any table."""
    settings = get_settings()
    store = snapshot_store(settings)
    model = store.model
    if kind in ("device", model.device):
        timeline = store.lookup([key])[key]
        merged = timeline.latest if at is None else timeline.at(at)
        if merged.rows.get("device") is None:
            typer.echo(f"device {key}: not in the snapshot{'' if at is None else f' at {at}'}", err=True)
            raise typer.Exit(1)
        doc = {"rows": merged.rows, "positions": merged.positions, "devices": merged.devices}
        typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        return
    table = model.table_of(kind) if kind in model.roles else kind
    if table not in model.tables:
        typer.echo(f"unknown table or role {kind!r}", err=True)
        raise typer.Exit(2)
    versions = store.history(table, key)
    if not versions:
        typer.echo(f"{table} {key}: not in the snapshot", err=True)
        raise typer.Exit(1)
    kept = [{"position": v.position, "since": v.since, "row": v.row} for v in versions]
    typer.echo(orjson.dumps({"table": table, "key": key, "versions": kept}, option=orjson.OPT_INDENT_2))
