"""The pure parts: drift classes and policies (reconcile), the registry's invariants (file and in-memory),
and rolling a run forward that crashed while publishing."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from enrich.flatten.policy import PolicyError, load_policies, parse_policies
from enrich.flatten.registry import InMemoryRegistry, RegistryConflictError, SchemaRegistry, SchemaVersion
from enrich.flatten.schema import Node, child_path, parent_path, paths, reconcile, split_path, struct
from flows import flatten_job
from stores.schema_registry import FileSchemaRegistry
from tests.flatten.helpers import read_tables


def tree(fields: dict[str, Any]) -> Node:
    def node(v: Any) -> Node:
        if isinstance(v, dict):
            return struct({k: node(x) for k, x in v.items()})
        if isinstance(v, list):
            return Node("list", item=node(v[0]))
        return Node(v)

    return node(fields)


def registry_schema(fields: dict[str, Any]) -> Node:
    n = tree(fields)
    for p in [n, *paths(n).values()]:
        p.origin = "registry"
    return n


DEFAULT = parse_policies({})


@pytest.mark.parametrize(
    ("old", "new", "change", "action"),
    [
        ("int64", "double", "widened", None),
        ("double", "string", "incompatible", "variant"),
        ("bool", "int64", "incompatible", "variant"),
        ("double", {"v": "double"}, "shape", "variant"),
        ("string", ["string"], "shape", "variant"),
        ("null", "string", "widened", None),
    ],
)
def test_drift_classes_and_default_policies(old: Any, new: Any, change: str, action: str | None) -> None:
    schema = registry_schema({"a": {"b": old}})
    rec = reconcile(schema, tree({"a": {"b": new}}), {}, DEFAULT, first_run=False)
    assert [(e.path, e.change) for e in rec.events] == [("a.b", change)]
    assert (rec.actions["a.b"].kind if "a.b" in rec.actions else None) == action
    if action is None:  # evolve: the run schema takes the new type
        assert (
            schema.fields and schema.fields["a"].fields and schema.fields["a"].fields["b"].type_name() != old
        )


def test_narrower_values_are_cast_and_known_variants_are_not_drift_again() -> None:
    schema = registry_schema({"x": "double", "y": "double"})
    assert schema.fields is not None
    schema.fields["y"].variants = ["string"]
    rec = reconcile(schema, tree({"x": "int64", "y": "string"}), {}, DEFAULT, first_run=False)
    assert rec.events == []
    assert rec.actions["x"].kind == "cast" and rec.actions["x"].to == "double"
    assert rec.actions["y"].kind == "variant"


def test_nullability_added_and_policies() -> None:
    schema = registry_schema({"a": "int64"})
    rec = reconcile(schema, tree({"a": "int64", "n": "string"}), {"a": (5, 2)}, DEFAULT, first_run=False)
    assert sorted((e.path, e.change) for e in rec.events) == [("a", "nullability"), ("n", "added")]
    strict = parse_policies({"added": "quarantine", "nullability": "freeze", "incompatible": "discard_value"})
    schema = registry_schema({"a": "int64", "s": "string"})
    rec = reconcile(schema, tree({"a": "int64", "n": "string", "s": "int64"}), {"a": (5, 2)}, strict,
                    first_run=False)  # fmt: skip
    assert rec.actions["n"].kind == "quarantine" and rec.actions["a"].on == "null"
    assert rec.actions["a"].reason.startswith("frozen") and rec.actions["s"].kind == "drop"
    assert schema.fields is not None and "n" not in schema.fields  # not evolved


def test_first_run_takes_everything_but_mixed_types() -> None:
    schema = struct()
    rec = reconcile(schema, tree({"a": {"b": "int64"}}), {}, DEFAULT, first_run=True)
    assert rec.events == [] and schema.fields is not None and "a" in schema.fields
    rec = reconcile(schema, tree({"a": {"b": "string"}}), {}, DEFAULT, first_run=True)
    assert [(e.path, e.change, e.origin) for e in rec.events] == [("a.b", "incompatible", "run")]


def test_policy_file_and_invalid_combinations(tmp_path: Path) -> None:
    f = tmp_path / "policy.yaml"
    f.write_text("incompatible: quarantine\nadded: freeze\n")
    p = load_policies(f, {"shape": "discard_value"})
    got = (p["incompatible"], p["added"], p["shape"], p["removed"])
    assert got == ("quarantine", "freeze", "discard_value", "evolve")
    for bad in ({"removed": "variant"}, {"typo": "evolve"}, {"added": "keep"}):
        with pytest.raises(PolicyError):
            parse_policies(bad)


def test_paths_with_dots_in_names_round_trip() -> None:
    p = child_path(child_path("signals", "Vehicle.Speed"), "v")
    assert p == 'signals."Vehicle.Speed".v'
    assert split_path(p) == ["signals", "Vehicle.Speed", "v"]
    assert parent_path(p) == 'signals."Vehicle.Speed"' and parent_path("a.b[]") == "a.b"
    assert parent_path("a.b[].c") == "a.b[]"


@pytest.fixture(params=["file", "memory"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> SchemaRegistry:
    return FileSchemaRegistry(tmp_path / "reg") if request.param == "file" else InMemoryRegistry()


def test_registry_versions_are_numbered_immutable_and_conflicts_fail(registry: SchemaRegistry) -> None:
    assert registry.latest("trips") is None
    registry.publish(SchemaVersion("trips", 1, {"type": "struct", "fields": {}}))
    registry.publish(SchemaVersion("trips", 2, {"type": "struct", "fields": {"a": {"type": "int64"}}}))
    with pytest.raises(RegistryConflictError):
        registry.publish(SchemaVersion("trips", 2, {"type": "struct", "fields": {}}))
    latest = registry.latest("trips")
    assert latest is not None and latest.version == 2 and "a" in latest.schema["fields"]
    assert registry.versions("trips") == [1, 2] and registry.get("trips", 1).schema["fields"] == {}


def test_runs_get_distinct_numbers_and_unit_ranges_even_concurrently(registry: SchemaRegistry) -> None:
    got: list[tuple[int, int, int]] = []
    lock = threading.Lock()

    def begin(units: int) -> None:
        r = registry.begin_run("trips", units)
        with lock:
            got.append((r.run, r.unit_base, r.units))

    threads = [threading.Thread(target=begin, args=(3,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r for r, _b, _u in got) == list(range(1, 9))
    ranges = sorted((b, b + u) for _r, b, u in got)
    assert all(hi <= lo2 for (_lo, hi), (lo2, _hi2) in itertools.pairwise(ranges))


def test_a_half_written_version_is_never_seen(tmp_path: Path) -> None:
    reg = FileSchemaRegistry(tmp_path / "reg")
    reg.publish(SchemaVersion("trips", 1, {"type": "struct", "fields": {}}))
    (tmp_path / "reg" / "trips" / "versions" / ".tmp-crash.json").write_bytes(b'{"dataset": "tr')
    assert reg.versions("trips") == [1]
    reg.publish(SchemaVersion("trips", 2, {"type": "struct", "fields": {}}))
    assert (
        orjson.loads((tmp_path / "reg" / "trips" / "versions" / "v000002.json").read_bytes())["version"] == 2
    )


def test_a_run_that_crashed_while_publishing_is_rolled_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "a.jsonl"
    src.write_bytes(b'{"id": 1, "v": {"x": [1, 2]}}\n{"id": 2, "v": {"x": []}}\n')
    out = tmp_path / "out"
    p = flatten_job.plan([str(src)], dataset="d", out=out, registry_dir=out / "_registry")
    flatten_job.work(p, p.units, threads=False)

    def crash(*_a: Any) -> None:
        raise KeyboardInterrupt("killed while publishing")

    monkeypatch.setattr(flatten_job, "settle", crash)
    with pytest.raises(KeyboardInterrupt):
        flatten_job.finish(p)
    monkeypatch.undo()
    reg = FileSchemaRegistry(out / "_registry")
    assert [r.status for r in reg.runs("d")] == ["publishing"] and reg.versions("d") == []
    assert not (out / "d").exists()  # nothing visible yet
    nxt = flatten_job.plan([str(src)], dataset="d", out=out, registry_dir=out / "_registry")  # recovers run 1
    assert [r.status for r in reg.runs("d")] == ["published", "planned"] and reg.versions("d") == [1]
    assert [r["id"] for r in read_tables(out)["d"]] == [1, 2]
    assert nxt.run == 2 and nxt.version_before == 1


def test_removed_only_for_fields_that_always_came_before() -> None:
    from enrich.flatten.findings import PieceRecord, finish

    registry = registry_schema({"id": "int64", "driver": {"name": "string"}, "lanes": "int64"})
    assert registry.fields is not None
    registry.fields["driver"].nullable = True  # sometimes null before
    batch = tree({"id": "int64", "driver": {"name": "string"}})
    stats = {"id": (10, 0), "driver": (0, 10), "driver.name": (0, 0)}  # every driver null now
    out = finish(registry, [PieceRecord((1, 0, 0), batch.to_doc(), stats)], [], DEFAULT, {})
    assert [(f.path, f.change) for f in out.findings] == [("lanes", "removed")]
    assert (
        out.schema.fields is not None and "lanes" not in out.schema.fields and "driver" in out.schema.fields
    )
