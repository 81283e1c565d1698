"""SQL over the history: DuckDB (embedded, in process) reading the Parquet files where they lie.

Views, registered by name on one DuckDB connection:

* ``raw`` — every telemetry message as read from Kafka (``<history>/raw``: ``topic``, ``partition``,
  ``offset``, ``kafka_ts``, ``key``, ``value`` bytes), placed by Kafka timestamp;
* ``enriched`` — every enriched event (``<history>/enriched``: ``offset``, ``event_id``, ``car_id``, ``ts``,
  ``status``, ``json`` text), placed by event time;
* ``outliers`` — the outlier topic's messages archived by ``enrich history archive`` (``<history>/outliers``,
  the raw layout, ``event`` = the parsed JSON) and ``incidents`` — one row per outlier event with its
  fields as columns (``incident_id``, ``rule_id``, ``status``, ``severity``, ``car_id``, ``starts_at``,
  ``ends_at``, ``generated_at``);
* every table of ``enrich flatten`` output directories (``<lake>/<table>/…``), by its table name.

Each history view has the Hive partition columns ``date`` (DATE) and ``hour`` (INTEGER): a filter on them
is pushed into the file listing, so DuckDB opens only the files of the matching partitions (pruning). A
kind with no files yet is an empty view with the same columns, so queries work on a fresh install. The
layout is plain Hive-partitioned Parquet: Trino, Spark and Athena read the same directories (README).

Files appear whole (the writers rename finished files into place) and are read as they are when the query
runs: a query sees the history as of its start.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import duckdb
import pyarrow as pa

from stores.parquet_history import ENRICHED_SCHEMA, RAW_SCHEMA

Format = Literal["table", "csv", "json", "jsonl", "parquet"]
HISTORY_KINDS: dict[str, pa.Schema] = {"raw": RAW_SCHEMA, "enriched": ENRICHED_SCHEMA, "outliers": RAW_SCHEMA}
HIVE_TYPES = "{'date': 'DATE', 'hour': 'INTEGER'}"
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")

DERIVED = {
    "outliers": """
        SELECT topic, "partition", "offset", kafka_ts, decode(value)::JSON AS event, date, hour
        FROM {source}""",
    "incidents": """
        SELECT event->>'incident_id' AS incident_id, event->>'rule_id' AS rule_id,
               event->>'status' AS status, event->>'severity' AS severity,
               TRY_CAST(event->>'car_id' AS BIGINT) AS car_id,
               TRY_CAST(event->>'starts_at' AS BIGINT) AS starts_at,
               TRY_CAST(event->>'ends_at' AS BIGINT) AS ends_at,
               TRY_CAST(event->>'generated_at' AS BIGINT) AS generated_at,
               event, date, hour
        FROM outliers""",
}

# The documented example queries (README, `enrich sql --example NAME`, and the test that checks them against
# the produced events). Named parameters ($car, …) are bound with `--param car=1042`.
EXAMPLES: dict[str, tuple[str, str]] = {
    "events-per-car-per-hour": (
        "Enriched events per car and hour of event time",
        """SELECT car_id, date, hour, count(*) AS events
FROM enriched
GROUP BY ALL
ORDER BY car_id, date, hour""",
    ),
    "incidents-per-rule-per-day": (
        "Incidents (distinct incident ids) per rule and day they started (UTC)",
        """SELECT rule_id, CAST(epoch_ms(starts_at) AS DATE) AS day,
       count(DISTINCT incident_id) AS incidents
FROM incidents
GROUP BY ALL
ORDER BY day, rule_id""",
    ),
    "signal-history": (
        "The signal history of one car ($car), in event-time order",
        """SELECT epoch_ms(ts) AS at,
       json::JSON->>'device_id' AS device,
       CAST(json::JSON->'signals'->>'Vehicle.Speed' AS DOUBLE) AS speed_kmh,
       CAST(json::JSON->'signals'->>'Vehicle.LowVoltageBattery.CurrentVoltage' AS DOUBLE) AS battery_12v,
       CAST(json::JSON->'signals'->>'Vehicle.Powertrain.TractionBattery.StateOfCharge.Current' AS DOUBLE)
         AS charge_pct,
       CAST(json::JSON->'signals'->>'Vehicle.Body.Lights.Beam.Low.IsOn' AS BOOLEAN) AS low_beam
FROM enriched
WHERE car_id = $car
ORDER BY ts, json::JSON->>'seq'""",
    ),
    "one-hour": (
        "Partition pruning: only the files of one hour ($date, $hour) are read",
        """SELECT status, count(*) AS events, count(DISTINCT car_id) AS cars
