"""The README's runnable examples, executed as written against the test stack (tests/readme_blocks.py).

Each ``sh runnable`` block runs with ``bash -e`` (every command must succeed) in a fresh directory that links
the repository's ``scripts`` and the virtualenv running the tests as ``.venv``. The example is not rewritten:
the test stack, small partition counts, this test's own topics and Redis key prefixes, its state directory
and free ports come in as ``ENRICH_*`` variables, as a user would set them. The lines of the block's
``text expected-output`` must be printed in order; then every worker the block started must have stopped
cleanly (no registration left behind) and nothing it started may still run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from enrich.settings import METRICS_PORT_OFFSET, Settings
from stack.procs import free_port, free_port_block
from tests.readme_blocks import examples, unmatched

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = examples((REPO / "README.md").read_text())


def kafka_lib_dir() -> Path:
    """The broker jars the local stack already resolved (``enrich stack up`` in the example reuses them)."""
    given = os.environ.get("ENRICH_KAFKA_LIB_DIR")
    if given:
        return Path(given)
    return (REPO / os.environ.get("ENRICH_STATE_DIR", ".stack")).resolve() / "kafka" / "lib"


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"README.md:{e.line}" for e in EXAMPLES])
def test_readme_example_runs_as_written(example: object, isolated_settings: Settings, tmp_path: Path) -> None:
    from tests.readme_blocks import Example

    assert isinstance(example, Example)
    lib = kafka_lib_dir()
    if not (lib / ".resolved").exists():
        pytest.skip(f"no resolved Kafka jars in {lib} (run `enrich stack up` once)")
    work = tmp_path / "work"
    work.mkdir()
    (work / "scripts").symlink_to(REPO / "scripts")
    (work / ".venv").symlink_to(Path(sys.prefix))
    state = tmp_path / "state"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ENRICH_")},
        **isolated_settings.as_env(),
        "ENRICH_STATE_DIR": str(state),
        "ENRICH_KAFKA_LIB_DIR": str(lib),
        "ENRICH_API_PORT": str(free_port()),
        "ENRICH_METRICS_PORT_BASE": str(free_port_block(max(METRICS_PORT_OFFSET.values()) + 1)),
        "PATH": f"{Path(sys.prefix) / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = (
        tmp_path / "output.txt"
    )  # a file, not a pipe: workers left running by a failed block keep a pipe open
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", "-e", "-c", example.code], cwd=work, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        proc.wait(timeout=150)
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"README.md:{example.line} did not finish in 150 s:\n{log.read_text(errors='replace')[-4000:]}"
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever the block left running
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, f"README.md:{example.line} failed (exit {proc.returncode}):\n{text[-4000:]}"
    missing = unmatched(example.expected, text)
    assert not missing, (
        f"README.md:{example.line}: expected output not printed (from this line on):\n"
        + "\n".join(missing)
        + f"\n--- output ---\n{text[-6000:]}"
    )
    left = sorted(p.name for p in (state / "workers").glob("*.heartbeat.json"))
    assert left == [], f"workers not stopped cleanly (still registered): {left}"
