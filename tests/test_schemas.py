"""Tests of the message schemas in schemas/ and their examples.

Layout checked here:

* ``schemas/<name>.v<N>.schema.json`` - one JSON Schema (draft 2020-12) per message.
* ``schemas/examples/<name>/valid-*.json`` / ``invalid-*.json`` - examples of a message schema.
* A schema whose root has no validation keywords is a definitions library (e.g. ``cdc-rows``):
  each of its titled ``$defs`` (the public definitions; untitled ones are helpers) is tested on
  its own, with examples in ``schemas/examples/<name>/<def>/``.

All schemas are loaded into one ``referencing.Registry`` so that ``$ref`` between files resolves.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMAS_DIR = Path(__file__).resolve().parent.parent / "schemas"
EXAMPLES_DIR = SCHEMAS_DIR / "examples"
METASCHEMA = "https://json-schema.org/draft/2020-12/schema"
ID_BASE = "https://fleet-enrich.dev/schemas/"
SCHEMA_FILE_RE = re.compile(r"^(?P<name>[a-z][a-z0-9-]*)\.v(?P<version>[1-9][0-9]*)\.schema\.json$")

#: Root keywords that only annotate or hold definitions; a schema with nothing else is a library.
NON_VALIDATING_KEYWORDS = frozenset({"$schema", "$id", "$comment", "title", "description", "$defs"})

#: Every message of the engine must have a schema (file name stem without the version).
EXPECTED_SCHEMAS = frozenset(
    {
        "telemetry",
        "cdc-rows",
        "cdc-debezium",
        "cdc-dms",
        "enriched",
        "vehicle-state",
        "outlier",
        "dead-letter",
        "ground-truth",
        "rules",
    }
)

#: A value no field of any schema accepts (arrays of arrays appear nowhere).
WRONG_TYPE: list[list[str]] = [["wrong-type"]]

JsonPath = tuple[str | int, ...]


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


SCHEMA_FILES: list[Path] = sorted(SCHEMAS_DIR.glob("*.schema.json"))


def _schema_name(path: Path) -> str:
    match = SCHEMA_FILE_RE.match(path.name)
    assert match is not None, f"{path.name} does not follow <name>.v<N>.schema.json"
    return match["name"]


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    """All schema documents keyed by schema name."""
    return {_schema_name(path): _load_json(path) for path in SCHEMA_FILES}


@cache
def _registry() -> Registry[Any]:
    resources = [
        (schema["$id"], Resource.from_contents(schema, default_specification=DRAFT202012))
        for schema in _schemas().values()
    ]
    registry: Registry[Any] = Registry().with_resources(resources)
    return registry.crawl()


@dataclass(frozen=True)
class Target:
    """Something examples are validated against: a whole schema or one ``$defs`` entry of a library."""

    schema_name: str
    definition: str | None

    @property
    def label(self) -> str:
        return self.schema_name if self.definition is None else f"{self.schema_name}#{self.definition}"

    @property
    def examples_dir(self) -> Path:
        base = EXAMPLES_DIR / self.schema_name
        return base if self.definition is None else base / self.definition

    @property
    def uri(self) -> str:
        schema_id: str = _schemas()[self.schema_name]["$id"]
        return schema_id if self.definition is None else f"{schema_id}#/$defs/{self.definition}"

    def validator(self) -> Draft202012Validator:
        return _validator(self.uri)

    def resolved_schema(self) -> dict[str, Any]:
        """The target schema with root-level ``$ref`` chains followed (to read its ``required``)."""
        resolved = _registry().resolver().lookup(self.uri)
        contents: dict[str, Any] = resolved.contents
        while "$ref" in contents and "required" not in contents:
            resolved = resolved.resolver.lookup(contents["$ref"])
            contents = resolved.contents
        return contents

    def examples(self, kind: str) -> list[Path]:
        return sorted(self.examples_dir.glob(f"{kind}-*.json"))


@cache
def _validator(uri: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": uri},
        registry=_registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def _is_library(schema: dict[str, Any]) -> bool:
    return set(schema) <= NON_VALIDATING_KEYWORDS


def _targets() -> list[Target]:
    targets: list[Target] = []
    for name, schema in sorted(_schemas().items()):
        if _is_library(schema):
            definitions = schema.get("$defs", {})
            targets.extend(Target(name, key) for key in sorted(definitions) if "title" in definitions[key])
        else:
            targets.append(Target(name, None))
    return targets


TARGETS = _targets()


def _examples(kind: str) -> list[Any]:
    return [
        pytest.param(target, path, id=f"{target.label}/{path.name}")
        for target in TARGETS
        for path in target.examples(kind)
    ]


def _all_errors(validator: Draft202012Validator, instance: Any) -> list[ValidationError]:
    """All errors, including those nested in the context of anyOf / oneOf failures."""
    found: list[ValidationError] = []
    pending = list(validator.iter_errors(instance))
    while pending:
        error = pending.pop()
        found.append(error)
        pending.extend(error.context or [])
    return found


def _describe(errors: list[ValidationError]) -> str:
    return "\n".join(f"  {list(error.absolute_path)}: {error.message}" for error in errors)


def _walk_subschemas(node: Any, pointer: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every object in a schema document, with its JSON pointer."""
    if isinstance(node, dict):
        yield pointer, node
        for key, value in node.items():
            yield from _walk_subschemas(value, f"{pointer}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk_subschemas(value, f"{pointer}/{index}")


# --------------------------------------------------------------------------------------- schemas


def test_all_expected_schemas_exist() -> None:
    assert set(_schemas()) == EXPECTED_SCHEMAS


def test_only_schema_files_and_examples_in_schemas_dir() -> None:
    for path in SCHEMAS_DIR.iterdir():
        assert path.name in {"examples", "README.md"} or SCHEMA_FILE_RE.match(path.name), path.name


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
def test_schema_is_valid_under_metaschema(path: Path) -> None:
    schema = _load_json(path)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == METASCHEMA


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
def test_schema_id_matches_file_name(path: Path) -> None:
    assert _load_json(path)["$id"] == ID_BASE + path.name


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
def test_schema_is_documented(path: Path) -> None:
    """Schemas are user docs: a title and description, and a description on every property."""
    schema = _load_json(path)
    assert schema.get("title") and schema.get("description")
    undocumented = [
        f"{pointer}/properties/{name}"
        for pointer, node in _walk_subschemas(schema)
        if isinstance(node.get("properties"), dict)
        # properties inside if / then / else only restate (and narrow) documented ones
        and not re.search(r"/(if|then|else)(/|$)", pointer)
        for name, subschema in node["properties"].items()
        if not (isinstance(subschema, dict) and subschema.get("description"))
    ]
    assert not undocumented, "properties without description:\n" + "\n".join(undocumented)


@pytest.mark.parametrize("path", SCHEMA_FILES, ids=lambda path: path.name)
def test_every_ref_resolves(path: Path) -> None:
    schema = _load_json(path)
    resolver = _registry().resolver(base_uri=schema["$id"])
    for pointer, node in _walk_subschemas(schema):
        ref = node.get("$ref")
        if isinstance(ref, str):
            assert resolver.lookup(ref).contents is not None, f"{pointer}: unresolvable $ref {ref}"


# -------------------------------------------------------------------------------------- examples


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.label)
def test_every_target_has_valid_and_invalid_examples(target: Target) -> None:
    assert target.examples("valid"), f"no valid-*.json in {target.examples_dir}"
    assert target.examples("invalid"), f"no invalid-*.json in {target.examples_dir}"


