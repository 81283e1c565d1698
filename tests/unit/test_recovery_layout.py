"""Recovery partition layouts (flows/recovery.py) on real bytewax partition files; no services needed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flows.recovery import (
    RecoveryLayoutError,
    partition_files,
    plan,
    prepare,
    rescale,
    rescale_plan,
    share,
)


def indexes(d: Path) -> list[int]:
    return [f.index for f in partition_files(d)]


def mark_used(d: Path, index: int, epoch: int = 7) -> None:
    """Record a commit in a partition, as the partition's primary worker does in a bytewax run."""
    conn = sqlite3.connect(d / f"part-{index}.sqlite3")
    with conn:
        conn.execute("INSERT INTO commits (part_index, commit_epoch) VALUES (?, ?)", (index, epoch))
    conn.close()


def test_share_splits_partitions_by_remainder() -> None:
    assert share(0, 2, 4) == {0, 2}
    assert share(1, 2, 4) == {1, 3}
    assert share(3, 4, 4) == {3}
    assert share(5, 6, 4) == frozenset()  # more processes than partitions: some hold none
    for n in range(1, 7):
        parts = [share(i, n, 5) for i in range(n)]
        assert set().union(*parts) == set(range(5))
        assert sum(map(len, parts)) == 5


@pytest.mark.parametrize(
    ("present", "pid", "n", "create"),
    [
        ([], 0, 1, {0, 1, 2, 3}),  # a single process on a new store makes all of it
        ([], 1, 2, {1, 3}),  # per-process first start
        ([0, 2], 1, 2, {1, 3}),  # a shared directory whose peer was first
        ([0, 1, 2, 3], 3, 4, set()),  # shared directory: any process count
        ([0, 1, 2, 3], 0, 1, set()),
        ([1, 3], 1, 2, set()),  # per-process directory that fits
        ([], 5, 6, set()),  # holds nothing, and should hold nothing
    ],
)
def test_plan_accepts_the_two_layouts(present: list[int], pid: int, n: int, create: set[int]) -> None:
    assert plan(present, 4, pid, n).create == create


@pytest.mark.parametrize(
    ("present", "pid", "n"),
    [
        ([0, 2], 0, 4),  # per-process store of 2 processes started as 4: partition 2 would be doubled
        ([0], 0, 2),  # per-process store of 4 processes started as 2: partition 2 would be missing
        ([0, 1, 3], 1, 2),  # a shared directory that lost a file
    ],
)
def test_plan_refuses_a_store_laid_out_for_another_process_count(
    present: list[int], pid: int, n: int
) -> None:
    with pytest.raises(RecoveryLayoutError, match="enrich flow recovery rescale --processes"):
        plan(present, 4, pid, n)


def test_processes_sharing_a_directory_make_the_whole_store_once(tmp_path: Path) -> None:
    d = tmp_path / "rec"
    assert prepare(d, 4, 1, 2).create == {1, 3}
    assert prepare(d, 4, 0, 2).create == {0, 2}
    assert indexes(d) == [0, 1, 2, 3]
    assert all(f.count == 4 and not f.used for f in partition_files(d))
    assert sorted(p.name for p in d.iterdir()) == [f"part-{i}.sqlite3" for i in range(4)]  # no scratch left
    for n in (1, 3, 4, 8):  # then any process count resumes from it
        assert prepare(d, 4, 0, n).create == frozenset()


def test_an_existing_store_keeps_its_partition_count(tmp_path: Path) -> None:
    d = tmp_path / "rec"
    prepare(d, 4)
    assert prepare(d, 8).partitions == 4  # ENRICH_RECOVERY_PARTITIONS only matters for a new store


def cluster(tmp_path: Path, n: int) -> list[Path]:
    return [tmp_path / f"rec-{i}" for i in range(n)]


