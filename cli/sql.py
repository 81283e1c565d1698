"""``enrich sql "SELECT …"``: SQL over the Parquet history and the flattened tables (DuckDB, in process);
``enrich history archive``: copy the outliers topic into the history, so incidents are queryable too.

Exit codes: 0 ok; 1 the query failed (DuckDB's message is printed); 2 bad usage.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from enrich.settings import Settings, get_settings

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
history_app = typer.Typer(help="The Parquet history: archive topics into it (see also `enrich sql`).")
FORMATS = ("table", "csv", "json", "jsonl", "parquet")


def history_root(settings: Settings) -> Path:
    return Path(settings.history_dir or Path(settings.state_dir) / "history")


def default_lakes(settings: Settings) -> list[Path]:
    return [Path(settings.lake_dir or Path(settings.state_dir) / "lake")]


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def sql(
    query: Annotated[
        str | None, typer.Argument(help="The SQL (DuckDB dialect); '-' reads it from stdin")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, csv, json, jsonl or parquet")] = "table",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the result to this file")] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Query parameter NAME=VALUE, used as $NAME")
    ] = None,
    example: Annotated[str | None, typer.Option(help="Run a documented example query by name")] = None,
    examples: Annotated[bool, typer.Option("--examples", help="List the example queries")] = False,
    views: Annotated[bool, typer.Option("--views", help="List the views and their sources")] = False,
    history: Annotated[
        Path | None, typer.Option(help="History root (default ENRICH_HISTORY_DIR or <state>/history)")
    ] = None,
    lake: Annotated[
        list[Path] | None,
        typer.Option(help="`enrich flatten` output directory (repeatable; default ENRICH_LAKE_DIR)"),
    ] = None,
    max_rows: Annotated[int, typer.Option(min=1, help="Rows shown by --format table")] = 200,
) -> None:
    """Query the history with SQL: views `raw`, `enriched`, `outliers`, `incidents` and every flattened
    table, Hive partitions `date`/`hour` pruned. Example: enrich sql "select count(*) from enriched"."""
    from stores.history_sql import EXAMPLES, HistorySQL, SqlError, parse_params

    if examples:
        for name, (title, text) in EXAMPLES.items():
            console.print(f"[bold]{name}[/bold] — {title}\n{text}\n", highlight=False)
        return
    if fmt not in FORMATS:
        err.print(f"[red]--format must be one of {', '.join(FORMATS)}[/red]")
        raise typer.Exit(2)
    if fmt == "parquet" and out is None:
        err.print("[red]--format parquet needs --out FILE[/red]")
        raise typer.Exit(2)
    if example is not None:
        if example not in EXAMPLES:
            err.print(f"[red]no example {example!r}; try --examples[/red]")
            raise typer.Exit(2)
        query = EXAMPLES[example][1]
    elif query == "-":
        query = sys.stdin.read()
    settings = get_settings()
    db = HistorySQL(history or history_root(settings), lake if lake else default_lakes(settings))
    try:
        if views:
            table = Table("view", "kind", "files", "source")
            for v in db.views:
                table.add_row(v.name, v.kind, str(v.files), v.source)
            console.print(table)
            for note in db.skipped:
                console.print(f"  not registered: {note}", highlight=False)
            return
        if not query or not query.strip():
            err.print("[red]give a query, --example NAME, --examples or --views[/red]")
            raise typer.Exit(2)
        params = parse_params(param or [])
        start = time.perf_counter()
        if out is not None:
            n = db.copy(query, out, "csv" if fmt == "table" else fmt, params)  # type: ignore[arg-type]
            err.print(f"{n:,} rows → {out} ({time.perf_counter() - start:.2f}s)", highlight=False)
            return
        result = db.arrow(query, params)
        _print(result, fmt, max_rows)
        if fmt == "table":
            err.print(f"{result.num_rows:,} rows ({time.perf_counter() - start:.2f}s)", highlight=False)
    except SqlError as exc:
        err.print(f"[red]query failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        db.close()


def _print(result: Any, fmt: str, max_rows: int) -> None:
    import pyarrow.csv as pacsv

    if fmt == "csv":
        pacsv.write_csv(result, sys.stdout.buffer)
        return
    rows = result.to_pylist()
    if fmt == "json":
        sys.stdout.buffer.write(orjson.dumps(rows, default=_json_default) + b"\n")
        return
    if fmt == "jsonl":
        for row in rows:
            sys.stdout.buffer.write(orjson.dumps(row, default=_json_default) + b"\n")
        return
    table = Table(*result.column_names)
    for row in rows[:max_rows]:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    console.print(table)
    if len(rows) > max_rows:
        console.print(f"… {len(rows) - max_rows:,} more rows (--max-rows, or --format csv)", highlight=False)


@history_app.command("archive")
def archive(
    topic: Annotated[str | None, typer.Option(help="Topic (default: the outliers topic)")] = None,
    kind: Annotated[str, typer.Option(help="Folder under the history root")] = "outliers",
    every: Annotated[float, typer.Option(min=0, help="Repeat every N seconds until stopped (0: once)")] = 0.0,
) -> None:
    """Copy what the topic holds into <history>/<kind>/date=…/hour=… (idempotent: only offsets not on disk
    yet), so `enrich sql` can query incidents (views `outliers`, `incidents`)."""
    from stores.history_archive import archive_topic

    settings = get_settings()
    name = topic or settings.topic_outliers
    while True:
        written = archive_topic(settings.kafka_bootstrap, name, history_root(settings), kind)
        console.print(
            f"archived {sum(written.values()):,} records of {name} into {history_root(settings) / kind}",
            highlight=False,
        )
        if every <= 0:
            return
        time.sleep(every)
