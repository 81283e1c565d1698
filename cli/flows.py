"""``enrich flow ...`` (run dataflows as workers) and ``enrich snapshot ...`` (read the snapshot store)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer

from cli.recovery import recovery_app
from enrich.settings import Settings, WorkerKind, get_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from bytewax.dataflow import Dataflow

    from flows.runner import RunOptions
    from stack.registry import Registration
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
MetricsPort = Annotated[
    int | None,
    typer.Option(
        help="Prometheus metrics port (0 = off; default: the kind's, see `ENRICH_METRICS_PORT_BASE`)"
    ),
]
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
    """Start a flow worker: settings, registration, dataflow, metrics port, input topics — each failure one
    line and a non-zero exit (cli/startup.py) — then run it until it ends or is stopped."""
    import yaml
    from pydantic import ValidationError

    from cli import startup
    from enrich.errors import EnrichError
    from flows.recovery import RecoveryLayoutError
    from flows.runner import run
    from stack.registry import kafka_probe

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = f"flow {name}"
    kind: WorkerKind = "flow-snapshot" if name == "snapshot" else "flow-enrich"
    settings = startup.load_settings(command)
    reg = startup.register(settings, kind, [*sys.argv[1:]] or ["flow", name], process_id=process_id,
                           probe=kafka_probe, handle_sigterm=True)  # fmt: skip
    port = settings.metrics_port_for(kind, process_id) if metrics_port is None else metrics_port
    url = startup.serve_metrics(command, port, metrics_host, reg)  # first: building may wait for Redis
    try:
        flow = build(settings)
    except (EnrichError, ValidationError, OSError, yaml.YAMLError) as exc:
        # Bad configuration (settings, tables, rules): restarting cannot help, say so with EX_CONFIG.
        why = f"configuration error: {startup.one_line(exc)}"
        startup.cannot_start(command, why, startup.EXIT_CONFIG, reg)
    startup.check_topics(command, settings, startup.input_topics(flow), reg)
    reg.running(metrics_url=url)
    options = _run_options(settings, name, recovery_dir, no_recovery, process_id, addresses)
    run_worker(command, reg, lambda: run(flow, options), expected={RecoveryLayoutError: 2})


def run_worker(
    command: str, reg: Registration, body: Callable[[], None], expected: dict[type[Exception], int]
) -> None:
    """Run a registered worker's main loop: a clean end or Ctrl-C removes its heartbeat; an ``expected``
    error is one line and its exit code; anything else prints the error where it was raised (not bytewax's
    wrappers around it), stays in the heartbeat as the worker's last error, and exits 1."""
    import traceback

    from cli import startup

    try:
        body()
    except KeyboardInterrupt:
        reg.close()
        raise typer.Exit(130) from None
    except Exception as exc:
        root = root_cause(exc)
        if isinstance(root, KeyboardInterrupt):
            reg.close()
            raise typer.Exit(130) from None
        for kind, code in expected.items():
            if isinstance(root, kind):
                startup.cannot_start(command, str(root), code, reg)
        traceback.print_exception(root)
        reg.fail(f"{type(root).__name__}: {startup.one_line(root)}", 1)
        raise typer.Exit(1) from None
    reg.close()


def root_cause(exc: BaseException) -> BaseException:
    """The exception at the bottom of a chain (bytewax wraps what a step raised in BytewaxRuntimeErrors)."""
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


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