def test_no_stray_example_files() -> None:
    known = {target.examples_dir for target in TARGETS}
    for path in EXAMPLES_DIR.rglob("*"):
        if path.is_file():
            assert path.parent in known, f"{path} is not in the examples folder of any schema"
            assert re.match(r"^(valid|invalid)-[a-z0-9-]+\.json$", path.name), path.name


@pytest.mark.parametrize(("target", "path"), _examples("valid"))
def test_valid_example_validates(target: Target, path: Path) -> None:
    document = _load_json(path)
    if not target.validator().is_valid(document):
        errors = _all_errors(target.validator(), document)
        pytest.fail(f"{path.name} should be valid:\n{_describe(errors)}")


@pytest.mark.parametrize(("target", "path"), _examples("invalid"))
def test_invalid_example_fails(target: Target, path: Path) -> None:
    assert not target.validator().is_valid(_load_json(path)), f"{path.name} should be invalid"


# ------------------------------------------------------------------------ programmatic breakage


def _get(document: Any, path: JsonPath) -> Any:
    for step in path:
        document = document[step]
    return document


def _removed(document: Any, path: JsonPath) -> Any:
    broken = copy.deepcopy(document)
    del _get(broken, path[:-1])[path[-1]]
    return broken


def _replaced(document: Any, path: JsonPath, value: Any) -> Any:
    broken = copy.deepcopy(document)
    _get(broken, path[:-1])[path[-1]] = value
    return broken


