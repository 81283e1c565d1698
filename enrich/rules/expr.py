"""A small, safe expression language for rule conditions, compiled once to Python closures (no eval).

Syntax is a subset of Python expressions, parsed with ``ast`` and checked against a whitelist:
``and or not``, comparisons (``< <= > >= == != in``), ``+ - * / %``, numbers, strings, ``true/false/null``,
lists of literals, calls to ``abs min max``, and names:

* VSS signal paths (``Vehicle.Body.Lights.Beam.Low.IsOn``), read from the vehicle's latest state;
* derived signals (``any_door_open``, ``seconds_since_last_event``, ``speed_drop_kmh`` …);
* snapshot attributes (``car.fleet``, ``car.model``, ``reservation.active``, ``reservation.customer_email``).

Missing signals: if any name a rule reads is unknown (never reported, no car row), the condition is false
— a rule never fires on data it does not have.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from enrich.errors import EnrichError

Env = Any  # what accessors read: a dict of names (default) or the engine's evaluation context
Fn = Callable[[Env], Any]
Resolver = Callable[[str], Callable[[Env], Any]]


class ExprError(EnrichError):
    reason = "rule_error"

    def __init__(self, message: str, *, col: int | None = None, field_path: str | None = None) -> None:
        super().__init__(message, field_path=field_path)
        self.col = col


_MISSING = object()
_CMP: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_ARITH: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
}
_FUNCS: dict[str, Callable[..., Any]] = {"abs": abs, "min": min, "max": max}
_CONSTS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


class _Missing(Exception):  # noqa: N818 - control flow, not an error
    """Raised inside evaluation when a name has no value; the condition is then false."""


@dataclass(frozen=True, slots=True)
class Compiled:
    source: str
    names: frozenset[str]
    fn: Fn

    def __call__(self, env: Env) -> bool:
        try:
            return bool(self.fn(env))
        except _Missing:
            return False
        except (TypeError, ZeroDivisionError):
            return False  # e.g. a string signal compared with a number: not a match


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


def _var(name: str, resolve: Resolver) -> Fn:
    read = resolve(name)

    def get(env: Env) -> Any:
        value = read(env)
        if value is None:
            raise _Missing
        return value

    return get


def compile_expr(
    source: str, known: Callable[[str], bool] | None = None, resolve: Resolver = _dict_resolver
) -> Compiled:
    """Parse, check and compile ``source``. ``known(name)`` may reject unknown names (for ``rules check``);
    ``resolve(name)`` gives the accessor a name reads with (default: a lookup in a dict of names)."""
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error: {exc.msg}", col=exc.offset) from exc
    names: set[str] = set()

    def build(node: ast.AST) -> Fn:
        if isinstance(node, ast.BoolOp):
            parts = [build(v) for v in node.values]
            if isinstance(node.op, ast.And):
                if len(parts) == 2:
                    a, b = parts
                    return lambda env: a(env) and b(env)
                if len(parts) == 3:
                    a, b, c = parts
                    return lambda env: a(env) and b(env) and c(env)

                def all_of(env: Env) -> bool:
                    return all(p(env) for p in parts)

                return all_of

            def any_of(env: Env) -> bool:
                for p in parts:
                    try:
                        if p(env):
                            return True
                    except _Missing:
                        continue
                return False

            return any_of
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = build(node.operand)
            return lambda env: not inner(env)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = build(node.operand)
            return lambda env: -inner(env)
        if isinstance(node, ast.Compare):
            left = build(node.left)
            pairs = [(_CMP[type(op)], build(c)) for op, c in zip(node.ops, node.comparators, strict=True)
                     if type(op) in _CMP]  # fmt: skip
            if len(pairs) != len(node.ops):
                raise ExprError("unsupported comparison", col=node.col_offset + 1)
            if len(pairs) == 1:
                cmp, right = pairs[0]
                comparator = node.comparators[0]
                if isinstance(comparator, ast.Constant) and isinstance(comparator.value, int | float):
                    k = comparator.value  # the common "signal < number": no closure for the constant
                    return lambda env: cmp(left(env), k)
                return lambda env: cmp(left(env), right(env))

            def chain(env: Env) -> bool:
                a = left(env)
                for cmp_, right_ in pairs:
                    b = right_(env)
                    if not cmp_(a, b):
                        return False
                    a = b
                return True

            return chain
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            fn, left, right = _ARITH[type(node.op)], build(node.left), build(node.right)
            return lambda env: fn(left(env), right(env))
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str | bool | type(None)):
            value = node.value
            return lambda env: value
        if isinstance(node, ast.List | ast.Tuple):
            items = [build(e) for e in node.elts]
            return lambda env: [i(env) for i in items]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
            if node.keywords:
                raise ExprError("keyword arguments are not supported", col=node.col_offset + 1)
            fn_, args = _FUNCS[node.func.id], [build(a) for a in node.args]
            return lambda env: fn_(*(a(env) for a in args))
        if isinstance(node, ast.Name) and node.id in _CONSTS:
            const = _CONSTS[node.id]
            return lambda env: const
        name = _dotted(node)
        if name is not None:
            if "__" in name:
                raise ExprError(
                    f"names may not contain '__': {name!r}", col=getattr(node, "col_offset", 0) + 1
                )
            if known is not None and not known(name):
                raise ExprError(f"unknown name {name!r}", col=getattr(node, "col_offset", 0) + 1)
            names.add(name)
            return _var(name, resolve)
        raise ExprError(f"not allowed here: {type(node).__name__}", col=getattr(node, "col_offset", 0) + 1)

    fn = build(tree.body)
    return Compiled(source, frozenset(names), fn)
