"""``enrich``: the command line of the engine (stack, topics, simulator; flows, API and alerts join later)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cli.alerts import alerts_app
from cli.api import api_app
from cli.flatten import flatten as flatten_command
from cli.flows import flow_app, snapshot_app
from cli.health import health_app
from cli.sql import history_app
from cli.sql import sql as sql_command
from cli.status import status as status_command
from enrich.settings import get_settings
from simulator.scenarios import SCENARIOS

# Plain tracebacks (no boxes, no locals): a worker that fails says why in one line (cli/startup.py); what
# still escapes is a bug, and its traceback should be short and greppable in a log.
app = typer.Typer(
    help="Streaming IoT enrichment engine for vehicle fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="The native local stack: a real Kafka broker (KRaft) and Redis, no Docker.")
topics_app = typer.Typer(help="Kafka topics of the engine.")
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(flow_app, name="flow")
app.add_typer(snapshot_app, name="snapshot")
app.add_typer(alerts_app, name="alerts")
app.add_typer(health_app, name="health")
app.command("flatten")(flatten_command)
app.command("status")(status_command)
app.add_typer(api_app, name="api")
app.command("sql")(sql_command)
app.add_typer(history_app, name="history")
console = Console(soft_wrap=True)


@stack_app.command("up")
def stack_up(
    timeout: float = 180.0,
    redis_cluster: Annotated[
        bool, typer.Option(help="Also start a three-master Redis Cluster (prints its redis+cluster:// URL)")
    ] = False,
) -> None:
    """Install what is missing, start Kafka and Redis, wait until both answer, create the topics."""
    from stack.errors import StackError
    from stack.manager import Stack

    settings = get_settings()
    stack = Stack(settings)
    try:
        timings = stack.up(timeout=timeout, redis_cluster=redis_cluster)
    except StackError as exc:
        console.print(f"[red]stack up failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"stack ready in {timings['total']:.1f}s (install {timings['install']:.1f}s, "
        f"start {timings['start']:.1f}s, topics {timings['topics']:.1f}s): "
        f"kafka {settings.kafka_bootstrap}, redis {settings.redis_url}"
    )
    if redis_cluster:
        console.print(f"redis cluster: {stack.redis_cluster().url}  (ENRICH_REDIS_URL to use it)")


@stack_app.command("down")
def stack_down() -> None:
    """Stop the Kafka and Redis processes that `stack up` started (nothing else; the Redis Cluster too)."""
    from stack.manager import Stack

    stopped = Stack(get_settings()).down()
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@stack_app.command("status")
def stack_status() -> None:
    """Show whether Kafka and Redis run and answer. Exit 1 unless both are ready."""
    from stack.manager import Stack

    rows = Stack(get_settings()).status()
    table = Table("component", "pid", "ready", "address")
    for row in rows:
        table.add_row(row.name, str(row.pid or "-"), "yes" if row.ready else "no", row.address)
    console.print(table)
    if not all(r.ready for r in rows):
        raise typer.Exit(1)


@topics_app.command("create")
def topics_create() -> None:
    """Create the engine's topics on the configured broker (idempotent)."""
    from stack.topics import create_topics, topic_specs

    settings = get_settings()
    outcome = create_topics(settings.kafka_bootstrap, topic_specs(settings))
    for name, what in sorted(outcome.items()):
        console.print(f"{name}: {what}")


@app.command("simulate")
def simulate(
    vehicles: Annotated[int, typer.Option(min=1, help="Number of cars")] = 100,
    devices_per_car: Annotated[int, typer.Option(min=1, help="Devices in each car")] = 1,
    rate: Annotated[float, typer.Option(min=1, help="Telemetry events per second (wall clock)")] = 1000.0,
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds to run (wall clock)")] = 10.0,
    scenario: Annotated[
        list[str] | None, typer.Option(help=f"Inject outliers: {', '.join(SCENARIOS)} (repeatable)")
    ] = None,
    cdc_format: Annotated[str, typer.Option(help="debezium or dms")] = "debezium",
    seed: Annotated[int, typer.Option(help="Random seed (runs are reproducible)")] = 1,
    time_scale: Annotated[
        float | None, typer.Option(help="Event-time seconds per wall second (default: fits the scenarios)")
    ] = None,
    incidents: Annotated[
        int | None, typer.Option(help="Incidents (and as many controls) per scenario")
    ] = None,
    ground_truth: Annotated[Path, typer.Option(help="Where to write the ground truth JSON")] = Path(
        "ground-truth.json"
    ),
) -> None:
    """Publish a simulated fleet: initial CDC load, then telemetry at a steady rate with CDC changes."""
    from simulator.run import SimConfig, Simulation

    chosen = list(scenario or [])
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or cdc_format not in ("debezium", "dms"):
        console.print(f"[red]unknown scenario or format:[/red] {unknown or cdc_format}")
        raise typer.Exit(2)
    config = SimConfig(
        vehicles=vehicles,
        devices_per_car=devices_per_car,
        rate=rate,
        duration=duration,
        scenarios=[s for s in SCENARIOS if s in chosen],
        cdc_format=cdc_format,  # type: ignore[arg-type]
        seed=seed,
        time_scale=time_scale,
        incidents_per_scenario=incidents,
        ground_truth=ground_truth,
    )
    sim = Simulation(config, get_settings())
    console.print(
        f"fleet: {vehicles} cars, {len(sim.fleet.devices)} devices, "
        f"{len(sim.fleet.reservations)} reservations; "
        f"event time x{sim.time_scale:.1f}; {len(sim.injections)} injections"
    )

    def progress(sent: int, achieved: float) -> None:
        console.print(f"  {sent} events, {achieved:,.0f}/s", highlight=False)

    report = sim.run(progress if sys.stdout.isatty() else None)
    console.print(
        f"sent {report.events} telemetry events in {report.wall_s:.2f}s: "
        f"achieved {report.rate_achieved:,.0f} events/s "
        f"({100 * report.rate_achieved / rate:.1f}% of {rate:,.0f} requested); "
        f"{report.cdc_messages} CDC messages; delivery errors {report.delivery_errors}; "
        f"ground truth: {report.ground_truth}",
        highlight=False,
    )
    if report.delivery_errors:
        raise typer.Exit(1)


