"""Golden cases: an input file and the tables it must flatten to (``expected.json``), under
``tests/golden/flatten/<case>/``. ``GOLDEN_UPDATE=1`` rewrites the expected files (review the diff!)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.flatten.helpers import read_tables, run_job

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "flatten"
CASES = sorted(p.name for p in GOLDEN.iterdir() if (p / "input.jsonl").exists())


@pytest.mark.parametrize("case", CASES)
def test_golden_case(case: str, tmp_path: Path) -> None:
    folder = GOLDEN / case
    report = run_job([folder / "input.jsonl"], tmp_path / "out", dataset=case)
    got = {
        "report": {k: report[k] for k in ("tables", "quarantined", "drift", "errors")},
        "tables": read_tables(tmp_path / "out"),
    }
    got["report"]["errors"] = [{k: v for k, v in e.items() if k != "file"} for e in got["report"]["errors"]]
    expected_file = folder / "expected.json"
    if os.environ.get("GOLDEN_UPDATE") == "1":
        expected_file.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    expected = json.loads(expected_file.read_text())
    assert json.loads(json.dumps(got, sort_keys=True)) == expected


def test_separator_and_scalar_lists_options(tmp_path: Path) -> None:
    src = GOLDEN / "scalar_arrays" / "input.jsonl"
    run_job([src], tmp_path / "a", dataset="s", sep="__", scalar_lists="column")
    tables = read_tables(tmp_path / "a")
    assert list(tables) == ["s"]  # arrays of scalars stay list columns: no child tables
    assert [r["tags"] for r in tables["s"]] == [["toll", "bridge"], ["night"]]
    nested = GOLDEN / "five_levels" / "input.jsonl"
    run_job([nested], tmp_path / "b", dataset="n", sep="__")
    assert "a__b__c__d__e" in read_tables(tmp_path / "b")["n"][0]
