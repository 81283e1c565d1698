"""A rule pack compiled into one function, and when time alone can change what it says.

``Pack.truths(facts, now)`` evaluates every condition of the pack in one call of generated straight-line
code: each name the pack reads is loaded once into a local (signals with one ``dict.get``, snapshot
attributes from the car and child rows, each derived signal computed once), then each condition is a
guarded boolean expression over those locals. It returns the indices of the rules whose condition holds.

``Pack.change_points(facts, now)`` lists the event times after ``now`` at which time alone can flip a
condition: for a time-dependent derived signal compared with a constant (``seconds_since_last_event >
600``), its anchor plus the constant. A use of such a signal that is not a plain comparison with a
number cannot be analysed; the pack then asks to be evaluated again ``OPAQUE_STEP_MS`` later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from enrich.rules.expr import CATCH, to_python
from enrich.rules.model import Rule
from enrich.rules.names import DERIVED, TIME_ANCHORS, VehicleFacts, inputs_of, source_of

OPAQUE_STEP_MS = 1000


class Pack:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self.index = {r.id: i for i, r in enumerate(self.rules)}
        self.inputs = frozenset().union(*(r.inputs for r in self.rules)) if self.rules else frozenset()
        self.truths: Callable[[VehicleFacts, int], list[int]] = self._compile()
        pairs = {(name, k) for r in self.rules for name, k in r.condition.comparisons}
        self._points = sorted(pairs)
        self._opaque = any(r.condition.opaque for r in self.rules)
        self.uses_time = bool(self._points) or self._opaque
        timed = {name for name, _ in self._points} | {n for r in self.rules for n in r.condition.opaque}
        # signals whose change can move the anchor of a time-dependent name (the device set aside)
        self.time_inputs = inputs_of(frozenset(timed))

    def _compile(self) -> Callable[[VehicleFacts, int], list[int]]:
        names = sorted({n for r in self.rules for n in r.condition.names})
        derived = [n for n in names if n in DERIVED]
        dvar = {n: f"d{i}" for i, n in enumerate(derived)}
        var = {n: f"n{i}" for i, n in enumerate(names)}
        scope: dict[str, Any] = {f"D{i}": DERIVED[n][1] for i, n in enumerate(derived)}
        scope["E"] = {}
        lines = ["def truths(f, now):", "    v = f.values", "    car = f.car", "    ch = f.children"]
        lines += [f"    {dvar[n]} = D{i}(f, now)" for i, n in enumerate(derived)]
        lines += [f"    {var[n]} = {source_of(n, dvar.__getitem__)}" for n in names]
        lines.append("    out = []")
        for i, rule in enumerate(self.rules):
            expr = to_python(rule.condition.tree, var.__getitem__)
            lines += [
                "    try:",
                f"        if {expr}:",
                f"            out.append({i})",
                f"    except {CATCH}:",
                "        pass",
            ]
        lines.append("    return out")
        exec(compile("\n".join(lines) + "\n", "<rule pack>", "exec"), scope)  # generated from checked nodes
        return scope["truths"]  # type: ignore[no-any-return]

    def change_points(self, facts: VehicleFacts, now: int) -> int | None:
        """The first event time after ``now`` at which time alone may change a condition, or None."""
        best: int | None = None
        anchors: dict[str, int | None] = {}
        for name, k in self._points:
            if name not in anchors:
                anchors[name] = TIME_ANCHORS[name](facts)
            anchor = anchors[name]
            if anchor is None:
                continue
            at = anchor + k * 1000
            t = math.ceil(at)
            if t <= now:
                t = math.floor(at) + 1  # a strict comparison flips just after the exact point
                if t <= now:
                    continue
            if best is None or t < best:
                best = t
        if self._opaque and (best is None or best > now + OPAQUE_STEP_MS):
            best = now + OPAQUE_STEP_MS
        return best
