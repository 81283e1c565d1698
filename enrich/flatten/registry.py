"""The schema registry: every schema version of a dataset, and the ledger of its runs (protocol + twin).

Invariants every implementation keeps:

* Versions are numbered 1, 2, … per dataset, immutable once published, and never half-written; publishing
  version N fails with :class:`RegistryConflictError` if N exists (two runs raced: the later one loses).
* Runs are numbered 1, 2, … per dataset. A run owns the unit numbers ``[unit_base, unit_base + units)``
  (one per source file) and nobody else ever gets them: row ids built from them never repeat.
* A run record moves planned → publishing (outcome computed and saved) → published (tables and schema
  version in place) → done (alert settled), or to failed; a crash while publishing is rolled forward.
  The previous run's open drift alert lives in its record until a later run resolves it.

:class:`stores.schema_registry.FileSchemaRegistry` keeps them as JSON files; :class:`InMemoryRegistry` is
its twin for tests.
"""

from __future__ import annotations

import copy
import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from enrich.errors import EnrichError

RunStatus = Literal["planned", "publishing", "published", "done", "failed"]


class RegistryError(EnrichError):
    reason = "registry_error"


class RegistryConflictError(RegistryError):
    reason = "registry_conflict"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class SchemaVersion:
    dataset: str
    version: int
    schema: dict[str, Any]  # Node.to_doc() of the record
    created_at: str = field(default_factory=now_iso)
    run: int | None = None
    changes: list[dict[str, Any]] = field(default_factory=list)

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> SchemaVersion:
        return cls(
            doc["dataset"],
            int(doc["version"]),
            doc["schema"],
            doc.get("created_at", ""),
            doc.get("run"),
            list(doc.get("changes", [])),
        )


@dataclass(slots=True)
class RunRecord:
    dataset: str
    run: int
    unit_base: int
    units: int
    status: RunStatus = "planned"
    started_at: str = field(default_factory=now_iso)
    finished_at: str | None = None
    schema_version_before: int | None = None
    schema_version_after: int | None = None
    alert: dict[str, Any] | None = None  # the drift alert this run fired: incident, fingerprint, status
    report: dict[str, Any] | None = None
    version_doc: dict[str, Any] | None = None  # the schema version to publish (kept for roll-forward)

    def to_doc(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> RunRecord:
        fields: dict[str, Any] = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        return cls(**fields)


class SchemaRegistry(Protocol):
    def latest(self, dataset: str) -> SchemaVersion | None: ...

    def get(self, dataset: str, version: int) -> SchemaVersion: ...

    def versions(self, dataset: str) -> list[int]: ...

    def publish(self, version: SchemaVersion) -> None:
        """Store a new version (its number must be the next one); RegistryConflictError if it exists."""
        ...

    def begin_run(self, dataset: str, units: int) -> RunRecord:
        """Allocate the next run and its unit numbers."""
        ...

    def save_run(self, record: RunRecord) -> None: ...

    def runs(self, dataset: str) -> list[RunRecord]: ...


class InMemoryRegistry:
    """The in-memory twin of the file registry (same invariants)."""

    def __init__(self) -> None:
        self._versions: dict[str, dict[int, SchemaVersion]] = {}
        self._runs: dict[str, dict[int, RunRecord]] = {}

    def latest(self, dataset: str) -> SchemaVersion | None:
        got = self._versions.get(dataset, {})
        return copy.deepcopy(got[max(got)]) if got else None

    def get(self, dataset: str, version: int) -> SchemaVersion:
        try:
            return copy.deepcopy(self._versions[dataset][version])
        except KeyError as exc:
            raise RegistryError(f"{dataset}: no version {version}") from exc

    def versions(self, dataset: str) -> list[int]:
        return sorted(self._versions.get(dataset, {}))

    def publish(self, version: SchemaVersion) -> None:
        have = self._versions.setdefault(version.dataset, {})
        if version.version in have:
            raise RegistryConflictError(f"{version.dataset}: version {version.version} exists")
        if version.version != (max(have) + 1 if have else 1):
            raise RegistryError(f"{version.dataset}: version {version.version} is not the next one")
        have[version.version] = copy.deepcopy(version)

    def begin_run(self, dataset: str, units: int) -> RunRecord:
        runs = self._runs.setdefault(dataset, {})
        last = runs[max(runs)] if runs else None
        record = RunRecord(
            dataset, (last.run + 1) if last else 1, (last.unit_base + last.units) if last else 1, units
        )
        runs[record.run] = copy.deepcopy(record)
        return record

    def save_run(self, record: RunRecord) -> None:
        self._runs.setdefault(record.dataset, {})[record.run] = copy.deepcopy(record)

    def runs(self, dataset: str) -> list[RunRecord]:
        return [copy.deepcopy(r) for _, r in sorted(self._runs.get(dataset, {}).items())]
