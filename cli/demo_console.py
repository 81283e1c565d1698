"""The demo's console and SQL part: archive the outliers topic into the history, answer the documented
``enrich sql`` examples on this run's history, and print the console's address with a key to open it."""

from __future__ import annotations

import subprocess
import sys

import orjson
from rich.console import Console
from rich.table import Table

from cli.sql import history_root
from enrich.settings import Settings
from stores.history_archive import archive_topic
from stores.history_sql import EXAMPLES, HistorySQL, SqlError


def show_sql(settings: Settings, console: Console) -> None:
    root = history_root(settings)
    written = archive_topic(settings.kafka_bootstrap, settings.topic_outliers, root, "outliers")
    console.rule(f"SQL over the history ({root})")
    console.print(
        f"  $ enrich history archive   -> {sum(written.values())} new outlier events archived",
        highlight=False,
    )
    db = HistorySQL(root)
    try:
        for name, limit in (("incidents-per-rule-per-day", 10), ("events-per-car-per-hour", 5)):
            title, text = EXAMPLES[name]
            try:
                result = db.arrow(f"SELECT * FROM ({text}) LIMIT {limit}")
            except SqlError as exc:
                console.print(f"  {name}: {exc}", highlight=False)
                continue
            table = Table(*result.column_names, title=f"enrich sql --example {name}  ({title})")
            for row in result.to_pylist():
                table.add_row(*(str(v) for v in row.values()))
            console.print(table)
        raw = db.arrow("SELECT count(*) AS n FROM raw").column("n")[0].as_py()
        enriched = db.arrow("SELECT count(*) AS n FROM enriched").column("n")[0].as_py()
        console.print(
            f"  the history holds {raw:,} raw and {enriched:,} enriched events; try: "
            'enrich sql "SELECT status, count(*) FROM enriched GROUP BY ALL"',
            highlight=False,
            markup=False,
        )
    finally:
        db.close()


def console_key(name: str = "console", tag: str = "role=ops") -> str:
    cmd = [sys.executable, "-m", "cli.main", "api", "keys", "create", "--name", name, "--tag", tag, "--json"]
    out = subprocess.run(cmd, capture_output=True, check=True)
    return str(orjson.loads(out.stdout)["key"])


def show_console(console: Console, api_base: str, *, keep: bool) -> None:
    key = console_key()
    partner = console_key("console-partner", "environment=beta")
    console.rule("Fleet console")
    console.print(f"  open {api_base}/#key={key}", highlight=False, markup=False, emoji=False)
    console.print(
        f"  (or open {api_base}/ and paste the key {key}; a partner's view: {api_base}/#key={partner})",
        highlight=False,
        markup=False,
        emoji=False,
    )
    if not keep:
        console.print(
            "  the API stops with the demo; run `enrich api` (and the flows) to keep the console up",
            highlight=False,
        )


def wait_for_interrupt(console: Console) -> None:
    console.print("the workers and the console keep running: press Ctrl-C to stop them", highlight=False)
    try:
        import time

        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        console.print("stopping")