FROM enriched
WHERE date = CAST($date AS DATE) AND hour = $hour
GROUP BY ALL""",
    ),
}


class SqlError(Exception):
    """A query or a source that DuckDB refused (the message is DuckDB's)."""


@dataclass(frozen=True, slots=True)
class View:
    name: str
    kind: Literal["history", "derived", "table"]
    source: str  # directory (history, tables) or the view it is defined over
    files: int


def _quote_path(p: Path | str) -> str:
    return "'" + str(p).replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _has_parquet(folder: Path) -> int:
    return sum(1 for _ in folder.glob("**/*.parquet")) if folder.is_dir() else 0


def lake_tables(lake: Path) -> Iterable[tuple[str, Path]]:
    """The published tables of an ``enrich flatten`` output directory (``_staging``, ``_registry`` and other
    ``_`` folders are not tables)."""
    if not lake.is_dir():
        return
    for child in sorted(lake.iterdir()):
        if child.is_dir() and not child.name.startswith(("_", ".")) and _TABLE_NAME.match(child.name):
            yield child.name, child


class HistorySQL:
    """One DuckDB connection with the history and lake tables registered as views."""

    def __init__(self, history: Path, lakes: Sequence[Path] = (), *, threads: int | None = None) -> None:
        self.history = history
        self.con = duckdb.connect(":memory:")
        if threads is not None:
            self.con.execute(f"SET threads = {int(threads)}")
        self.views: list[View] = []
        self.skipped: list[str] = []
        for kind, schema in HISTORY_KINDS.items():
            self._history_view(kind, schema)
        self.con.execute(f"CREATE VIEW outliers AS {DERIVED['outliers'].format(source='_outliers_files')}")
        self.con.execute(f"CREATE VIEW incidents AS {DERIVED['incidents']}")
        self.views.append(View("incidents", "derived", "outliers", 0))
        taken = {v.name for v in self.views}
        for lake in lakes:
            for name, folder in lake_tables(lake):
                files = _has_parquet(folder)
                if name in taken or not files:
                    self.skipped.append(f"{folder}: " + ("name taken" if name in taken else "no files"))
                    continue
                glob = _quote_path(folder / "**" / "*.parquet")
                self.con.execute(
                    f"CREATE VIEW {_ident(name)} AS SELECT * FROM read_parquet({glob}, "
                    "hive_partitioning = true, union_by_name = true)"
                )
                taken.add(name)
                self.views.append(View(name, "table", str(folder), files))

    def _history_view(self, kind: str, schema: pa.Schema) -> None:
        folder = self.history / kind
        files = _has_parquet(folder)
        # the archived outliers are the raw layout; their public view parses the JSON (DERIVED)
        name = "_outliers_files" if kind == "outliers" else kind
        if files:
            glob = _quote_path(folder / "**" / "*.parquet")
            body = f"SELECT * FROM read_parquet({glob}, hive_partitioning = true, hive_types = {HIVE_TYPES})"
        else:  # no files yet: the same columns, no rows
            self.con.register(f"_{kind}_empty", schema.empty_table())
            body = f"SELECT *, NULL::DATE AS date, NULL::INTEGER AS hour FROM _{kind}_empty WHERE false"
        self.con.execute(f"CREATE VIEW {name} AS {body}")
        self.views.append(View(kind, "history", str(folder), files))

    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> duckdb.DuckDBPyConnection:
        try:
            return self.con.execute(sql, dict(params) if params else None)
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from None

    def arrow(self, sql: str, params: Mapping[str, Any] | None = None) -> pa.Table:
        """The whole result as an Arrow table."""
        try:
            rel = self.con.sql(sql, params=dict(params) if params else None)
            result = rel.to_arrow_table() if rel is not None else pa.table({})  # None: not a query
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from None
        table: pa.Table = result
        return table

    def copy(self, sql: str, out: Path, fmt: Format, params: Mapping[str, Any] | None = None) -> int:
        """Write the result to ``out`` (streamed by DuckDB, never held whole in memory); the row count."""
        options = {"csv": "FORMAT csv, HEADER", "json": "FORMAT json, ARRAY true",
                   "jsonl": "FORMAT json", "parquet": "FORMAT parquet, COMPRESSION zstd"}[fmt]  # fmt: skip
        query = sql.strip().rstrip(";")
        try:
            row = self.con.execute(
                f"COPY ({query}) TO {_quote_path(out)} ({options})", dict(params) if params else None
            ).fetchone()
        except duckdb.Error as exc:
            raise SqlError(str(exc)) from None
        return int(row[0]) if row else 0

    def close(self) -> None:
        self.con.close()


def parse_params(pairs: Iterable[str]) -> dict[str, Any]:
    """``name=value`` pairs as query parameters: integers and decimals as numbers, the rest as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not _TABLE_NAME.match(name):
            raise SqlError(f"--param takes NAME=VALUE, got {pair!r}")
        for cast in (int, float):
            try:
                out[name] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[name] = value
    return out
