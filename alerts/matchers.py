"""Label matchers in the Alertmanager syntax: ``a="v"``, ``a!="v"``, ``a=~"re"``, ``a!~"re"``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from alerts.errors import AlertsError

_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(?:"((?:[^"\\]|\\.)*)"|(\S*))\s*$')


@dataclass(frozen=True, slots=True)
class Matcher:
    name: str
    op: str  # = != =~ !~
    value: str
    _regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, text: str) -> Matcher:
        m = _MATCHER.match(text)
        if not m:
            raise AlertsError(f'bad matcher {text!r} (use name="value", !=, =~ or !~)')
        name, op = m.group(1), m.group(2)
        value = m.group(3).replace('\\"', '"') if m.group(3) is not None else m.group(4)
        regex = None
        if op in ("=~", "!~"):
            try:
                regex = re.compile(f"^(?:{value})$")  # anchored, as in Alertmanager
            except re.error as exc:
                raise AlertsError(f"bad regex in matcher {text!r}: {exc}") from exc
        return cls(name, op, value, regex)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        assert self._regex is not None
        hit = self._regex.match(actual) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


def parse_all(texts: list[str]) -> tuple[Matcher, ...]:
    return tuple(Matcher.parse(t) for t in texts)


def match_all(matchers: tuple[Matcher, ...], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
