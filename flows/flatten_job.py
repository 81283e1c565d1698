"""The flattening job around the engine: plan a run, work units (files), finish the run.

* :func:`plan` expands the sources, rolls forward a run that crashed while publishing, drops the staging
  of runs that crashed before, allocates the run (and its unit numbers) in the registry and writes
  ``plan.json`` into the run's staging directory. Every worker process reads the same plan.
* :func:`work` flattens units with one :class:`~enrich.flatten.arrow.chunk.Flattener` and stages results —
  what a bytewax worker does (``flows/flatten.py``) and what tests call directly.
* :func:`finish` replays what the chunks saw (:mod:`enrich.flatten.findings`), writes the run outcome into
  the run record, publishes the tables, then the new schema version (in this order, so a crash in between
  is rolled forward by the next run), and returns the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from enrich.flatten.arrow.chunk import ChunkResult, Flattener, Options, PartitionBy
from enrich.flatten.findings import PieceRecord
from enrich.flatten.findings import finish as replay
from enrich.flatten.policy import load_policies, parse_policies
from enrich.flatten.registry import RegistryConflictError, RunRecord, SchemaRegistry, SchemaVersion, now_iso
from enrich.flatten.schema import DriftEvent, Node
from stores.flatten_output import Staging, remove_stale, staging_dir
from stores.flatten_sources import chunks, expand
from stores.schema_registry import FileSchemaRegistry


@dataclass(slots=True)
class Plan:
    dataset: str
    run: int
    out: str
    registry: str
    units: list[dict[str, Any]]  # {"unit", "path", "size"}
    missing: list[dict[str, Any]]
    policies: dict[str, str]
    schema: dict[str, Any] | None  # the registry's latest version (None: first run)
    version_before: int | None
    batch_bytes: int = 32 << 20
    sep: str = "."
    scalar_lists: str = "table"
    partition_by: list[str] = field(default_factory=list)
    json_column: str | None = None
    workers: int = 1
    started_at_ms: int = 0

    @property
    def staging(self) -> Path:
        return staging_dir(Path(self.out), self.dataset, self.run)

    @property
    def path(self) -> Path:
        return self.staging / "plan.json"

    def save(self) -> None:
        from stores.schema_registry import replace_atomic

        replace_atomic(self.path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> Plan:
        return cls(**orjson.loads(path.read_bytes()))

    def options(self, threads: bool) -> Options:
        return Options(
            self.dataset,
            self.run,
            self.sep,
            self.scalar_lists,  # type: ignore[arg-type]
            tuple(PartitionBy.parse(p) for p in self.partition_by),
            threads,
        )


def plan(
    sources: list[str],
    *,
    dataset: str,
    out: Path,
    registry_dir: Path,
    policy_file: Path | None = None,
    policy_overrides: dict[str, str] | None = None,
    batch_bytes: int = 32 << 20,
    sep: str = ".",
    scalar_lists: str = "table",
    partition_by: Iterable[str] = (),
    json_column: str | None = None,
    workers: int = 1,
) -> Plan:
    """Allocate a run and write its plan (raises EnrichError subclasses on bad options)."""
    policies = load_policies(policy_file, policy_overrides)
    for spec in partition_by:
        PartitionBy.parse(spec)
    registry = FileSchemaRegistry(registry_dir)
    recover(registry, dataset, out)
    files, missing = expand(sources)
    latest = registry.latest(dataset)
    record = registry.begin_run(dataset, len(files))
    record.schema_version_before = latest.version if latest else None
    registry.save_run(record)
    remove_stale(out, dataset, keep=record.run)
    p = Plan(
        dataset=dataset,
        run=record.run,
        out=str(out),
        registry=str(registry_dir),
        units=[{"unit": record.unit_base + i, "path": f.path, "size": f.size} for i, f in enumerate(files)],
        missing=[{"file": m.source, "line": None, "reason": "missing", "detail": m.reason} for m in missing],
        policies={str(k): str(v) for k, v in policies.modes.items()},
        schema=latest.schema if latest else None,
        version_before=latest.version if latest else None,
        batch_bytes=batch_bytes,
        sep=sep,
        scalar_lists=scalar_lists,
        partition_by=list(partition_by),
        json_column=json_column,
        workers=max(1, workers),
        started_at_ms=int(time.time() * 1000),
    )
    p.save()
    return p


def assign(units: list[dict[str, Any]], workers: int) -> list[list[dict[str, Any]]]:
    """Spread units over workers, largest first onto the least loaded (deterministic)."""
    loads = [[0, i, []] for i in range(workers)]  # type: list[list[Any]]
    for u in sorted(units, key=lambda u: (-int(u["size"]), int(u["unit"]))):
        target = min(loads, key=lambda w: (w[0], w[1]))
        target[0] += max(1, int(u["size"]))
        target[2].append(u)
    return [sorted(w[2], key=lambda u: int(u["unit"])) for w in loads]


def flattener(p: Plan, threads: bool) -> Flattener:
    schema = Node.from_doc(p.schema) if p.schema else Node("struct", fields={})
    return Flattener(schema, parse_policies(p.policies), p.options(threads), first_run=p.schema is None)


def work(
    p: Plan,
    units: list[dict[str, Any]],
    *,
    threads: bool = True,
    on_result: Callable[[ChunkResult], None] | None = None,
) -> None:
    """Flatten ``units`` in this process and stage their results."""
    engine = flattener(p, threads)
    staging = Staging(Path(p.out), p.dataset, p.run)
    for u in units:
        for chunk in chunks(Path(u["path"]), int(u["unit"]), p.batch_bytes, json_column=p.json_column):
            result = engine.process(chunk)
            staging.write(result)
            if on_result is not None:
                on_result(result)


def _events(doc: dict[str, Any]) -> list[DriftEvent]:
    return [
        DriftEvent(
            e["path"],
            e["change"],
            e["old_type"],
            e["new_type"],
            e["origin"],
            e["policy"],
            e.get("example"),
            e.get("first_seen"),
        )
        for e in doc.get("events", [])
    ]


def finish(p: Plan) -> dict[str, Any]:
    """Settle the run (findings, run record, tables, schema version) and return the report."""
    registry = FileSchemaRegistry(Path(p.registry))
    staging = Staging(Path(p.out), p.dataset, p.run)
    docs = list(staging.results())
    pieces: list[PieceRecord] = []
    events: list[DriftEvent] = []
    tables: dict[str, int] = {}
    errors: list[dict[str, Any]] = list(p.missing)
    quarantined = records = 0
    dropped: dict[str, int] = {}
    for doc in sorted(docs, key=lambda d: (d["unit"], d["index"])):
        for i, piece in enumerate(doc["pieces"]):
            stats = {k: (int(v[0]), int(v[1])) for k, v in piece["stats"].items()}
            pieces.append(PieceRecord((doc["unit"], doc["index"], i), piece["tree"], stats))
        events.extend(_events(doc))
        for name, n in doc["rows"].items():
            tables[name] = tables.get(name, 0) + int(n)
        for path, n in doc.get("dropped", {}).items():
            dropped[path] = dropped.get(path, 0) + int(n)
        quarantined += int(doc["quarantined"])
        records += int(doc["records"])
        errors.extend(doc["bad"])
    file_order = {u["path"]: i for i, u in enumerate(p.units)}
    registry_schema = Node.from_doc(p.schema) if p.schema else None
    outcome = replay(registry_schema, pieces, events, parse_policies(p.policies), file_order)
    before = p.version_before
    after = before
    version_doc = None
    if outcome.changed:
        after = (before or 0) + 1
        version_doc = SchemaVersion(
            p.dataset,
            after,
            outcome.schema.to_doc(),
            run=p.run,
            changes=[f.to_doc() for f in outcome.findings],
        ).to_doc()
    tables.setdefault(p.dataset, 0)
    report = {
        "dataset": p.dataset,
        "run": p.run,
        "schema_version_before": before,
        "schema_version_after": after,
        "tables": dict(sorted(tables.items())),
        "records": records,
        "quarantined": quarantined,
        "rejected_input": len(errors),
        "errors": sorted(errors, key=lambda e: (file_order.get(e["file"], -1), e.get("line") or 0)),
        "dropped_values": dropped,
        "drift": [f.to_doc() for f in outcome.findings],
        "files": len(p.units),
        "out": p.out,
        "registry": p.registry,
        "started_at_ms": p.started_at_ms,
    }
    record = _record(registry, p)
    record.schema_version_before, record.schema_version_after = before, after
    record.report, record.version_doc, record.status = report, version_doc, "publishing"
    registry.save_run(record)
    settle(registry, record, staging)
    return report


def _record(registry: SchemaRegistry, p: Plan) -> RunRecord:
    for r in registry.runs(p.dataset):
        if r.run == p.run:
            return r
    raise RegistryConflictError(f"{p.dataset}: run {p.run} is not in the registry")


def settle(registry: SchemaRegistry, record: RunRecord, staging: Staging) -> None:
    """Publish tables, then the schema version; idempotent (used again to roll a crashed run forward)."""
    staging.publish()
    if record.version_doc is not None:
        version = SchemaVersion.from_doc(record.version_doc)
        try:
            registry.publish(version)
        except RegistryConflictError:
            if registry.get(version.dataset, version.version).run != record.run:
                raise
    record.status, record.finished_at = "published", now_iso()
    registry.save_run(record)
    staging.remove()


def recover(registry: FileSchemaRegistry, dataset: str, out: Path) -> list[int]:
    """Roll forward runs that crashed while publishing; mark runs that crashed before as failed."""
    fixed = []
    for r in registry.runs(dataset):
        if r.status == "publishing":
            settle(registry, r, Staging(out, dataset, r.run))
            fixed.append(r.run)
        elif r.status == "planned":
            r.status = "failed"
            registry.save_run(r)
            Staging(out, dataset, r.run).remove()
    return fixed


def previous_open_alert(
    registry_dir: Path, dataset: str, run: int
) -> tuple[RunRecord | None, dict[str, Any] | None]:
    """The latest earlier run whose drift alert is still firing, with that alert event."""
    registry = FileSchemaRegistry(registry_dir)
    for r in reversed(registry.runs(dataset)):
        if r.run < run and r.alert and r.alert.get("status") == "firing" and r.alert.get("event"):
            return r, r.alert["event"]
    return None, None


def save_alert(registry_dir: Path, dataset: str, run: int, alert: dict[str, Any]) -> None:
    registry = FileSchemaRegistry(registry_dir)
    for r in registry.runs(dataset):
        if r.run == run:
            r.alert = alert
            if r.status == "published":
                r.status = "done"
            registry.save_run(r)
