"""Attribute-based access control with Cedar (``cedarpy``): load, validate, decide once per tag class.

Model (the seed's SQS ABAC article, in Cedar): principal = ``ApiKey`` with the key's tags as attributes;
resources = ``Vehicle`` and ``Incident`` (the tags of the vehicle's carinfo row: environment, stage,
fleet) and ``Silence`` (the tags it requests: its equality matchers on tag labels); actions
``vehicles:Get|List``, ``incidents:Get|List``, ``silences:List|Create|Delete``. Explicit forbid wins;
default deny.

Invariant that makes list authorisation exact without per-vehicle checks: policies may read a resource
only through its attributes (``resource.x``, ``resource has x``, ``resource is T``) and only attributes that
are resource tags. Then a decision depends on (principal, action, resource type, values of the attributes
the policies read) — the *tag class* — so it is made once per class, cached, and lists are served from the
class indexes. ``load_policies`` refuses a policy file that breaks the invariant, names the line of every
error, and validates the policies against the Cedar schema.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cedarpy
import orjson

from stores.apikeys import ApiKey
from stores.vehicles.model import TAG_COLUMNS

POLICY_DIR = Path(__file__).parent / "policies"
DEFAULT_POLICIES = POLICY_DIR / "default.cedar"
SEED_POLICIES = POLICY_DIR / "seed-example.cedar"
DEFAULT_SCHEMA = POLICY_DIR / "schema.cedarschema.json"

Action = Literal[
    "vehicles:Get",
    "vehicles:List",
    "incidents:Get",
    "incidents:List",
    "silences:List",
    "silences:Create",
    "silences:Delete",
]
ResourceType = Literal["Vehicle", "Incident", "Silence"]
RESOURCE_OF: dict[str, ResourceType] = {
    "vehicles": "Vehicle",
    "incidents": "Incident",
    "silences": "Silence",
}


class PolicyError(Exception):
    """A policy file that cannot be used; ``line`` is 1-based, 0 when the error has no place in the file."""

    def __init__(self, message: str, line: int = 0, source: str = "") -> None:
        self.message, self.line, self.source = message, line, source
        where = f"{source}:{line}: " if line else (f"{source}: " if source else "")
        super().__init__(f"{where}{message}")


@dataclass(frozen=True, slots=True)
class Statement:
    text: str
    line: int  # first line of the statement
    offset: int  # where ``text`` starts in the file


def statements(text: str) -> list[Statement]:
    """Split Cedar policy text into statements (each ends with ``;`` outside strings and comments)."""
    out: list[Statement] = []
    i, n, line = 0, len(text), 1
    start, start_line = 0, 0
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "/" and text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        elif c == '"':
            if not start_line:
                start_line = line
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\n":
                    line += 1
                i += 2 if text[i] == "\\" else 1
        elif c == ";":
            out.append(Statement(text[start : i + 1], start_line or line, start))
            start, start_line = i + 1, 0
        elif not c.isspace() and not start_line:
            start_line = line
        i += 1
    rest = text[start:]
    if start_line:  # text after the last ';' that is not a comment
        out.append(Statement(rest, start_line, start))
    return out


def _error_line(text: str, stmt: Statement, message: str) -> int:
    """Best line for an error inside a statement: the line of the first token the message quotes."""
    tokens = re.findall(r"`([^`]+)`", message) + re.findall(r":\s*([A-Za-z_]\w*)\s*$", message)
    for token in tokens:
        if re.fullmatch(r"policy\d+", token):
            continue
        pos = stmt.text.find(token)
        if pos >= 0:
            return text.count("\n", 0, stmt.offset + pos) + 1
    return stmt.line


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def resource_attributes(policy_json: Mapping[str, Any]) -> set[str]:
    """The resource attributes one policy (Cedar JSON form) reads; raises ValueError when it reads the
    resource in any other way (identity, hierarchy, as a value)."""
    scope = policy_json.get("resource", {}).get("op", "All")
    if scope not in ("All", "is"):
        raise ValueError(f"the resource scope `{scope}` depends on the resource's identity; use attributes")
    attrs: set[str] = set()
    allowed_ids: set[int] = set()
    for node in _walk(policy_json.get("conditions", [])):
        if isinstance(node, dict):
            for op in (".", "has"):
                inner = node.get(op)
                if isinstance(inner, dict) and inner.get("left") == {"Var": "resource"}:
                    attrs.add(str(inner["attr"]))
                    allowed_ids.add(id(inner["left"]))
            inner = node.get("is")
            if isinstance(inner, dict) and inner.get("left") == {"Var": "resource"}:
                allowed_ids.add(id(inner["left"]))
    for node in _walk(policy_json.get("conditions", [])):
        if node == {"Var": "resource"} and id(node) not in allowed_ids:
            raise ValueError("the resource is used other than through its attributes (resource.x, has, is)")
    return attrs


@dataclass(slots=True)
class Policies:
    """A validated policy set, ready to decide."""

    policy_set: Any
    schema: Any
    reads: frozenset[str]  # resource attributes the policies read
    principal_attrs: frozenset[str]  # tag names an API key may carry (declared on ApiKey, besides name)
    source: str = ""
    _cache: dict[tuple[Any, ...], bool] = field(default_factory=dict)

    def project(self, tags: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
        """The part of a resource's tags that decisions depend on."""
        return tuple(sorted((k, v) for k, v in tags.items() if k in self.reads))

    def decide(self, key: ApiKey, action: Action, resource_tags: Mapping[str, str]) -> bool:
        """Is ``key`` allowed ``action`` on a resource with these tags? Cached per key and tag class."""
        rtype = RESOURCE_OF[action.split(":", 1)[0]]
        proj = self.project(resource_tags)
        ck = (key.id, action, proj)
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        allowed = self._decide(key, action, rtype, dict(proj))
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[ck] = allowed
        return allowed

    def _decide(self, key: ApiKey, action: str, rtype: str, attrs: dict[str, str]) -> bool:
        principal = {"name": key.name, **{k: v for k, v in key.tags.items() if k in self.principal_attrs}}
        entities = [
            {"uid": {"type": "ApiKey", "id": key.id}, "attrs": principal, "parents": []},
            {"uid": {"type": rtype, "id": "resource"}, "attrs": attrs, "parents": []},
        ]
        request = {
            "principal": {"type": "ApiKey", "id": key.id},
            "action": {"type": "Action", "id": action},
            "resource": {"type": rtype, "id": "resource"},
            "context": {},
        }
        result = cedarpy.is_authorized(request, self.policy_set, entities, self.schema)
        return bool(result.allowed)

    def forget(self, key_id: str) -> None:
        for ck in [ck for ck in self._cache if ck[0] == key_id]:
            del self._cache[ck]


