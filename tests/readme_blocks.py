"""The README's runnable examples: which blocks run, and what their output must contain.

* A fenced block whose info string is ``sh runnable`` (GitHub highlights it as ``sh``) is run as written.
* The fenced block ``text expected-output`` that follows it (only prose or blank lines between) lists lines
  its output must contain, in this order (other lines may come between them). An expected line matches a
  whole output line, ``…`` matching anything within it; matching ignores box-drawing characters, carriage
  returns and how many spaces separate words, so a table may be shown with the padding of the run it was
  copied from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
BOX = re.compile(r"[\u2500-\u257f]")


@dataclass(frozen=True, slots=True)
class Example:
    line: int  # 1-based line of the opening fence in the README
    code: str
    expected: list[str]


def examples(markdown: str) -> list[Example]:
    """Every runnable block with the expected-output block that follows it (if any)."""
    fences = list(FENCE.finditer(markdown))
    found = []
    for i, fence in enumerate(fences):
        if fence.group(1).split() != ["sh", "runnable"]:
            continue
        expected: list[str] = []
        following = fences[i + 1] if i + 1 < len(fences) else None
        if following is not None and following.group(1).split() == ["text", "expected-output"]:
            between = markdown[fence.end() : following.start()]
            if "```" not in between and "\n#" not in between:  # no other block or section in between
                expected = [ln for ln in following.group(2).splitlines() if ln.strip()]
        found.append(Example(markdown.count("\n", 0, fence.start()) + 1, fence.group(2), expected))
    return found


def normalise(line: str) -> str:
    return " ".join(BOX.sub(" ", line.replace("\r", "")).split())


def pattern(expected: str) -> re.Pattern[str]:
    """``…`` matches anything; a space next to it marks a word's edge (``running … 0 …``: a lone 0)."""
    out = []
    for part in normalise(expected).split("…"):
        core = re.escape(part.strip())
        before = r"(?<!\S)" if part.startswith(" ") else ""
        after = r"(?!\S)" if part.endswith(" ") else ""
        out.append(f"{before}{core}{after}" if core else "")
    return re.compile(".*?".join(out))


def unmatched(expected: list[str], output: str) -> list[str]:
    """The expected lines not found in ``output`` in order (empty: all there)."""
    lines = [normalise(ln) for ln in output.splitlines()]
    at = 0
    for i, want in enumerate(expected):
        rx = pattern(want)
        while at < len(lines) and not rx.fullmatch(lines[at]):
            at += 1
        if at == len(lines):
            return expected[i:]
        at += 1
    return []
