"""Bad input never stops a run and is never dropped silently: each case is reported with file and line,
kept whole in ``_quarantine``, and every good line around it is flattened."""

from __future__ import annotations

import gzip
from pathlib import Path

from tests.flatten.helpers import read_tables, run_job

GOOD = b'{"id": %d, "car": {"speed": %d.5, "tags": ["a"]}}\n'


def test_truncated_non_json_invalid_utf8_empty_and_missing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        GOOD % (1, 1)
        + b'{"id": 2, "car": {"speed": 2.5, "tags": ["a"\n'  # truncated (line 2)
        + GOOD % (3, 3)
        + b"this is not json\n"  # line 4
        + b'{"id": 5, "car": {"speed": 5.5, "name": "\xff\xfe"}}\n'  # invalid UTF-8 (line 5)
        + GOOD % (6, 6)
        + b"\n"  # a blank line is not a record (line 7)
        + b"[1, 2, 3]\n"  # not an object (line 8)
        + GOOD % (9, 9)
        + b'{"id": 10, "car": {"speed": 10.5, "tags": ["a"]}}'  # last line without newline
    )
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    gz = tmp_path / "more.jsonl.gz"
    gz.write_bytes(gzip.compress(GOOD % (11, 11) + b'{"id": 12, oops}\n' + GOOD % (13, 13)))
    missing = tmp_path / "missing.jsonl"

    report = run_job([bad, empty, gz, missing], tmp_path / "out", dataset="bad", batch_bytes=1 << 20)
    errors = {(Path(e["file"]).name, e["line"], e["reason"]) for e in report["errors"]}
    assert errors == {
        ("bad.jsonl", 2, "truncated"),
        ("bad.jsonl", 4, "invalid_json"),
        ("bad.jsonl", 5, "invalid_utf8"),
        ("bad.jsonl", 8, "not_an_object"),
        ("empty.jsonl", 0, "empty_file"),
        ("more.jsonl.gz", 2, "invalid_json"),
        ("missing.jsonl", None, "missing"),
    }
    assert report["rejected_input"] == 7
    tables = read_tables(tmp_path / "out", drop=())
    ids = sorted(r["id"] for r in tables["bad"])
    assert ids == [1, 3, 6, 9, 10, 11, 13]  # every good line, nothing else
    lines = {(Path(r["_file"]).name, r["_line"]): r for r in tables["bad"]}
    assert lines[("bad.jsonl", 9)]["id"] == 9 and lines[("more.jsonl.gz", 3)]["id"] == 13
    q = {(Path(r["_file"]).name, r["_line"]): r for r in tables["_quarantine"]}
    assert q[("bad.jsonl", 4)]["raw"] == b"this is not json"
    assert q[("bad.jsonl", 5)]["raw"] == b'{"id": 5, "car": {"speed": 5.5, "name": "\xff\xfe"}}'
    assert q[("bad.jsonl", 5)]["record"] is None  # not text: the bytes are in `raw`
    assert q[("bad.jsonl", 2)]["record"] == '{"id": 2, "car": {"speed": 2.5, "tags": ["a"'
    assert q[("more.jsonl.gz", 2)]["reason"] == "invalid_json"
    tagged = [r["_id"] for r in tables["bad"] if r["car.tags"]]
    assert sorted(r["_root_id"] for r in tables["bad__car__tags"]) == sorted(tagged)


def test_many_bad_lines_in_one_chunk_are_each_found(tmp_path: Path) -> None:
    src = tmp_path / "noisy.jsonl"
    rows = []
    for i in range(1, 401):
        rows.append(b"garbage %d\n" % i if i % 7 == 0 else GOOD % (i, i))
    src.write_bytes(b"".join(rows))
    report = run_job([src], tmp_path / "out", dataset="noisy")
    assert sorted(e["line"] for e in report["errors"]) == [i for i in range(1, 401) if i % 7 == 0]
    got = sorted(r["id"] for r in read_tables(tmp_path / "out")["noisy"])
    assert got == [i for i in range(1, 401) if i % 7]


def test_json_array_files_plain_and_gzip_report_element_lines(tmp_path: Path) -> None:
    arr = tmp_path / "export.json"
    arr.write_bytes(
        b'[\n  {"id": 1, "v": {"x": [1, 2]}},\n  {"id": 2, "v": {"x": []}},\n  {"id": 3,\n   "v": null}\n]\n'
    )
    gz = tmp_path / "export2.json.gz"
    gz.write_bytes(gzip.compress(b'[{"id": 4, "v": {"x": [3]}}, {"id": 5, "v": "oops"]'))
    report = run_job([arr, gz], tmp_path / "out", dataset="arr")
    rows = read_tables(tmp_path / "out")["arr"]
    assert [(r["id"], r["_line"]) for r in rows] == [(1, 2), (2, 3), (3, 4), (4, 1)]
    assert [(Path(e["file"]).name, e["reason"]) for e in report["errors"]] == [
        ("export2.json.gz", "truncated")
    ]


def test_bad_lines_and_mixed_kinds_keep_a_chunk_in_few_large_reads() -> None:
    """Bad lines are blanked and mixed kinds grouped, so a dirty chunk is not re-read row by row."""
    import orjson

    from enrich.flatten.arrow.chunk import Chunk, Flattener, Options
    from enrich.flatten.policy import parse_policies
    from enrich.flatten.schema import struct
    from simulator.trips import trip_reports

    lines = [orjson.dumps(r) for r in trip_reports(3000)]
    as_string = (b'"distance_km":', b'"distance_km":"x","was":')
    dirty = [
        b"garbage" if i % 97 == 5 else line.replace(*as_string) if i % 31 == 3 else line
        for i, line in enumerate(lines)
    ]
    engine = Flattener(struct(), parse_policies({}), Options("trips", 1, threads=False), first_run=True)
    result = engine.process(Chunk(1, "dirty.jsonl", 0, b"\n".join(dirty) + b"\n"))
    assert len(result.pieces) == 2  # the numbers and the strings at trip.route.distance_km
    assert sorted(b["line"] for b in result.bad) == [i + 1 for i in range(3000) if i % 97 == 5]
    assert result.records == 3000 - len(result.bad) == result.rows["trips"]


def test_a_file_that_cannot_be_read_is_reported_and_the_run_goes_on(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_bytes(GOOD % (1, 1))
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(b"\x1f\x8b" + b"definitely not deflate data" * 10)
    report = run_job([good, corrupt], tmp_path / "out", dataset="c")
    assert [(Path(e["file"]).name, e["reason"]) for e in report["errors"]] == [
        ("corrupt.jsonl.gz", "unreadable")
    ]
    assert [r["id"] for r in read_tables(tmp_path / "out")["c"]] == [1]