rules_app = typer.Typer(help="Outlier rules: validate a rule pack, replay recorded events through it.")
app.add_typer(rules_app, name="rules")


@rules_app.command("check")
def rules_check(
    file: Annotated[Path | None, typer.Argument(help="Rule pack (default: the built-in)")] = None,
) -> None:
    """Validate and compile a rule pack against the join model's roles (ENRICH_TABLES_FILE); errors name the
    line and the field."""
    from enrich.rules.model import RuleError, load_rules
    from enrich.tables import load_model

    try:
        rules = load_rules(file, load_model(get_settings().tables_file).attribute_roles)
    except RuleError as exc:
        console.print(f"[red]{file}:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from exc
    for rule in rules:
        timed = " (timer)" if rule.uses_time else ""
        line = f"ok  {rule.id:<22} for {rule.for_ms / 1000:g}s  {rule.severity:<8} {rule.summary}{timed}"
        console.print(line, highlight=False)


@rules_app.command("test")
def rules_test(
    file: Annotated[Path | None, typer.Argument(help="Rule pack (default: the built-in)")] = None,
    events: Annotated[Path, typer.Option(help="Enriched events, one JSON document per line")] = Path(
        "events.jsonl"
    ),
) -> None:
    """Replay recorded enriched events through the rules and print the incidents."""
    import orjson

    from enrich.rules.model import load_rules
    from enrich.rules.replay import replay
    from enrich.tables import load_model

    model = load_model(get_settings().tables_file)
    docs = [orjson.loads(line) for line in events.read_bytes().splitlines() if line.strip()]
    outliers = replay(load_rules(file, model.attribute_roles), docs, model=model)
    table = Table("status", "rule", "car", "starts_at", "ends_at", "incident")
    for o in outliers:
        ends = str(o["ends_at"] or "-")
        table.add_row(
            o["status"], o["rule_id"], str(o["car_id"]), str(o["starts_at"]), ends, o["incident_id"]
        )
    console.print(table)
    console.print(f"{len(docs)} events, {sum(o['status'] == 'firing' for o in outliers)} incidents fired")


@app.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                      "allow_interspersed_args": False},
)  # fmt: skip
def run_worker(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Option(help="Worker name (default: from the command, e.g. flow-enrich)")
    ] = None,
    max_backoff: Annotated[float, typer.Option(help="Longest wait between restarts, seconds")] = 60.0,
    stable_after: Annotated[float, typer.Option(help="A run this long resets the backoff, seconds")] = 60.0,
) -> None:
    """Run a worker command (e.g. `flow enrich`, `alerts run`, `api`) and restart it when it dies.

    Restarts back off exponentially; SIGTERM/SIGINT stop it cleanly. Status: <state>/workers/<name>.json,
    output: <state>/workers/<name>.log."""
    from stack.supervisor import Policy, Supervisor, default_name

    command = list(ctx.args)
    if not command:
        console.print(
            "[red]usage:[/red] enrich run [--name NAME] <worker command...>, e.g. enrich run flow enrich"
        )
        raise typer.Exit(2)
    settings = get_settings()
    policy = Policy(max_backoff_s=max_backoff, stable_after_s=stable_after)
    sup = Supervisor(name or default_name(command), command, settings.state_dir.resolve(), policy=policy)
    sup.install_signal_handlers()
    console.print(
        f"supervising `{' '.join(command)}` as {sup.name}: status {sup.status_file}, log {sup.log_file}"
    )
    raise typer.Exit(sup.run())


@app.command("demo")
def demo(
    vehicles: Annotated[int, typer.Option(min=10)] = 500,
    rate: Annotated[float, typer.Option(min=1)] = 2000.0,
    duration: Annotated[float, typer.Option(min=1)] = 15.0,
    keep: Annotated[
        bool | None,
        typer.Option(
            "--keep/--no-keep",
            help="Keep the workers and the console running at the end (default: on a terminal)",
        ),
    ] = None,
    plain: Annotated[
        bool, typer.Option("--plain", help="Log-friendly output: no colour, no boxes, one line per row")
    ] = False,
) -> None:
    """Start the local stack if needed (servers that already answer are reused), run every worker with the
    fleet simulator and show each part of the product working. Library logs go to <state>/logs/."""
    from cli.console import CliConsole
    from cli.demo import main as run_demo

    keep_open = sys.stdin.isatty() and sys.stdout.isatty() if keep is None else keep
    code = run_demo(get_settings(), CliConsole(plain=plain), vehicles=vehicles, rate=rate, duration=duration,
                    keep=keep_open)  # fmt: skip
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