def _assert_missing_reported(target: Target, instance: Any, path: JsonPath) -> None:
    """Validation fails with a ``required`` error at the parent of ``path`` naming the field."""
    errors = _all_errors(target.validator(), instance)
    assert errors, f"removing {list(path)} did not make the document invalid"
    parent, field = path[:-1], path[-1]
    assert any(
        error.validator == "required"
        and tuple(error.absolute_path) == parent
        and error.message == f"{field!r} is a required property"
        for error in errors
    ), f"no required-error for {list(path)}:\n{_describe(errors)}"


def _assert_reported_at(target: Target, instance: Any, path: JsonPath) -> None:
    """Validation fails with an error located at ``path`` (or inside it)."""
    errors = _all_errors(target.validator(), instance)
    assert errors, f"changing {list(path)} did not make the document invalid"
    assert any(tuple(error.absolute_path)[: len(path)] == path for error in errors), (
        f"no error at {list(path)}:\n{_describe(errors)}"
    )


def _required_field_cases() -> list[Any]:
    """For the first valid example of each target: every required top-level field."""
    cases: list[Any] = []
    for target in TARGETS:
        valid = target.examples("valid")
        if not valid:
            continue  # reported by test_every_target_has_valid_and_invalid_examples
        for field in target.resolved_schema().get("required", []):
            cases.append(pytest.param(target, valid[0], field, id=f"{target.label}/{field}"))
    return cases


REQUIRED_FIELD_CASES = _required_field_cases()


def test_required_field_cases_cover_most_targets() -> None:
    covered = {case.values[0].label for case in REQUIRED_FIELD_CASES}
    uncovered = {target.label for target in TARGETS} - covered
    # cdc-debezium's root is anyOf(envelope, wrapped) and rules' is oneOf(list, {rules: list}): they are
    # covered by their invalid examples (and cdc-debezium by NESTED_CASES) instead.
    assert uncovered == {"cdc-debezium", "rules"}


@pytest.mark.parametrize(("target", "path", "field"), REQUIRED_FIELD_CASES)
def test_removing_required_field_fails_naming_it(target: Target, path: Path, field: str) -> None:
    document = _load_json(path)
    assert target.validator().is_valid(document)
    _assert_missing_reported(target, _removed(document, (field,)), (field,))


@pytest.mark.parametrize(("target", "path", "field"), REQUIRED_FIELD_CASES)
def test_wrong_type_of_required_field_fails_at_it(target: Target, path: Path, field: str) -> None:
    document = _load_json(path)
    _assert_reported_at(target, _replaced(document, (field,), WRONG_TYPE), (field,))


@dataclass(frozen=True)
class Breakage:
    """A targeted, realistic way to break one valid example."""

    example: str  # "<examples subfolder>/<file name>"
    path: JsonPath
    value: Any = None
    remove: bool = False

    @property
    def label(self) -> str:
        action = "remove" if self.remove else f"set={json.dumps(self.value)}"
        return f"{self.example}:{'.'.join(map(str, self.path))}:{action}"


