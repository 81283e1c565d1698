"""The console of the commands that print tables (``enrich demo``, ``enrich flatten``): rich on a terminal,
plain text for logs; never a table broken into unreadable cells.

* ``CliConsole(plain=False)``: rich output. A table that fits the width is printed as it is; one that does
  not (at 80 columns, say) is folded cleanly instead of being squeezed into cut or broken cells: one block
  per row, its first cell as the heading and the other cells below it as ``header value`` pairs.
* ``CliConsole(plain=True)`` (``enrich demo --plain``): no colour, no box characters, nothing rewritten in
  place: rules become ``== title ==``, tables aligned columns of text (long lines kept whole, not wrapped),
  JSON one line.

Code prints ``rich.table.Table`` objects, ``console.rule`` and ``console.print_json`` as usual; this class
decides how they look.
"""

from __future__ import annotations

import json as jsonlib
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text


class CliConsole(Console):
    def __init__(self, *, plain: bool = False, **kwargs: Any) -> None:
        # Text is not broken into lines by rich (the terminal wraps it): addresses, keys and commands stay
        # whole, to click or copy. Tables still fit the width (or fold, below).
        kwargs.setdefault("soft_wrap", True)
        if plain:
            kwargs.update(no_color=True, highlight=False, emoji=False, soft_wrap=True, force_terminal=False)
        super().__init__(**kwargs)
        self.plain = plain

    # -- what the demo calls ---------------------------------------------------------------------------
    def rule(self, title: str | Text = "", **kwargs: Any) -> None:
        if self.plain:
            super().print(f"== {Text.from_markup(title).plain if isinstance(title, str) else title.plain} ==",
                          markup=False)  # fmt: skip
            return
        super().rule(title, **kwargs)

    def print_json(self, json: str | None = None, *, data: Any = None, **kwargs: Any) -> None:
        if self.plain:
            value = jsonlib.loads(json) if json is not None else data
            super().print(jsonlib.dumps(value, ensure_ascii=False, separators=(",", ":")), markup=False)
            return
        super().print_json(json, data=data, **kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        if not any(isinstance(o, Table) for o in objects):
            super().print(*objects, **kwargs)
            return
        for obj in objects:
            if not isinstance(obj, Table):
                super().print(obj, **kwargs)
            elif self.plain:
                for line in self.plain_lines(obj):
                    super().print(line, markup=False, highlight=False, soft_wrap=True)
            elif self.fits(obj):
                super().print(obj, **kwargs)
            else:
                self.print_folded(obj)

    # -- tables ----------------------------------------------------------------------------------------
    def cells(self, table: Table) -> tuple[list[str], list[list[str]]]:
        """Headers and rows of ``table`` as plain strings (markup resolved, as rich would show them)."""

        def text(value: Any) -> str:
            if isinstance(value, Text):
                return value.plain
            if isinstance(value, str):
                return self.render_str(value).plain
            return str(value)

        headers = [text(c.header) for c in table.columns]
        columns = [[text(v) for v in c.cells] for c in table.columns]
        return headers, [list(row) for row in zip(*columns, strict=True)] if columns else []

    def fits(self, table: Table) -> bool:
        """True when the table's widest rendering (no cell wrapped) fits the console."""
        natural = Measurement.get(self, self.options.update(max_width=100_000), table).maximum
        return natural <= self.width

    def plain_lines(self, table: Table) -> list[str]:
        headers, rows = self.cells(table)
        widths = [max(len(v) for v in col) for col in zip(headers, *rows, strict=True)]
        lines = [Text.from_markup(str(table.title)).plain] if table.title else []
        for values in (headers, *rows):
            lines.append("  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip())
        return lines

    def print_folded(self, table: Table) -> None:
        """One block per row: the first cell as a heading line, the others below it as ``header value``
        pairs, indented, as many to a line as fit (a pair is only broken when it is longer than a line)."""
        headers, rows = self.cells(table)
        if table.title:
            super().print(Text.from_markup(str(table.title), style="bold"))
        room = max(20, self.width - 4)
        for row in rows:
            super().print(Text(f"• {row[0]}", style="bold"), overflow="fold")
            lines: list[Text] = [Text()]
            for h, v in zip(headers[1:], row[1:], strict=True):
                if v in ("", "-"):
                    continue
                pair = Text.assemble((f"{h} ", "dim"), v.replace("\n", " "))
                line = lines[-1]
                if line and len(line) + 3 + len(pair) > room:
                    lines.append(line := Text())
                if line:
                    line.append(" · ", style="dim")
                line.append_text(pair)
            for line in lines:
                super().print(Padding(line, (0, 0, 0, 4), expand=False), overflow="fold")
