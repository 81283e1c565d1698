"""``enrich flatten``: nested JSON → relational Parquet tables, with a schema registry and drift alerts.

Exit codes: 0 completed without drift; 3 completed with schema drift; 4 completed without drift but some
input was rejected (bad lines, missing or empty files: see the report's ``errors`` and ``_quarantine``);
5 completed with drift and rejected input; 1 failed (nothing of the run was published); 2 bad usage.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.console import CliConsole
from cli.flows import flow_app
from enrich.errors import EnrichError
from enrich.settings import Settings, get_settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DRIFT, EXIT_REJECTED, EXIT_BOTH = 0, 1, 2, 3, 4, 5
console = CliConsole(soft_wrap=True, stderr=False)  # tables fold cleanly on a narrow terminal


def exit_code(report: dict[str, Any]) -> int:
    drift, rejected = bool(report["drift"]), bool(report["rejected_input"])
    return (
        EXIT_BOTH if drift and rejected else EXIT_DRIFT if drift else EXIT_REJECTED if rejected else EXIT_OK
    )


def _on(values: list[str] | None) -> dict[str, str]:
    out = {}
    for v in values or []:
        key, sep, mode = v.partition("=")
        if not sep:
            raise typer.BadParameter(f"--on takes CLASS=MODE, got {v!r}")
        out[key.strip()] = mode.strip()
    return out


def flatten(
    sources: Annotated[
        list[str] | None, typer.Argument(help="Files, directories or globs (.jsonl, .json, .gz, .parquet)")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset name (root table, registry entry)")] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory of the tables")] = None,
    registry: Annotated[
        Path | None, typer.Option(help="Schema registry directory (default <out>/_registry)")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Write the run report (JSON) here")] = None,
    policy: Annotated[Path | None, typer.Option(help="Drift policy YAML (class: mode)")] = None,
    on: Annotated[
        list[str] | None, typer.Option(help="Policy override CLASS=MODE, e.g. incompatible=quarantine")
    ] = None,
    sep: Annotated[str, typer.Option(help="Separator of flattened column names")] = ".",
    scalar_lists: Annotated[
        str, typer.Option(help="Arrays of scalars as child 'table's or list 'column's")
    ] = "table",
    partition_by: Annotated[
        list[str] | None, typer.Option(help="Hive partitions: PATH[:date|month|hour]")
    ] = None,
    json_column: Annotated[
        str | None, typer.Option(help="Parquet sources: the column holding the JSON")
    ] = None,
    batch_mb: Annotated[int, typer.Option(min=1, help="Chunk size in MB: memory is bounded by it")] = 32,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Worker processes (default: cores, at most files)")
    ] = None,
    no_alert: Annotated[bool, typer.Option("--no-alert", help="Do not send the drift alert")] = False,
    plan_only: Annotated[
        bool, typer.Option("--plan-only", help="Only plan the run (several hosts: see README)")
    ] = False,
    finish_plan: Annotated[
        Path | None, typer.Option("--finish", help="Finish a run planned with --plan-only")
    ] = None,
) -> None:
    """Flatten nested JSON into relational Parquet tables; track the schema; alert on drift.

    Exit codes: 0 completed without drift; 3 completed with schema drift; 4 completed without drift but
    some input was rejected (see the report's errors and the _quarantine table); 5 drift and rejected
    input; 1 failed (nothing of the run published); 2 bad usage.
    """
    from flows import flatten_job as job

    settings = get_settings()
    try:
        if finish_plan is not None:
            plan = job.Plan.load(finish_plan)
        else:
            if not sources or not dataset or out is None:
                console.print("[red]give SOURCE..., --dataset and --out[/red]")
                raise typer.Exit(EXIT_USAGE)
            if scalar_lists not in ("table", "column"):
                raise typer.BadParameter("--scalar-lists is 'table' or 'column'")
            n = workers or (os.cpu_count() or 1)
            plan = job.plan(
                sources,
                dataset=dataset,
                out=out,
                registry_dir=registry or out / "_registry",
                policy_file=policy,
                policy_overrides=_on(on),
                batch_bytes=batch_mb << 20,
                sep=sep,
                scalar_lists=scalar_lists,
                partition_by=partition_by or [],
                json_column=json_column,
                workers=n,
            )
            if plan.workers > max(1, len(plan.units)):
                plan.workers = max(1, len(plan.units))
                plan.save()
            if plan_only:
                console.print(f"planned run {plan.run} of {plan.dataset}: {plan.path}")
                console.print(
                    f"  on each host K of N: enrich flow flatten --plan {plan.path} -i K -a 'h0:p;h1:p;…'"
                )
                console.print(f"  then, once all stopped: enrich flatten --finish {plan.path}")
                return
            _run_workers(plan, settings)
        result = job.finish(plan)
    except (typer.Exit, typer.BadParameter):
        raise
    except Exception as exc:  # the command's boundary: any failure is "failed", nothing was published
        kind = (
            ""
            if isinstance(exc, EnrichError | ValueError | KeyError | OSError)
            else f"{type(exc).__name__}: "
        )
        console.print(f"[red]flatten failed:[/red] {kind}{exc}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from exc
    result["alert"] = None if no_alert else _alert(settings, plan, result)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    show_report(result)
    raise typer.Exit(exit_code(result))


@contextlib.contextmanager
def _progress(plan: Any) -> Iterator[None]:
    """A progress bar (on a terminal) fed from the staged chunk results, refreshed by a thread."""
    from stores.flatten_output import Staging

    staging = Staging(Path(plan.out), plan.dataset, plan.run)
    total = sum(int(u["size"]) for u in plan.units) or 1
    started = time.monotonic()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    tty = sys.stdout.isatty()
    stop = threading.Event()
    with Progress(*columns, console=console, transient=not tty, disable=not tty) as bar:
        task = bar.add_task(f"flatten {plan.dataset} run {plan.run}", total=total, rate="")

        def poll() -> None:
            while not stop.wait(0.3):
                done, records = staging.done_bytes()
                rate = records / max(1e-6, time.monotonic() - started)
                bar.update(task, completed=min(done, total), rate=f"{records:,} records {rate:,.0f}/s")

        watcher = threading.Thread(target=poll, daemon=True, name="progress")
        if tty:
            watcher.start()
        try:
            yield
        finally:
            stop.set()
            if tty:
                watcher.join()
            bar.update(task, completed=total)


def _run_workers(plan: Any, settings: Settings) -> None:
    """Run the dataflow: in this process for one worker, else in ``plan.workers`` processes (``-i/-a``)."""
    from stack.procs import free_port

    n = plan.workers
    if n == 1:
        from flows.flatten import build_flow
        from flows.runner import RunOptions, run

        with _progress(plan):
            run(build_flow(plan), RunOptions(recovery_dir=None))
        return
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(n))
    logs = plan.staging / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        cmd = [
            sys.executable,
            "-m",
            "cli.main",
            "flow",
            "flatten",
            "--plan",
            str(plan.path),
            "-i",
            str(i),
            "-a",
            addresses,
            "--metrics-port",
            "0",
        ]  # fmt: skip  (this run's own workers: no metrics)
        with open(logs / f"worker-{i}.log", "ab") as log:
            env = {**os.environ, **settings.as_env()}
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    with _progress(plan):
        for proc in procs:
            proc.wait()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        tail = (logs / f"worker-{failed[0]}.log").read_text(errors="replace")[-2000:]
        raise OSError(f"worker(s) {failed} failed (logs in {logs}):\n{tail}")


def _alert(settings: Settings, plan: Any, result: dict[str, Any]) -> dict[str, Any] | None:
    """Resolve the previous run's open drift incident; fire this run's (one event per dataset and run)."""
    from enrich.flatten.alert import drift_event, resolved_event
    from flows.flatten_job import previous_open_alert, save_alert

    registry = Path(plan.registry)
    prev_run, prev_event = previous_open_alert(registry, plan.dataset, plan.run)
    events = []
    if prev_event is not None:
        events.append(resolved_event(prev_event, run=plan.run))
    fired = drift_event(result) if result["drift"] else None
    if fired is not None:
        events.append(fired)
    if not events:
        return None
    try:
        _produce(settings, plan.dataset, events)
    except Exception as exc:  # the data is published either way; say so, keep the incident for next time
        console.print(f"[yellow]drift alert not sent:[/yellow] {exc}", highlight=False)
        if fired is not None:
            save_alert(
                registry, plan.dataset, plan.run, {"status": "unsent", "error": str(exc), "event": fired}
            )
        return {"status": "unsent", "error": str(exc)}
    if prev_run is not None and prev_event is not None:
        save_alert(registry, plan.dataset, prev_run.run, {"status": "resolved", "event": prev_event})
    if fired is not None:
        save_alert(registry, plan.dataset, plan.run, {"status": "firing", "event": fired})
        return {"status": "firing", "incident_id": fired["incident_id"], "topic": settings.topic_outliers}
    return {"status": "resolved", "incident_id": events[0]["incident_id"], "topic": settings.topic_outliers}


def _produce(settings: Settings, dataset: str, events: list[dict[str, Any]]) -> None:
    from confluent_kafka import KafkaException, Producer

    errors: list[str] = []
    producer = Producer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "message.timeout.ms": 15000,
            "log_level": 3,
        }
    )

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    for event in events:
        producer.produce(
            settings.topic_outliers, orjson.dumps(event), dataset.encode(), on_delivery=delivered
        )
    left = producer.flush(20)
    if left or errors:
        raise KafkaException(f"{left} undelivered; {'; '.join(errors)}")


def show_report(r: dict[str, Any]) -> None:
    after = r["schema_version_after"]
    console.rule(f"{r['dataset']} run {r['run']}: schema v{r['schema_version_before'] or '-'} -> v{after}")
    tables = Table("table", "rows")
    for name, rows in r["tables"].items():
        tables.add_row(name, f"{rows:,}")
    console.print(tables)
    if r["drift"]:
        drift = Table("path", "change", "old", "new", "example", "first seen", "policy", title="schema drift")
        for f in r["drift"]:
            seen = f["first_seen"] or {}
            where = f"{Path(seen['file']).name}:{seen['line']}" if seen else "-"
            example = orjson.dumps(f["example"]).decode()
            drift.add_row(
                f["path"],
                f["change"],
                f["old_type"] or "-",
                f["new_type"] or "-",
                example[:30],
                where,
                f["policy"],
            )
        console.print(drift)
    if r["errors"]:
        errs = Table("file", "line", "reason", "detail", title=f"rejected input ({r['rejected_input']})")
        for e in r["errors"][:20]:
            errs.add_row(
                Path(e["file"]).name,
                str(e.get("line") if e.get("line") is not None else "-"),
                e["reason"],
                str(e.get("detail", ""))[:60],
            )
        console.print(errs)
    alert = r.get("alert")
    console.print(
        f"{r['records']:,} records from {r['files']} file(s); quarantined {r['quarantined']:,}; "
        f"drift findings {len(r['drift'])}; alert: {alert['status'] if alert else 'none'}",
        highlight=False,
    )


@flow_app.command("flatten")
def flow_flatten(
    plan_path: Annotated[
        Path, typer.Option("--plan", help="plan.json of the run (enrich flatten --plan-only)")
    ],
    process_id: Annotated[int | None, typer.Option("--process-id", "-i")] = None,
    addresses: Annotated[str | None, typer.Option("--addresses", "-a")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Prometheus metrics port (0 = off; default: the kind's, 9467 + 10 x -i)"),
    ] = None,
    metrics_host: Annotated[str, typer.Option(envvar="ENRICH_METRICS_HOST")] = "127.0.0.1",
) -> None:
    """One worker of a flatten run: its share of the plan's files → staged tables (bytewax, no recovery:
    a run that fails is simply run again)."""
    from cli import startup
    from cli.flows import run_worker
    from flows.flatten import build_flow
    from flows.flatten_job import Plan
    from flows.runner import RunOptions, run

    command = "flow flatten"
    settings = startup.load_settings(command)
    reg = startup.register(settings, "flow-flatten", sys.argv[1:] or ["flow", "flatten"],
                           process_id=process_id, handle_sigterm=True)  # fmt: skip
    try:
        plan = Plan.load(plan_path)
    except (OSError, ValueError, KeyError) as exc:
        startup.cannot_start(command, f"plan {plan_path}: {startup.one_line(exc)}", startup.EXIT_CONFIG, reg)
    port = settings.metrics_port_for("flow-flatten", process_id) if metrics_port is None else metrics_port
    reg.running(metrics_url=startup.serve_metrics(command, port, metrics_host, reg))
    options = RunOptions(
        recovery_dir=None, process_id=process_id, addresses=addresses.split(";") if addresses else None
    )
    run_worker(command, reg, lambda: run(build_flow(plan), options), expected={})
