"""``enrich status``: every worker on this host — state, input lag, throughput, last error (stack/status.py).

Columns like ``kubectl get``: aligned, no boxes, one line per worker (log-friendly; colour only on a
terminal), then one line per worker that needs attention with its error. Exit 1 when a worker is dead,
unresponsive or restarting, so scripts and probes can use it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape

from stack.status import WorkerRow, collect, forget

STYLE = {
    "running": "green",
    "starting": "cyan",
    "stopped": "dim",
    "restarting": "bold yellow",
    "unresponsive": "bold red",
    "dead": "bold white on red",
}


def _ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "-"
    s = max(0, (now_ms - ms) // 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def _lag(row: WorkerRow) -> str:
    if not row.inputs or row.state != "running":
        return "-"
    return "?" if row.lag is None else f"{row.lag:,}"


def _rate(row: WorkerRow) -> str:
    if row.rate is None or row.state != "running":
        return "-"
    return f"{row.rate:,.0f} {'req' if row.unit.startswith('requests') else 'rec'}/s"


def table_lines(rows: list[WorkerRow], now_ms: int) -> list[tuple[str, WorkerRow | None]]:
    """The table as text lines (header first), each with its row (None for the header)."""
    supervised = any(r.supervised for r in rows)
    header = ["WORKER", "STATE", "PID", "UP", "INPUT LAG", "RATE", *(["RESTARTS"] if supervised else [])]
    cells = [
        [r.name, r.state, str(r.pid or "-"), _ago(r.started_at, now_ms) if r.state == "running" else "-",
         _lag(r), _rate(r), *([str(r.restarts if r.restarts is not None else "-")] if supervised else [])]
        for r in rows
    ]  # fmt: skip
    widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
    right = {2, 4}  # numbers

    def line(values: list[str]) -> str:
        out = [
            v.rjust(w) if i in right else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return [(line(header), None), *((line(c), r) for c, r in zip(cells, rows, strict=True))]


def render(rows: list[WorkerRow], console: Console, *, color: bool, workers_dir: Path) -> None:
    now = int(time.time() * 1000)
    if not rows:
        hint = "start them with this ENRICH_STATE_DIR: enrich flow …, alerts run, api, run …"
        console.print(f"no workers registered in {workers_dir} ({hint})", highlight=False, soft_wrap=True)
        return
    for text, row in table_lines(rows, now):
        shown = escape(text)
        if color and row is not None:
            at = text.index(row.state, len(row.name))
            colored = f"[{STYLE[row.state]}]{row.state}[/]"
            shown = escape(text[:at]) + colored + escape(text[at + len(row.state) :])
        elif color:
            shown = f"[bold]{shown}[/]"
        console.print(shown, highlight=False, soft_wrap=not color)
    for row in rows:
        if row.error and (not row.healthy or row.waiting_for or row.state == "running"):
            mark = "!" if row.healthy else "x"
            line = f"{mark} {row.name}: {row.error}"
            style = "yellow" if row.healthy else "red"
            console.print(f"[{style}]{escape(line)}[/]" if color else escape(line), highlight=False,
                          soft_wrap=not color)  # fmt: skip
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    bad = [r.name for r in rows if not r.healthy]
    tail = f" — needs attention: {', '.join(bad)}" if bad else ""
    console.print(escape(f"{len(rows)} worker(s): {summary}{tail}"), highlight=False, soft_wrap=not color)


def status(
    names: Annotated[list[str] | None, typer.Argument(help="Only these workers (default: all)")] = None,
    wait: Annotated[
        float | None,
        typer.Option(help="Wait up to this many seconds until the workers run and their input lag is 0"),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON (one object per worker)")] = False,
    plain: Annotated[
        bool, typer.Option("--plain", help="No colour (the default when not a terminal)")
    ] = False,
    prune: Annotated[bool, typer.Option("--prune", help="Forget dead and stopped workers")] = False,
) -> None:
    """Every worker started on this host (flows, alerts, API; directly or under `enrich run`): state
    (running, starting, restarting, unresponsive, dead, stopped), input lag, throughput and last error.

    Input lag is what the worker reports of its Kafka inputs (high watermark − its read position: the flows
    keep offsets in bytewax recovery, not in Kafka). Exit 1 when a worker is dead, unresponsive or
    restarting (with --wait: when they did not all run caught up in time)."""
    from enrich.settings import get_settings

    workers_dir = get_settings().state_dir.resolve() / "workers"
    wanted = list(names or [])

    def select() -> list[WorkerRow]:
        rows = collect(workers_dir)
        return [r for r in rows if r.name in wanted] if wanted else rows

    rows = select()
    ok = all(r.healthy for r in rows)
    if wait is not None:
        deadline = time.monotonic() + wait

        def ready(rows: list[WorkerRow]) -> bool:
            found = {r.name for r in rows}
            return bool(rows) and all(n in found for n in wanted) and all(r.caught_up for r in rows)

        while not ready(rows) and time.monotonic() < deadline:
            time.sleep(0.5)
            rows = select()
        ok = ready(rows)
    console = Console(no_color=plain, soft_wrap=True)
    if prune:
        gone = forget(workers_dir, rows)
        rows = [r for r in rows if r.name not in gone]
        if gone and not json_out:
            console.print(f"forgot {', '.join(gone)}", highlight=False)
    if json_out:
        typer.echo(orjson.dumps([r.as_dict() for r in rows], option=orjson.OPT_INDENT_2).decode())
    else:
        render(rows, console, color=console.is_terminal and not plain, workers_dir=workers_dir)
        if wait is not None and not ok:
            missing = [n for n in wanted if n not in {r.name for r in rows}]
            why = f"not registered: {', '.join(missing)}" if missing else "not all running with input lag 0"
            console.print(f"gave up after {wait:g}s: {why}", highlight=False)
    if not ok:
        raise typer.Exit(1)
