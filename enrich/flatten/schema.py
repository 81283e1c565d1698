"""The schema of a nested dataset as a tree of typed paths, and how a batch's types meet it (pure).

* A :class:`Node` is the type of one path: a scalar named as the Arrow type (``int64``, ``double``,
  ``string``, ``bool``, ``null`` …), a ``struct`` with named fields, or a ``list`` with one item node.
  ``null`` means "only nulls seen so far": it is compatible with every type and never drift by itself.
* Paths are dotted, array elements written ``[]``: ``trip.route.segments[].road.type``. A field name that
  contains ``.``, ``[``, ``]`` or ``"`` (or is empty) is written quoted: ``signals."Vehicle.Speed"``.
* :func:`reconcile` compares the type tree of one batch with the run schema, decides per path what happens
  to the values (an :class:`Action`) under the drift policy, evolves the run schema where the policy says
  ``evolve``, and records a :class:`DriftEvent` for every deviation. Only the first run of a dataset (no
  registry version) takes every new path silently.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any, Literal

DriftClass = Literal["added", "removed", "widened", "incompatible", "nullability", "shape"]
PolicyMode = Literal["evolve", "variant", "quarantine", "discard_value", "freeze"]
ActionKind = Literal["cast", "variant", "quarantine", "drop"]
Origin = Literal["registry", "run"]

SCALAR_WIDENING: dict[tuple[str, str], str] = {("int64", "double"): "double"}
_NEEDS_QUOTE = re.compile(r'[.\[\]"]')


@dataclass(slots=True)
class Node:
    """The type of one path. ``nullable``: a null (or missing) value was seen where its parent was present.
    ``origin``: whether the type came from the registry or was first seen in this run. ``variants``: types
    that went to variant columns (``<column>__v_<tag>``) instead of this path's column."""

    type: str
    fields: dict[str, Node] | None = None
    item: Node | None = None
    nullable: bool = False
    origin: Origin = "run"
    variants: list[str] = field(default_factory=list)

    @property
    def kind(self) -> Literal["struct", "list", "scalar"]:
        if self.type == "struct":
            return "struct"
        if self.type == "list":
            return "list"
        return "scalar"

    def type_name(self) -> str:
        """The Arrow-style name: ``int64``, ``struct``, ``list<struct>``, ``list<list<double>>``."""
        if self.type == "list":
            return f"list<{self.item.type_name() if self.item else 'null'}>"
        return self.type

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": self.type, "nullable": self.nullable}
        if self.variants:
            doc["variants"] = list(self.variants)
        if self.fields is not None:
            doc["fields"] = {k: v.to_doc() for k, v in self.fields.items()}
        if self.item is not None:
            doc["item"] = self.item.to_doc()
        return doc

    @classmethod
    def from_doc(cls, doc: dict[str, Any], origin: Origin = "registry") -> Node:
        fields = doc.get("fields")
        item = doc.get("item")
        return cls(
            type=doc["type"],
            fields={k: cls.from_doc(v, origin) for k, v in fields.items()} if fields is not None else None,
            item=cls.from_doc(item, origin) if item is not None else None,
            nullable=bool(doc.get("nullable", False)),
            origin=origin,
            variants=list(doc.get("variants", [])),
        )


def struct(fields: dict[str, Node] | None = None, **kw: Any) -> Node:
    return Node("struct", fields=dict(fields or {}), **kw)


def child_path(prefix: str, name: str) -> str:
    """The path of field ``name`` under ``prefix`` (quoted when the name needs it)."""
    seg = f'"{name}"' if (not name or _NEEDS_QUOTE.search(name)) else name
    return f"{prefix}.{seg}" if prefix else seg


def item_path(prefix: str) -> str:
    return f"{prefix}[]"


def paths(node: Node, prefix: str = "") -> dict[str, Node]:
    """Every path below ``node`` (a struct root) with its node, in field order."""
    out: dict[str, Node] = {}

    def walk(n: Node, p: str) -> None:
        if n.fields is not None:
            for name, sub in n.fields.items():
                q = child_path(p, name)
                out[q] = sub
                walk(sub, q)
        elif n.item is not None:
            q = item_path(p)
            out[q] = n.item
            walk(n.item, q)

    walk(node, prefix)
    return out


