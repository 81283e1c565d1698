"""The README test's parser and output matcher (tests/readme_blocks.py), and the README's own blocks."""

from __future__ import annotations

from pathlib import Path

from tests.readme_blocks import examples, unmatched

README = Path(__file__).resolve().parents[2] / "README.md"

DOC = """# x

```sh runnable
echo one
```

It prints:

```text expected-output
one
```

```sh
not run
```

```sh runnable
echo two
```

## Next

```text expected-output
belongs to no runnable block
```
"""


def test_runnable_blocks_and_their_expected_output_are_found() -> None:
    found = examples(DOC)
    assert [(e.line, e.code, e.expected) for e in found] == [
        (3, "echo one\n", ["one"]),
        (17, "echo two\n", []),  # the expected block after it is in another section
    ]


def test_expected_lines_match_in_order_with_wildcards_and_box_characters() -> None:
    output = "\n".join([
        "stack ready in 0.8s (install 0.0s)",
        "┃ WORKER   ┃ STATE    ┃",
        "flow-enrich    running  29265  2s          0  4,981 rec/s",
        'etag: "1-00000000"\r',
    ])  # fmt: skip
    assert unmatched(["stack ready in …", "WORKER … STATE", "flow-enrich running … 0 … rec/s", 'etag: "…"'],
                     output) == []  # fmt: skip
    # a lone 0 is not any 0: a lag of 120 does not match
    assert unmatched(["flow-enrich running … 0 … rec/s"], output.replace("  0  ", "  120  ")) != []
    # order matters, and what is missing is reported from the first line not found
    assert unmatched(['etag: "…"', "stack ready in …"], output) == ["stack ready in …"]
    assert unmatched(["stack ready in …", "no such line", 'etag: "…"'], output) == [
        "no such line",
        'etag: "…"',
    ]
    # a line matches whole: a prefix, or a count that only starts the same, is not enough
    assert unmatched(["stack ready in 0.8s"], output) == ["stack ready in 0.8s"]
    assert unmatched(["flow-enrich running … 0 … 4"], output) == ["flow-enrich running … 0 … 4"]


def test_the_readme_has_its_runnable_example_with_expected_output() -> None:
    found = examples(README.read_text())
    assert found, "the README has no ```sh runnable block"
    assert all(e.expected for e in found), "every runnable block is followed by its expected output"
    assert "enrich stack down" not in "".join(e.code for e in found), (
        "a runnable block must not stop the stack"
    )
