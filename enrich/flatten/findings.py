"""The end of a run: from what every chunk saw to the drift findings and the next schema version (pure).

Workers see their chunks in parallel, each with its own view of the run schema. The finaliser replays
every piece's type tree in source order (unit, chunk, piece) against the registry's latest version, so the
findings and the new version do not depend on how units were spread over workers. Example values and
first occurrences come from the workers' events: the earliest (in source order) with the same path and
new type.

Reported drift, relative to the latest registry version:

* ``added`` — a path the version does not have (type: the widest seen in the run);
* ``removed`` — a path the version has as never-null, whose parent was present in the run but which
  never held a value (a path that was sometimes null before and is only null now is not reported);
* ``widened`` / ``incompatible`` / ``shape`` / ``nullability`` — a registry path whose values changed;
* mixed types on one path within the run (also on a path new in this run) are ``incompatible`` or ``shape``.

The first run of a dataset records version 1 and reports no drift, except mixed types within it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from enrich.flatten.schema import DriftEvent, Node, Policies, parent_path, paths, reconcile, split_path

ORDER = {"added": 0, "removed": 1, "widened": 2, "nullability": 3, "incompatible": 4, "shape": 5}


@dataclass(slots=True)
class Finding:
    path: str
    change: str
    old_type: str | None
    new_type: str | None
    example: Any
    first_seen: dict[str, Any] | None
    policy: str

    def to_doc(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "change": self.change,
            "old_type": self.old_type,
            "new_type": self.new_type,
            "example": self.example,
            "first_seen": self.first_seen,
            "policy": self.policy,
        }


@dataclass(slots=True)
class PieceRecord:
    """One piece as the finaliser replays it: its source position, types and statistics."""

    key: tuple[int, int, int]  # unit, chunk, piece
    tree: dict[str, Any]
    stats: dict[str, tuple[int, int]]


@dataclass(slots=True)
class Outcome:
    schema: Node
    findings: list[Finding]
    changed: bool  # the schema differs from the registry's latest version
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)


def _sort_key(first_seen: dict[str, Any] | None, order: dict[str, int]) -> tuple[int, int]:
    if not first_seen:
        return (1 << 62, 0)
    return (order.get(first_seen.get("file", ""), 1 << 61), int(first_seen.get("line", 0)))


def finish(
    registry: Node | None,
    pieces: Iterable[PieceRecord],
    worker_events: Iterable[DriftEvent],
    policies: Policies,
    file_order: dict[str, int],
) -> Outcome:
    """Replay the run's pieces against ``registry`` (None: the dataset's first run)."""
    first_run = registry is None
    schema = copy.deepcopy(registry) if registry is not None else Node("struct", fields={})
    totals: dict[str, tuple[int, int]] = {}
    events: list[DriftEvent] = []
    records = 0
    for piece in sorted(pieces, key=lambda p: p.key):
        tree = Node.from_doc(piece.tree, origin="run")
        rec = reconcile(schema, tree, piece.stats, policies, first_run=first_run)
        events.extend(rec.events)
        for path, (nonnull, nulls) in piece.stats.items():
            a, b = totals.get(path, (0, 0))
            totals[path] = (a + nonnull, b + nulls)
        if piece.stats:
            top = [p for p in piece.stats if len(split_path(p)) == 1 and not p.endswith("[]")]
            records += max((sum(piece.stats[p]) for p in top), default=0)
    examples: dict[tuple[str, str | None], DriftEvent] = {}
    for e in sorted(worker_events, key=lambda e: _sort_key(e.first_seen, file_order)):
        examples.setdefault((e.path, e.new_type), e)
        examples.setdefault((e.path, None), e)

    findings: dict[tuple[str, str], Finding] = {}
    final = paths(schema)
    for e in events:
        if e.change not in ("incompatible", "shape") and (e.origin == "run" or first_run):
            continue  # a type first seen in this run settling down: reported as `added` below
        src = examples.get((e.path, e.new_type)) or examples.get((e.path, None))
        f = Finding(
            e.path,
            e.change,
            e.old_type,
            e.new_type,
            src.example if src else None,
            src.first_seen if src else None,
            e.policy,
        )
        findings.setdefault((e.path, e.change), f)
    if not first_run:
        assert registry is not None
        known = paths(registry)
        for path, node in final.items():
            if path in known or (path, "added") in findings:
                continue
            if _under_variant_or_new(path, known, final):
                continue
            src = examples.get((path, None))
            findings[(path, "added")] = Finding(
                path,
                "added",
                None,
                node.type_name(),
                src.example if src else None,
                src.first_seen if src else None,
                policies["added"],
            )
        for e in events:  # added under a non-evolve policy: not in the schema, still a finding
            new = e.change == "added" and (e.path, "added") not in findings and e.origin == "run"
            if new and not _under_variant_or_new(e.path, known, final):
                src = examples.get((e.path, None))
                findings[(e.path, "added")] = Finding(
                    e.path,
                    "added",
                    None,
                    e.new_type,
                    src.example if src else None,
                    src.first_seen if src else None,
                    e.policy,
                )
        _removed(schema, known, totals, records, policies, findings)
        gone = [p for (p, c) in findings if c == "removed"]
        for key in [k for k in findings if k[1] == "nullability"]:
            if any(key[0] == g or key[0].startswith((g + ".", g + "[]")) for g in gone):
                del findings[key]  # a field that no longer comes is not "now nullable"
    ordered = sorted(
        findings.values(), key=lambda f: (_sort_key(f.first_seen, file_order), f.path, ORDER[f.change])
    )
    changed = first_run or registry is None or schema.to_doc() != registry.to_doc()
    return Outcome(schema, ordered, changed, totals)


def _under_variant_or_new(path: str, known: dict[str, Node], final: dict[str, Node]) -> bool:
    """Whether an ancestor of ``path`` is itself new (only the top of a new subtree is reported)."""
    parent = parent_path(path)
    while parent:
        if parent not in known:
            return True
        parent = parent_path(parent)
    return False


def _removed(
    schema: Node,
    known: dict[str, Node],
    totals: dict[str, tuple[int, int]],
    records: int,
    policies: Policies,
    findings: dict[tuple[str, str], Finding],
) -> None:
    mode = policies["removed"]
    for path, node in known.items():
        if node.type == "null" or node.nullable or path.endswith("[]") or totals.get(path, (0, 0))[0] > 0:
            # a path that was sometimes null before and only null now is not evidence of removal, nor are
            # the items of arrays that were all empty in this run
            continue
        parent = parent_path(path)
        present = records if not parent else totals.get(parent, (0, 0))[0]
        if present == 0 or parent_path(path) in {p for (p, c) in findings if c == "removed"}:
            continue
        findings[(path, "removed")] = Finding(path, "removed", node.type_name(), None, None, None, mode)
        if mode == "evolve":
            _drop(schema, path)


def _drop(schema: Node, path: str) -> None:
    parent = parent_path(path)
    node = schema if not parent else paths(schema).get(parent)
    if node is None:
        return
    if path.endswith("[]"):
        node.item = None
        return
    name = split_path(path)[-1]
    if node.fields is not None:
        node.fields.pop(name, None)
