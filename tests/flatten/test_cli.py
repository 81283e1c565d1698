"""`enrich flatten` as users run it: exit codes, the report file, and the bytewax dataflow over file
partitions in two worker processes (`-i/-a`) giving the same tables as one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from simulator.trips import trip_reports
from tests.flatten.helpers import read_tables


def flatten(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cli.main", "flatten", *map(str, args), "--no-alert"]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    out = []
    for i in range(4):
        p = tmp_path / "in" / f"part-{i}.jsonl"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in trip_reports(150, seed=i, first=i * 150)))
        out.append(p)
    return out


def test_exit_codes_and_report(files: list[Path], tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "report.json"
    first = flatten(files[0], "--dataset", "trips", "--out", out, "--report", report)
    assert first.returncode == 0, first.stdout + first.stderr
    doc = json.loads(report.read_text())
    assert (
        doc["dataset"] == "trips"
        and doc["schema_version_before"] is None
        and doc["schema_version_after"] == 1
    )
    assert doc["tables"]["trips"] == 150 and doc["quarantined"] == 0 and doc["drift"] == []
    assert "trips__trip__route__segments" in first.stdout  # the table printed at the end

    drifted = tmp_path / "drift.jsonl"
    drifted.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in trip_reports(20, drift=True, first=999)))
    second = flatten(drifted, "--dataset", "trips", "--out", out, "--report", report)
    assert second.returncode == 3, second.stdout + second.stderr
    assert {f["change"] for f in json.loads(report.read_text())["drift"]} == {
        "added",
        "incompatible",
        "removed",
    }

    broken = tmp_path / "broken.jsonl"
    broken.write_bytes(orjson.dumps(next(trip_reports(1, drift=True))) + b"\n{not json\n")
    third = flatten(
        broken, tmp_path / "missing.jsonl", "--dataset", "trips", "--out", out, "--report", report
    )
    assert third.returncode == 4, third.stdout + third.stderr  # no drift, rejected input
    assert {e["reason"] for e in json.loads(report.read_text())["errors"]} == {"truncated", "missing"}

    usage = flatten(files[0], "--out", out)
    assert usage.returncode == 2
    bad_policy = flatten(files[0], "--dataset", "trips", "--out", out, "--on", "removed=variant")
    assert bad_policy.returncode == 1 and "removed" in bad_policy.stdout


def test_two_worker_processes_give_the_same_tables_as_one(files: list[Path], tmp_path: Path) -> None:
    one = flatten(
        *files, "--dataset", "trips", "--out", tmp_path / "one", "--workers", "1", "--batch-mb", "1"
    )
    two = flatten(
        *files, "--dataset", "trips", "--out", tmp_path / "two", "--workers", "2", "--batch-mb", "1"
    )
    assert one.returncode == 0 and two.returncode == 0, one.stdout + two.stdout
    logs = list((tmp_path / "two").rglob("worker-*.log"))
    assert not logs  # staging (with the worker logs) is removed once the run is published
    a, b = read_tables(tmp_path / "one"), read_tables(tmp_path / "two")
    assert a.keys() == b.keys() and len(a["trips"]) == 600
    for name in a:
        assert a[name] == b[name], name


def test_plan_once_run_workers_as_hosts_would_then_finish(files: list[Path], tmp_path: Path) -> None:
    """The several-hosts procedure of the README, with two local processes standing in for two hosts."""
    from stack.procs import free_port

    out = tmp_path / "lake"
    planned = flatten(*files, "--dataset", "trips", "--out", out, "--plan-only")
    assert planned.returncode == 0, planned.stdout
    plan = next(out.glob("_staging/trips/r*/plan.json"))
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli.main",
                "flow",
                "flatten",
                "--plan",
                str(plan),
                "-i",
                str(i),
                "-a",
                addresses,
            ]
        )
        for i in range(2)
    ]
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    finished = flatten("--finish", plan)
    assert finished.returncode == 0, finished.stdout
    assert len(read_tables(out)["trips"]) == 600
