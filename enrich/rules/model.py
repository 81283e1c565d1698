"""Rules as YAML, validated against schemas/rules.v1.schema.json, compiled once."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from enrich.rules.expr import Compiled, ExprError, compile_expr
from enrich.rules.names import DERIVED, TIME_DEPENDENT, attribute_of, inputs_of, resolve
from enrich.tables import DEFAULT_MODEL
from enrich.telemetry import BOOL_SIGNALS, FLOAT_SIGNALS, STRING_SIGNALS

#: The attribute roles rules may read when no join model is given: the default model's.
DEFAULT_ROLES: tuple[str, ...] = DEFAULT_MODEL.attribute_roles
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


class RuleError(ExprError):
    """A rule file that does not validate or compile; ``line`` points into the YAML when known."""

    def __init__(self, message: str, *, line: int | None = None, field_path: str | None = None) -> None:
        super().__init__(message, field_path=field_path)
        self.line = line

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.field_path + ': ' if self.field_path else ''}{self.args[0]}"


def parse_duration(text: str | int | float | None) -> int:
    """``"60s"`` → 60000 ms (numbers are seconds)."""
    if text is None:
        return 0
    if isinstance(text, int | float):
        return int(text * 1000)
    m = _DURATION.match(text.strip())
    if not m:
        raise RuleError(f"bad duration {text!r} (use e.g. 500ms, 60s, 10m, 1h)")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


def known_name(name: str, roles: Collection[str] = DEFAULT_ROLES) -> bool:
    """Whether a rule may read ``name``: a derived signal, a VSS signal, or ``<role>.<column>`` of one of
    the join model's attribute roles (``car``, the child roles)."""
    if name in DERIVED:
        return True
    attr = attribute_of(name)
    if attr is not None:
        return attr[0] in roles and bool(attr[1])
    return name.startswith("Vehicle.") or name in BOOL_SIGNALS | FLOAT_SIGNALS | STRING_SIGNALS


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    summary: str
    condition: Compiled
    for_ms: int = 0
    keep_firing_for_ms: int = 0
    severity: str = "warning"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    description: str = ""
    uses_time: bool = False  # the condition changes as event time passes: evaluated on timers too
    inputs: frozenset[str] = frozenset()  # signals (and "@attr" for snapshot attributes) it depends on

    def __post_init__(self) -> None:
        object.__setattr__(self, "uses_time", bool(self.condition.names & TIME_DEPENDENT))
        object.__setattr__(self, "inputs", inputs_of(self.condition.names))


def _schema() -> dict[str, Any]:
    """schemas/rules.v1.schema.json (which links to this package's copy, so installs carry it)."""
    return orjson.loads(resources.files("enrich.rules").joinpath("rules.v1.schema.json").read_bytes())  # type: ignore[no-any-return]


class _LineLoader(yaml.SafeLoader):
    """Remembers the line of every mapping, so errors can point into the file."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    mapping["__line__"] = node.start_mark.line + 1
    return mapping  # type: ignore[return-value]


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _strip(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _strip(v) for k, v in doc.items() if k != "__line__"}
    if isinstance(doc, list):
        return [_strip(v) for v in doc]
    return doc


def parse_rules(text: str, roles: Collection[str] = DEFAULT_ROLES) -> list[Rule]:
    """Parse, validate and compile a rule file. Raises ``RuleError`` with the line of the offending rule.
    ``roles``: the attribute roles of the join model (``JoinModel.attribute_roles``)."""
    try:
        raw = yaml.load(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RuleError(f"not YAML: {exc}", line=mark.line + 1 if mark else None) from exc
    doc = _strip(raw)
    items = doc.get("rules") if isinstance(doc, dict) else doc
    raw_items = raw.get("rules") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not isinstance(raw_items, list):
        raise RuleError("expected a list of rules, or a mapping with a 'rules' list", line=1)
    schema = _schema()
    rule_validator = Draft202012Validator({**schema["$defs"]["rule"], "$defs": schema["$defs"]})
    for i, item in enumerate(items):
        err = best_match(rule_validator.iter_errors(item))
        if err is not None:
            line = raw_items[i].get("__line__") if isinstance(raw_items[i], dict) else None
            path = ".".join(str(p) for p in [i, *err.absolute_path])
            raise RuleError(err.message, line=line, field_path=path)
    if not Draft202012Validator(schema).is_valid(doc):
        raise RuleError("not a valid rule pack (see schemas/rules.v1.schema.json)", line=1)
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        line = raw_items[i].get("__line__") if isinstance(raw_items[i], dict) else None
        if item["id"] in seen:
            raise RuleError(f"duplicate rule id {item['id']!r}", line=line, field_path=f"{i}.id")
        seen.add(item["id"])
        try:
            condition = compile_expr(
                item["when"], lambda name: known_name(name, roles), resolve, TIME_DEPENDENT
            )
        except ExprError as exc:
            col = f" (column {exc.col})" if exc.col else ""
            raise RuleError(f"{exc.args[0]}{col}", line=line, field_path=f"{i}.when") from exc
        rules.append(
            Rule(
                id=item["id"],
                summary=item.get("summary", ""),
                description=item.get("description", ""),
                condition=condition,
                for_ms=parse_duration(item.get("for")),
                keep_firing_for_ms=parse_duration(item.get("keep_firing_for")),
                severity=item.get("severity", "warning"),
                labels={str(k): str(v) for k, v in (item.get("labels") or {}).items()},
                annotations={str(k): str(v) for k, v in (item.get("annotations") or {}).items()},
            )
        )
    return rules


def load_rules(path: Path | None, roles: Collection[str] = DEFAULT_ROLES) -> list[Rule]:
    """The rule pack at ``path``, or the default pack shipped with the engine, for a join model with the
    attribute ``roles``."""
    if path is None:
        return parse_rules(resources.files("enrich.rules").joinpath("default.yaml").read_text(), roles)
    return parse_rules(path.read_text(), roles)