def _schema_info(schema_text: str, source: str) -> tuple[Any, frozenset[str], frozenset[str]]:
    try:
        doc = orjson.loads(schema_text)
        schema = cedarpy.Schema.from_json_str(schema_text)
        ns = doc[""]
        types = ns["entityTypes"]
        key_attrs = set(types["ApiKey"]["shape"]["attributes"]) - {"name"}
        common = ns.get("commonTypes", {})
        resource_attrs: set[str] = set()
        for name in ("Vehicle", "Incident", "Silence"):
            shape = types[name]["shape"]
            if shape.get("type") in common:
                shape = common[shape["type"]]
            resource_attrs |= set(shape.get("attributes", {}))
    except (ValueError, KeyError, TypeError) as exc:
        raise PolicyError(f"bad Cedar schema: {exc}", 0, source) from exc
    extra = resource_attrs - set(TAG_COLUMNS)
    if extra:
        raise PolicyError(
            f"the schema declares resource attributes {sorted(extra)} that are not resource tags "
            f"(indexed tags: {', '.join(TAG_COLUMNS)})",
            0,
            source,
        )
    return schema, frozenset(key_attrs), frozenset(resource_attrs)


def load_policies(text: str, schema_text: str | None = None, source: str = "") -> Policies:
    """Parse and validate a policy file; raise ``PolicyError`` naming the line of the first error."""
    schema, key_attrs, _resource_attrs = _schema_info(
        schema_text if schema_text is not None else DEFAULT_SCHEMA.read_text(), source
    )
    stmts = statements(text)
    if not stmts:
        raise PolicyError("no policies (everything would be denied)", 0, source)
    try:
        policy_set = cedarpy.PolicySet.from_str(text)
    except ValueError as whole:
        for stmt in stmts:
            try:
                cedarpy.PolicySet.from_str(stmt.text)
            except ValueError as exc:
                raise PolicyError(str(exc), _error_line(text, stmt, str(exc)), source) from exc
        raise PolicyError(str(whole), 0, source) from whole
    result = cedarpy.validate_policies(text, schema)
    if not result.validation_passed:
        first = result.errors[0]
        m = re.fullmatch(r"policy(\d+)", first.policy_id or "")
        n = int(m.group(1)) if m else len(stmts)
        line = _error_line(text, stmts[n], str(first.error)) if n < len(stmts) else 0
        raise PolicyError(f"does not validate against the schema: {first.error}", line, source)
    reads: set[str] = set()
    parsed = orjson.loads(cedarpy.policies_to_json_str(text))
    for pid, pj in parsed.get("staticPolicies", {}).items():
        n = int(pid.removeprefix("policy")) if pid.startswith("policy") else -1
        try:
            reads |= resource_attributes(pj)
        except ValueError as exc:
            raise PolicyError(str(exc), stmts[n].line if 0 <= n < len(stmts) else 0, source) from exc
    if parsed.get("templates"):
        raise PolicyError("policy templates are not supported", 0, source)
    return Policies(policy_set, schema, frozenset(reads), key_attrs, source)


def load_policy_files(policies: Path | None = None, schema: Path | None = None) -> Policies:
    path = policies or DEFAULT_POLICIES
    schema_path = schema or DEFAULT_SCHEMA
    try:
        text, schema_text = path.read_text(), schema_path.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read: {exc}", 0, str(path)) from exc
    return load_policies(text, schema_text, str(path))
