"""The schema registry on a filesystem: one JSON file per schema version and per run, written atomically.

Layout under the registry root::

    <dataset>/versions/v000001.json   immutable; created with link(2) from a fsynced temporary file, so a
                                      crash leaves either no file or the whole file, and an existing
                                      version is never overwritten (the link fails: RegistryConflictError)
    <dataset>/runs/r000001.json       the run ledger: created the same way (a run number is taken once),
                                      then updated by rename(2) of a fsynced temporary file

Works on a shared filesystem for several hosts as far as it honours link/rename atomicity (POSIX local
filesystems and NFSv3+ do).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import orjson

from enrich.flatten.registry import RegistryConflictError, RegistryError, RunRecord, SchemaVersion

_VERSION = re.compile(r"^v(\d{6,})\.json$")
_RUN = re.compile(r"^r(\d{6,})\.json$")
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp(folder: Path, doc: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        f.flush()
        os.fsync(f.fileno())
    return Path(name)


def create_exclusive(path: Path, doc: dict[str, Any]) -> bool:
    """Write ``doc`` to ``path`` atomically unless ``path`` exists (then False, nothing written)."""
    tmp = _temp(path.parent, doc)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return True


def replace_atomic(path: Path, doc: dict[str, Any]) -> None:
    tmp = _temp(path.parent, doc)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class FileSchemaRegistry:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, dataset: str, kind: str) -> Path:
        if not _DATASET.match(dataset):
            raise RegistryError(f"bad dataset name {dataset!r} (letters, digits, _ . -)")
        return self.root / dataset / kind

    def versions(self, dataset: str) -> list[int]:
        folder = self._dir(dataset, "versions")
        if not folder.is_dir():
            return []
        return sorted(int(m[1]) for p in folder.iterdir() if (m := _VERSION.match(p.name)))

    def get(self, dataset: str, version: int) -> SchemaVersion:
        path = self._dir(dataset, "versions") / f"v{version:06d}.json"
        try:
            return SchemaVersion.from_doc(orjson.loads(path.read_bytes()))
        except FileNotFoundError as exc:
            raise RegistryError(f"{dataset}: no version {version} ({path})") from exc
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise RegistryError(f"{path}: unreadable schema version: {exc}") from exc

    def latest(self, dataset: str) -> SchemaVersion | None:
        have = self.versions(dataset)
        return self.get(dataset, have[-1]) if have else None

    def publish(self, version: SchemaVersion) -> None:
        have = self.versions(version.dataset)
        expected = (have[-1] + 1) if have else 1
        if version.version < expected:
            raise RegistryConflictError(f"{version.dataset}: version {version.version} exists")
        if version.version != expected:
            raise RegistryError(f"{version.dataset}: version {version.version} is not the next ({expected})")
        path = self._dir(version.dataset, "versions") / f"v{version.version:06d}.json"
        if not create_exclusive(path, version.to_doc()):
            raise RegistryConflictError(f"{version.dataset}: version {version.version} exists")

    def runs(self, dataset: str) -> list[RunRecord]:
        folder = self._dir(dataset, "runs")
        if not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.iterdir()):
            if _RUN.match(p.name):
                out.append(RunRecord.from_doc(orjson.loads(p.read_bytes())))
        return sorted(out, key=lambda r: r.run)

    def begin_run(self, dataset: str, units: int) -> RunRecord:
        folder = self._dir(dataset, "runs")
        for _ in range(100):
            runs = self.runs(dataset)
            last = runs[-1] if runs else None
            record = RunRecord(
                dataset, (last.run + 1) if last else 1, (last.unit_base + last.units) if last else 1, units
            )
            if create_exclusive(folder / f"r{record.run:06d}.json", record.to_doc()):
                return record
        raise RegistryConflictError(f"{dataset}: could not allocate a run (too much contention)")

    def save_run(self, record: RunRecord) -> None:
        replace_atomic(self._dir(record.dataset, "runs") / f"r{record.run:06d}.json", record.to_doc())