NESTED_CASES: list[Breakage] = [
    Breakage("telemetry/valid-nested.json", ("signals", "Vehicle", "Speed"), value=[0.0]),
    Breakage("telemetry/valid-flat-string-numbers.json", ("signals", "Vehicle.Speed"), value={"v": 1}),
    Breakage("telemetry/valid-flat-string-numbers.json", ("device_id",), value=""),
    Breakage("telemetry/valid-flat-string-numbers.json", ("ts",), value=0),
    Breakage("cdc-debezium/valid-postgres-update-carinfo.json", ("op",), remove=True),
    Breakage("cdc-debezium/valid-postgres-update-carinfo.json", ("after",), remove=True),
    Breakage("cdc-debezium/valid-postgres-update-carinfo.json", ("source", "table"), value="customers"),
    Breakage("cdc-debezium/valid-postgres-update-carinfo.json", ("source", "lsn"), remove=True),
    Breakage("cdc-debezium/valid-postgres-update-carinfo.json", ("after", "status"), value="SOLD"),
    Breakage("cdc-debezium/valid-mysql-create-deviceinfo.json", ("source", "pos"), remove=True),
    Breakage("cdc-debezium/valid-postgres-delete-reservation.json", ("before",), value=None),
    Breakage(
        "cdc-debezium/valid-postgres-delete-reservation.json", ("before", "reservation_id"), remove=True
    ),
    Breakage("cdc-debezium/valid-wrapped-snapshot-read.json", ("payload", "ts_ms"), value="now"),
    Breakage("cdc-debezium/valid-wrapped-snapshot-read.json", ("payload", "after", "car_id"), remove=True),
    Breakage(
        "cdc-dms/valid-update-carinfo-with-transaction.json", ("metadata", "operation"), value="add-column"
    ),
    Breakage("cdc-dms/valid-update-carinfo-with-transaction.json", ("metadata", "record-type"), remove=True),
    Breakage("cdc-dms/valid-update-carinfo-with-transaction.json", ("data", "car_id"), value=None),
    Breakage("cdc-dms/valid-delete-reservation.json", ("data", "ends_at"), value="2024-06-10"),
    Breakage("cdc-dms/valid-control-add-column-without-data.json", ("metadata", "operation"), value="insert"),
    Breakage("enriched/valid-ok.json", ("enrichment", "status"), remove=True),
    Breakage("enriched/valid-ok.json", ("ingested_at",), value="soon"),
    Breakage("enriched/valid-extra-child-role.json", ("insurance",), value=["P-2024-1024"]),
    Breakage("enriched/valid-ok.json", ("car", "car_id"), remove=True),
    Breakage("enriched/valid-ok.json", ("reservation", "customer_email"), value="nobody"),
    Breakage("vehicle-state/valid-full.json", ("location", "lon"), remove=True),
    Breakage("vehicle-state/valid-full.json", ("signals", "Vehicle.Speed", "device_id"), remove=True),
    Breakage("vehicle-state/valid-full.json", ("devices", 0), value=1024),
    Breakage("outlier/valid-resolved.json", ("ends_at",), value=None),
    Breakage("outlier/valid-firing.json", ("ends_at",), value=1718000900000),
    Breakage("outlier/valid-firing.json", ("snapshot", "signals"), remove=True),
    Breakage("outlier/valid-firing.json", ("annotations", "summary"), value=["x"]),
    Breakage("dead-letter/valid-decode-error.json", ("source", "partition"), value=-1),
    Breakage("dead-letter/valid-decode-error.json", ("source", "key_b64"), value="tcu-1024-a"),
    Breakage("dead-letter/valid-decode-error.json", ("source", "topic"), remove=True),
    Breakage("dead-letter/valid-truncated-value.json", ("value_sha256",), value="not-a-sha256"),
    Breakage("dead-letter/valid-truncated-value.json", ("value_size",), remove=True),
    Breakage("ground-truth/valid-run.json", ("incidents", 1, "expect_alert"), value=True),
    Breakage("ground-truth/valid-run.json", ("incidents", 0, "scenario"), remove=True),
    Breakage("ground-truth/valid-run.json", ("incidents", 2, "hold_s"), value="1200"),
]


def _target_of(example: str) -> Target:
    folder = (EXAMPLES_DIR / example).parent
    matches = [target for target in TARGETS if target.examples_dir == folder]
    assert len(matches) == 1, f"no schema for examples folder {folder}"
    return matches[0]


@pytest.mark.parametrize("case", NESTED_CASES, ids=lambda case: case.label)
def test_targeted_breakage_fails_naming_the_field(case: Breakage) -> None:
    target = _target_of(case.example)
    document = _load_json(EXAMPLES_DIR / case.example)
    assert target.validator().is_valid(document), f"{case.example} must be valid before breaking it"
    if case.remove:
        _assert_missing_reported(target, _removed(document, case.path), case.path)
    else:
        _assert_reported_at(target, _replaced(document, case.path, case.value), case.path)