@pytest.mark.parametrize(("old", "new"), [(2, 4), (4, 2), (1, 3), (3, 1), (2, 5), (4, 4)])
def test_rescale_lays_a_per_process_store_out_for_the_new_count(tmp_path: Path, old: int, new: int) -> None:
    dirs = cluster(tmp_path, max(old, new))
    for i in range(old):
        prepare(dirs[i], 4, i, old)
        for p in share(i, old, 4):
            mark_used(dirs[i], p, epoch=10 + p)
    rescale(dirs, new)
    for i in range(new):
        assert set(indexes(dirs[i])) == share(i, new, 4)
        assert prepare(dirs[i], 4, i, new).create == frozenset()  # each process now starts
    for d in dirs[new:]:
        assert indexes(d) == []
    epochs = {f.index: f.commit_epoch for d in dirs for f in partition_files(d)}
    assert epochs == {p: 10 + p for p in range(4)}  # the data moved with the files


def test_a_process_started_before_the_rescale_leaves_an_unused_copy_that_rescale_deletes(
    tmp_path: Path,
) -> None:
    dirs = cluster(tmp_path, 4)
    for i in range(2):
        prepare(dirs[i], 4, i, 2)
        for p in share(i, 2, 4):
            mark_used(dirs[i], p)
    # scaled to 4 without moving: the old processes refuse to start, the new ones create fresh copies
    with pytest.raises(RecoveryLayoutError):
        prepare(dirs[0], 4, 0, 4)
    assert prepare(dirs[2], 4, 2, 4).create == {2}
    assert prepare(dirs[3], 4, 3, 4).create == {3}
    moves = rescale(dirs, 4)
    assert sorted((m.index, m.target == Path()) for m in moves) == [
        (2, False),
        (2, True),
        (3, False),
        (3, True),
    ]
    for i in range(4):
        (only,) = partition_files(dirs[i])
        assert only.index == i and only.used  # the used copy won


def test_rescale_refuses_two_used_copies_and_missing_partitions(tmp_path: Path) -> None:
    a, b = cluster(tmp_path, 2)
    prepare(a, 4)  # all four
    prepare(b, 4)
    mark_used(a, 1)
    mark_used(b, 1)
    with pytest.raises(RecoveryLayoutError, match="partition 1 has been used in two places"):
        rescale_plan([a, b], 2)
    for f in partition_files(b):
        f.path.unlink()
    (a / "part-3.sqlite3").unlink()
    with pytest.raises(RecoveryLayoutError, match=r"partitions \[3\] of 4 are in none"):
        rescale_plan([a, b], 2)
    with pytest.raises(RecoveryLayoutError, match="3 processes need 3 directories"):
        rescale_plan([a, b], 3)


def test_a_partition_left_by_a_killed_writer_keeps_its_last_commit_when_moved(tmp_path: Path) -> None:
    a, b = cluster(tmp_path, 2)
    prepare(a, 2)
    # A writer that dies without closing leaves its last commits in the -wal file, not yet in the database.
    code = (
        "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute('PRAGMA wal_autocheckpoint=0');"
        "c.execute('INSERT INTO commits (part_index, commit_epoch) VALUES (1, 42)'); c.commit();"
        "os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(a / "part-1.sqlite3")], check=True)
    assert (a / "part-1.sqlite3-wal").stat().st_size > 0
    rescale([a, b], 2)
    assert indexes(a) == [0]
    (moved,) = partition_files(b)
    assert (moved.index, moved.commit_epoch) == (1, 42)
    assert not any(p.name.startswith("part-1") for p in a.iterdir())
    assert not any(p.name.endswith(".moving") for p in b.iterdir())


def test_a_file_that_is_not_a_partition_is_named(tmp_path: Path) -> None:
    d = tmp_path / "rec"
    d.mkdir()
    (d / "part-0.sqlite3").write_bytes(b"not sqlite")
    with pytest.raises(RecoveryLayoutError, match=r"part-0\.sqlite3 is not a bytewax recovery partition"):
        prepare(d, 4)
