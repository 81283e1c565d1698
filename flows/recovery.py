"""Where a flow's bytewax recovery partitions live, and moving them when the number of processes changes.

What bytewax 0.21.1 does (read in its source: ``src/recovery.rs``, ``src/timely.rs``, ``src/inputs.rs``,
``src/operators.rs`` at tag v0.21.1):

* A recovery store is ``P`` SQLite files ``part-<i>.sqlite3`` made once by ``init_db_dir`` (``python -m
  bytewax.recovery DIR P``); ``P`` is written into every file and can never change.
* At start every worker opens each ``*.sqlite3`` file of its own ``-r`` directory. The cluster as a whole
  must hold all ``P`` partitions (else ``MissingPartitionsError``); any one process may hold none. Each
  partition is read and written by exactly one worker, its "primary", picked deterministically among the
  workers that hold it.
* State snapshots go to partition ``hash(step, key) mod P`` — independent of the worker count. On resume
  they are routed, like live items, to the worker that owns the key for the *current* worker count; source
  offsets go to the current primary of each Kafka partition. So resuming with more or fewer processes is
  supported by bytewax, provided every partition is reachable exactly once.
* Nothing checks that two copies of a partition index are the same: if two processes hold a
  ``part-2.sqlite3`` each, bytewax reads only the primary's and silently ignores the other, even when the
  other is the one with the data (this is how a careless rescale loses state).

Two layouts keep that invariant:

* **shared** — one directory that every process sees (one host, or a shared volume) holds all ``P`` files.
  Any process count can run on it; rescaling is just restarting with another ``-a`` list.
* **per-process** — each process has its own directory (its own disk, a Kubernetes volume per pod) holding
  the partitions ``p`` with ``p % processes == process_id``. A different process count needs the files
  moved first: :func:`rescale` (``enrich flow recovery rescale``).

:func:`prepare` runs before every start and refuses a directory that fits neither layout for this process,
so an unmoved per-process store fails loudly instead of resuming with partitions missing or duplicated.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

_PART = re.compile(r"^part-(\d+)\.sqlite3$")


class RecoveryLayoutError(Exception):
    """A recovery directory does not fit this process (or a rescale cannot be done); says what to do."""


@dataclass(frozen=True, slots=True)
class PartitionFile:
    """One recovery partition file and what it holds.

    bytewax shards executions, frontiers and snapshots over the partitions by key, so one partition may hold
    none of them; only ``commits`` is per partition: its primary records the epoch it has committed.
    """

    path: Path
    index: int
    count: int
    commit_epoch: int | None  # newest epoch committed to this partition; None: no run has used it
    rows: int  # execution, frontier and snapshot rows held

    @property
    def used(self) -> bool:
        return self.commit_epoch is not None or self.rows > 0

    @property
    def siblings(self) -> list[Path]:
        """The file and its SQLite WAL/shared-memory companions: they move together."""
        return [p for p in (self.path, *(Path(f"{self.path}{s}") for s in ("-wal", "-shm"))) if p.exists()]


def share(process_id: int, processes: int, partitions: int) -> frozenset[int]:
    """The partitions a process holds in the per-process layout: ``p % processes == process_id``."""
    return frozenset(p for p in range(partitions) if p % processes == process_id)


def read_partition(path: Path) -> PartitionFile:
    """What a partition file holds (opened with SQLite; do not call while a flow writes it)."""
    conn = sqlite3.connect(path)
    try:
        index, count = conn.execute("SELECT part_index, part_count FROM parts").fetchone()
        (commit,) = conn.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()
        (rows,) = conn.execute(
            "SELECT (SELECT COUNT(*) FROM exs) + (SELECT COUNT(*) FROM fronts) + (SELECT COUNT(*) FROM snaps)"
        ).fetchone()
    except (sqlite3.DatabaseError, TypeError) as exc:
        raise RecoveryLayoutError(f"{path} is not a bytewax recovery partition: {exc}") from exc
    finally:
        conn.close()
    return PartitionFile(path, int(index), int(count), None if commit is None else int(commit), int(rows))


def partition_files(directory: Path) -> list[PartitionFile]:
    """The recovery partitions in ``directory`` (none when it does not exist), by index."""
    if not directory.is_dir():
        return []
    found = [read_partition(p) for p in directory.iterdir() if _PART.match(p.name)]
    return sorted(found, key=lambda f: f.index)


@dataclass(frozen=True, slots=True)
class Plan:
    """What :func:`plan` decided for one process: run as is, or first create ``create``."""

    partitions: int
    create: frozenset[int]


def plan(present: Iterable[int], partitions: int, process_id: int, processes: int) -> Plan:
    """Decide, from the partition indexes already in a process's directory, whether it may start.

    * all ``partitions`` present: a shared directory (or a single process) — any process count runs;
    * exactly this process's :func:`share`: a per-process directory that fits this cluster;
    * none of its share present: first start — create the share (on a shared directory the peers create
      theirs at the same time, so together they make the whole set);
    * anything else: the files were laid out for another process count — refuse, naming the fix.
    """
    have = frozenset(present)
    mine = share(process_id, processes, partitions)
    everything = frozenset(range(partitions))
    if have in (everything, mine):
        return Plan(partitions, frozenset())
    if not have & mine and have <= everything:
        return Plan(partitions, mine)
    raise RecoveryLayoutError(
        f"this recovery directory holds partitions {sorted(have)} of {partitions}, but process {process_id} "
        f"of {processes} holds {sorted(mine) or 'none'} (one directory per process) or all of them (a "
        "directory shared by every process). The store was laid out for another number of processes: "
        f"stop every process, run `enrich flow recovery rescale --processes {processes} DIR...` over the "
        "directories of all processes, old and new, then start again (README: Rescaling)."
    )


def prepare(directory: Path, partitions: int, process_id: int = 0, processes: int = 1) -> Plan:
    """Make ``directory`` ready for process ``process_id`` of ``processes`` (see :func:`plan`).

    ``partitions`` is used only when the store is new; an existing store keeps the count written in its
    files. New files are made in a scratch directory and renamed in, so a peer sharing the directory never
    sees a half-made partition.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = partition_files(directory)
    counts = {f.count for f in files}
    if len(counts) > 1:
        raise RecoveryLayoutError(f"{directory} mixes recovery stores of {sorted(counts)} partitions")
    total = counts.pop() if counts else partitions
    decided = plan((f.index for f in files), total, process_id, processes)
    if decided.create:
        _create(directory, total, decided.create)
    return decided