def variant_tag(node: Node) -> str:
    """The suffix of a variant column for values of this type: ``string``, ``struct``, ``list_double``."""
    return re.sub(r"[^a-z0-9]+", "_", node.type_name().lower()).strip("_")


@dataclass(frozen=True, slots=True)
class Action:
    """What happens to the values of one path of a batch.

    cast: convert to ``to`` (a narrower type read where the schema has a wider one, e.g. int64 → double);
    variant: keep the value whole in the variant column ``<column>__v_<tag>`` (no flattening below it);
    quarantine: rows with a non-null value here (``on="null"``: a null value) go to ``_quarantine``;
    drop: the value is discarded, the row is kept.
    """

    kind: ActionKind
    to: str = ""
    tag: str = ""
    reason: str = ""
    on: Literal["value", "null"] = "value"


@dataclass(slots=True)
class DriftEvent:
    """A deviation seen in a batch: ``old_type`` is the run schema's type (from the registry or from earlier
    in this run, see ``origin``); ``policy`` what was done. Example and first occurrence are filled by the
    Arrow layer, which knows the values and lines."""

    path: str
    change: DriftClass
    old_type: str | None
    new_type: str | None
    origin: Origin
    policy: PolicyMode
    example: Any = None
    first_seen: dict[str, Any] | None = None


@dataclass(slots=True)
class Reconciled:
    actions: dict[str, Action]
    events: list[DriftEvent]


class Policies:
    """Policy per drift class (see :mod:`enrich.flatten.policy`)."""

    def __init__(self, modes: dict[DriftClass, PolicyMode]) -> None:
        self.modes = modes

    def __getitem__(self, change: DriftClass) -> PolicyMode:
        return self.modes[change]


def _row_action(mode: PolicyMode, change: DriftClass, path: str, tag: str) -> Action | None:
    """The action for values that carry a change under ``mode`` (None: keep them as they are)."""
    if mode == "variant":
        return Action("variant", tag=tag, reason=change)
    if mode == "quarantine":
        return Action("quarantine", reason=f"{change} at {path}")
    if mode == "freeze":
        return Action("quarantine", reason=f"frozen: {change} at {path}")
    if mode == "discard_value":
        return Action("drop", reason=change)
    return None


