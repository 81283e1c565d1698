"""A small, safe expression language for rule conditions, compiled to Python bytecode (no eval of input).

Syntax is a subset of Python expressions, parsed with ``ast`` and checked against a whitelist:
``and or not``, comparisons (``< <= > >= == != in``), ``+ - * / %``, numbers, strings, ``true/false/null``,
lists of literals, calls to ``abs min max``, and names:

* VSS signal paths (``Vehicle.Body.Lights.Beam.Low.IsOn``), read from the vehicle's latest state;
* derived signals (``any_door_open``, ``seconds_since_last_event``, ``speed_drop_kmh`` …);
* snapshot attributes (``car.fleet``, ``car.model``, ``reservation.active``, ``reservation.customer_email``).

Missing signals: a condition is false when a name it reads has no value (never reported, no car row) — a
rule never fires on data it does not have. Each branch of an ``or`` is judged on its own names, so
``a > 1 or b > 1`` is true when ``b`` alone is known and above 1. A comparison of incompatible types (a
string with a number) or a division by zero makes the condition false.

Compilation turns the checked tree into Python source in which every name is a local variable, then
compiles that source with ``compile()``: the only text ever compiled is generated here from whitelisted
nodes (names become variables, constants their ``repr``), so input never reaches the compiler. A condition
evaluates as straight-line bytecode, not as a tree of closures. ``enrich.rules.pack`` compiles a whole pack
into one function the same way.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from enrich.errors import EnrichError

Env = Any  # what accessors read: a dict of names (default) or the engine's evaluation context
Resolver = Callable[[str], Callable[[Env], Any]]


class ExprError(EnrichError):
    reason = "rule_error"

    def __init__(self, message: str, *, col: int | None = None, field_path: str | None = None) -> None:
        super().__init__(message, field_path=field_path)
        self.col = col


_CMP: dict[type[ast.cmpop], str] = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_ARITH: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.Mod: "%",
}
_FUNCS = frozenset({"abs", "min", "max"})
_CONSTS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
CATCH = "(TypeError, ZeroDivisionError, OverflowError, ValueError)"


@dataclass(frozen=True, slots=True)
class Compiled:
    """A checked condition. ``tree`` is the validated AST (for pack compilation), ``fn`` evaluates it
    alone on an environment, ``comparisons`` lists (name, constant) pairs compared directly and
    ``opaque`` the names used any other way (both for working out when time alone changes a condition)."""

    source: str
    names: frozenset[str]
    tree: ast.expr
    fn: Callable[[Env], bool]
    comparisons: tuple[tuple[str, float], ...] = ()
    opaque: frozenset[str] = field(default_factory=frozenset)

    def __call__(self, env: Env) -> bool:
        return self.fn(env)


def _dotted(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


def _dict_resolver(name: str) -> Callable[[Env], Any]:
    return lambda env: env.get(name)


def _number(node: ast.expr) -> float | None:
    if isinstance(node, ast.Constant) and (type(node.value) is int or type(node.value) is float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _number(node.operand)
        return None if inner is None else -inner
    return None


def check(source: str, known: Callable[[str], bool] | None = None) -> tuple[ast.expr, frozenset[str]]:
    """Parse ``source`` and check every node against the whitelist; returns the tree and its names."""
    try:
        tree = ast.parse(source.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ExprError(f"syntax error: {exc.msg}", col=exc.offset) from exc
    names: set[str] = set()

    def walk(node: ast.AST) -> None:
        col = getattr(node, "col_offset", 0) + 1
        if isinstance(node, ast.BoolOp):
            for v in node.values:
                walk(v)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
            walk(node.operand)
        elif isinstance(node, ast.Compare):
            if any(type(op) not in _CMP for op in node.ops):
                raise ExprError("unsupported comparison", col=col)
            walk(node.left)
            for c in node.comparators:
                walk(c)
        elif isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            walk(node.left)
            walk(node.right)
        elif isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float | str | bool | type(None)):
                raise ExprError(f"not allowed here: {type(node.value).__name__}", col=col)
        elif isinstance(node, ast.List | ast.Tuple):
            for e in node.elts:
                walk(e)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            if node.keywords:
                raise ExprError("keyword arguments are not supported", col=col)
            for a in node.args:
                walk(a)
        elif isinstance(node, ast.Name) and node.id in _CONSTS:
            pass
        else:
            name = _dotted(node)
            if name is None:
                raise ExprError(f"not allowed here: {type(node).__name__}", col=col)
            if "__" in name:
                raise ExprError(f"names may not contain '__': {name!r}", col=col)
            if known is not None and not known(name):
                raise ExprError(f"unknown name {name!r}", col=col)
            names.add(name)

    walk(tree)
    return tree, frozenset(names)


def to_python(tree: ast.expr, var: Callable[[str], str]) -> str:
    """Python source of a checked condition, as a boolean expression over the variables ``var(name)``
    (each ``None`` when the name has no value), with the missing-value semantics of the module."""

    def gen(node: ast.AST) -> tuple[str, set[str]]:
        if isinstance(node, ast.BoolOp):
            parts = [gen(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return "(" + " and ".join(p for p, _ in parts) + ")", set().union(*(n for _, n in parts))
            branches = []
            for src, needs in parts:
                guard = _guard(needs)
                branches.append(f"({guard} and bool({src}))" if guard else f"bool({src})")
            return "(" + " or ".join(branches) + ")", set()
        if isinstance(node, ast.UnaryOp):
            src, needs = gen(node.operand)
            return (f"(not {src})" if isinstance(node.op, ast.Not) else f"(-{src})"), needs
        if isinstance(node, ast.Compare):
            left, needs = gen(node.left)
            out = [left]
            for op, comp in zip(node.ops, node.comparators, strict=True):
                src, more = gen(comp)
                out += [_CMP[type(op)], src]
                needs |= more
            return "(" + " ".join(out) + ")", needs
        if isinstance(node, ast.BinOp):
            (lsrc, ln), (rsrc, rn) = gen(node.left), gen(node.right)
            return f"({lsrc} {_ARITH[type(node.op)]} {rsrc})", ln | rn
        if isinstance(node, ast.Constant):
            return repr(node.value), set()
        if isinstance(node, ast.List | ast.Tuple):
            items = [gen(e) for e in node.elts]
            return "(" + "".join(f"{s}, " for s, _ in items) + ")", set().union(*(n for _, n in items))
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            args = [gen(a) for a in node.args]
            return f"{node.func.id}(" + ", ".join(s for s, _ in args) + ")", set().union(
                *(n for _, n in args)
            )
        if isinstance(node, ast.Name) and node.id in _CONSTS:
            return repr(_CONSTS[node.id]), set()
        name = _dotted(node)
        assert name is not None
        v = var(name)
        return v, {v}

    src, needs = gen(tree)
    guard = _guard(needs)
    return f"({guard} and bool({src}))" if guard else f"bool({src})"


def _guard(needs: set[str]) -> str:
    return " and ".join(f"{n} is not None" for n in sorted(needs))


def analyse_time(
    tree: ast.expr, timed: frozenset[str]
) -> tuple[tuple[tuple[str, float], ...], frozenset[str]]:
    """For names in ``timed``: the constants they are compared with directly (``name > 600``), and the
    names used in any other way (their change points cannot be worked out)."""
    pairs: list[tuple[str, float]] = []
    opaque: set[str] = set()

    def walk(node: ast.AST, direct_ok: bool) -> None:
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            left, right = node.left, node.comparators[0]
            for a, b in ((left, right), (right, left)):
                name, k = _dotted(a), _number(b)
                if name in timed and k is not None and type(node.ops[0]) not in (ast.In, ast.NotIn):
                    pairs.append((name, k))
                    return
        if not isinstance(node, ast.Name | ast.Attribute):
            for child in ast.iter_child_nodes(node):
                walk(child, direct_ok)
            return
        name = _dotted(node)
        if name in timed:
            opaque.add(name)

    walk(tree, True)
    return tuple(pairs), frozenset(opaque)


def compile_expr(
    source: str,
    known: Callable[[str], bool] | None = None,
    resolve: Resolver = _dict_resolver,
    timed: frozenset[str] = frozenset(),
) -> Compiled:
    """Parse, check and compile ``source``. ``known(name)`` may reject unknown names (for ``rules check``);
    ``resolve(name)`` gives the accessor a name reads with (default: a lookup in a dict of names);
    ``timed`` names the derived signals that change as time passes (see ``analyse_time``)."""
    tree, names = check(source, known)
    ordered = sorted(names)
    var = {name: f"n{i}" for i, name in enumerate(ordered)}
    scope: dict[str, Any] = {f"r{i}": resolve(name) for i, name in enumerate(ordered)}
    body = "".join(f"    n{i} = r{i}(env)\n" for i in range(len(ordered)))
    code = (
        f"def cond(env):\n{body}    try:\n        return {to_python(tree, var.__getitem__)}\n"
        f"    except {CATCH}:\n        return False\n"
    )
    exec(compile(code, f"<rule: {source[:40]}>", "exec"), scope)  # generated from checked nodes only
    comparisons, opaque = analyse_time(tree, timed)
    return Compiled(source, names, tree, scope["cond"], comparisons, opaque)