def _create(directory: Path, partitions: int, indexes: Iterable[int]) -> None:
    from bytewax.recovery import init_db_dir

    scratch = Path(tempfile.mkdtemp(prefix=".init-", dir=directory))
    try:
        init_db_dir(scratch, partitions)  # type: ignore[no-untyped-call]
        for i in sorted(indexes):
            target = directory / f"part-{i}.sqlite3"
            if not target.exists():  # a peer sharing the directory may have made it meanwhile
                os.replace(scratch / target.name, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Move:
    index: int
    source: Path
    target: Path  # a directory; "" when the file is deleted (an unused duplicate)


def rescale_plan(directories: Sequence[Path], processes: int) -> list[Move]:
    """The moves that lay the store out for ``processes`` processes, one directory each.

    ``directories[i]`` is process ``i``'s directory; any beyond ``processes`` are only emptied (scaling
    down). Every partition must be found exactly once, except copies that no run ever used (made by a
    process started with an empty directory before the rescale): those are deleted. Two used copies of one
    partition are refused — only a person can tell which is right.
    """
    if processes < 1 or processes > len(directories):
        raise RecoveryLayoutError(
            f"{processes} processes need {processes} directories, got {len(directories)}"
        )
    found: dict[int, list[PartitionFile]] = {}
    for d in directories:
        for f in partition_files(d):
            found.setdefault(f.index, []).append(f)
    if not found:
        raise RecoveryLayoutError(f"no recovery partitions in {', '.join(map(str, directories))}")
    counts = {f.count for copies in found.values() for f in copies}
    if len(counts) > 1:
        raise RecoveryLayoutError(f"the directories mix recovery stores of {sorted(counts)} partitions")
    total = counts.pop()
    missing = sorted(set(range(total)) - set(found))
    if missing:
        raise RecoveryLayoutError(f"partitions {missing} of {total} are in none of the directories")
    moves: list[Move] = []
    for index, copies in sorted(found.items()):
        used = [f for f in copies if f.used]
        if len(used) > 1:
            where = ", ".join(str(f.path) for f in used)
            raise RecoveryLayoutError(f"partition {index} has been used in two places ({where}); keep one")
        keep = used[0] if used else copies[0]
        moves += [Move(index, f.path, Path()) for f in copies if f is not keep]
        target = directories[index % processes]
        if keep.path.parent.resolve() != target.resolve():
            moves.append(Move(index, keep.path, target))
    return moves


def rescale(directories: Sequence[Path], processes: int) -> list[Move]:
    """Apply :func:`rescale_plan`. Every process of the flow must be stopped. Returns the moves made."""
    moves = rescale_plan(directories, processes)
    for m in moves:
        if m.target == Path():
            for p in PartitionFile(m.source, m.index, 0, None, 0).siblings:
                p.unlink()
    for m in moves:
        if m.target != Path():
            _move(PartitionFile(m.source, m.index, 0, None, 0), m.target)
    return moves


def _move(part: PartitionFile, target: Path) -> None:
    """Copy the file and its companions under temporary names, rename them into place, then delete the
    originals: a crash leaves the source intact (and at worst a temporary file in the target)."""
    target.mkdir(parents=True, exist_ok=True)
    sources = part.siblings
    placed: list[tuple[Path, Path]] = []
    for src in sources:
        tmp = target / f".{src.name}.moving"
        shutil.copy2(src, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        placed.append((tmp, target / src.name))
    for tmp, final in placed:
        os.replace(tmp, final)
    for src in sources:
        src.unlink()