def reconcile(
    schema: Node, batch: Node, stats: dict[str, tuple[int, int]], policies: Policies, *, first_run: bool
) -> Reconciled:
    """Meet one batch's type tree with the run ``schema`` (mutated in place where changes evolve).

    ``stats`` gives per path (non-null count, nulls where the parent was present) for this batch.
    """
    actions: dict[str, Action] = {}
    events: list[DriftEvent] = []

    def event(path: str, change: DriftClass, old: Node | None, new: Node | None, mode: PolicyMode) -> None:
        origin: Origin = old.origin if old is not None else "run"
        events.append(
            DriftEvent(
                path, change, old.type_name() if old else None, new.type_name() if new else None, origin, mode
            )
        )

    def adopt(new: Node) -> Node:
        out = copy.deepcopy(new)
        for n in [out, *paths(out).values()]:
            n.origin = "run"
        return out

    def meet(parent: Node, key: str | None, s: Node | None, b: Node, path: str) -> None:
        """``key`` None means ``b`` is the item of list ``parent``."""

        def replace(new: Node) -> None:
            if key is None:
                parent.item = new
            else:
                assert parent.fields is not None
                parent.fields[key] = new

        nulls = stats.get(path, (0, 0))[1]
        if s is None:
            if first_run:
                replace(adopt(b))
                return
            mode = policies["added"]
            event(path, "added", None, b, mode)
            act = _row_action(mode, "added", path, variant_tag(b))
            if act is None or act.kind == "variant":
                replace(adopt(b))
            else:
                actions[path] = act
            return
        if b.type == "null":
            _nullability(s, nulls, path)
            return
        if s.type == "null":
            mode = "evolve" if first_run or s.origin == "run" else policies["widened"]
            if mode != "evolve" or s.origin == "registry":
                event(path, "widened", s, b, mode)
            act = _row_action(mode, "widened", path, variant_tag(b))
            if act is None:
                new = adopt(b)
                new.nullable = True
                new.origin = s.origin
                replace(new)
            else:
                actions[path] = act
            return
        if s.kind == "struct" and b.kind == "struct":
            _nullability(s, nulls, path)
            assert s.fields is not None and b.fields is not None
            for name, sub in b.fields.items():
                meet(s, name, s.fields.get(name), sub, child_path(path, name))
            return
        if s.kind == "list" and b.kind == "list":
            _nullability(s, nulls, path)
            assert b.item is not None
            before, seen = len(actions), len(events)
            meet(s, None, s.item, b.item, item_path(path))
            item_act = actions.get(item_path(path))
            if item_act is not None and item_act.kind in ("variant", "drop") and len(actions) > before:
                # items that changed type: the whole list goes to one variant column (or is dropped)
                del actions[item_path(path)]
                if item_act.kind == "drop":
                    actions[path] = item_act
                    return
                assert s.item is not None
                if item_act.tag in s.item.variants:
                    s.item.variants.remove(item_act.tag)
                actions[path] = Action("variant", tag=variant_tag(b), reason=item_act.reason)
                if variant_tag(b) in s.variants:
                    del events[seen:]  # this list variant is known: not new drift
                else:
                    s.variants.append(variant_tag(b))
            return
        if s.kind == "scalar" and b.kind == "scalar":
            if s.type == b.type:
                _nullability(s, nulls, path)
                return
            wider = SCALAR_WIDENING.get((b.type, s.type))
            if wider is not None:  # narrower values where the schema is wider: read them as the wider type
                actions[path] = Action("cast", to=wider)
                _nullability(s, nulls, path)
                return
            wider = SCALAR_WIDENING.get((s.type, b.type))
            change: DriftClass = "widened" if wider is not None else "incompatible"
        else:
            change = "shape"
        if variant_tag(b) in s.variants:  # a variant seen before: not new drift
            actions[path] = Action("variant", tag=variant_tag(b), reason=change)
            return
        mode = policies[change]
        event(path, change, s, b, mode)
        act = _row_action(mode, change, path, variant_tag(b))
        if act is None:  # evolve: the path takes the new type from here on
            new = adopt(b)
            new.nullable = s.nullable or nulls > 0
            new.origin = s.origin
            new.variants = s.variants
            replace(new)
        else:
            actions[path] = act
            if act.kind == "variant" and act.tag not in s.variants:
                s.variants.append(act.tag)

    def _nullability(s: Node, nulls: int, path: str) -> None:
        if nulls == 0 or s.nullable:
            return
        if s.origin == "run" or first_run:
            s.nullable = True
            return
        mode = policies["nullability"]
        event(path, "nullability", s, s, mode)
        if mode == "evolve":
            s.nullable = True
        elif mode in ("quarantine", "freeze"):
            reason = f"{'frozen: ' if mode == 'freeze' else ''}nullability at {path}"
            actions[path] = Action("quarantine", reason=reason, on="null")
        else:
            s.nullable = True

    assert schema.fields is not None and batch.fields is not None
    for name, sub in batch.fields.items():
        meet(schema, name, schema.fields.get(name), sub, child_path("", name))
    return Reconciled(actions, events)


def split_path(path: str) -> list[str]:
    """The segments of a dotted path (``[]`` stays attached: ``segments[]``); quoted names are unquoted."""
    out: list[str] = []
    i = 0
    while i < len(path):
        if path[i] == '"':
            j = path.index('"', i + 1)
            seg = path[i + 1 : j]
            i = j + 1
            while path.startswith("[]", i):
                seg += "[]"
                i += 2
        else:
            j = path.find(".", i)
            j = len(path) if j < 0 else j
            seg = path[i:j]
            i = j
        out.append(seg)
        if i < len(path) and path[i] == ".":
            i += 1
    return out


def parent_path(path: str) -> str:
    """``a.b[]`` → ``a.b``; ``a.b`` → ``a``; a top-level field → ``""`` (the record)."""
    if path.endswith("[]"):
        return path[:-2]
    segs = split_path(path)
    out = ""
    for seg in segs[:-1]:
        name, items = seg, 0
        while name.endswith("[]"):
            name, items = name[:-2], items + 1
        out = child_path(out, name)
        for _ in range(items):
            out = item_path(out)
    return out
