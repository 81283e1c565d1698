"""The layer contracts of pyproject.toml (import-linter, run by scripts/check): the repository keeps them, and
a deliberately added forbidden import breaks them — shown on a copy of the package layout, so the real tree
is never touched."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def lint(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache", str(config)], cwd=cwd, capture_output=True, text=True,
                          check=False)  # fmt: skip


def test_the_repository_keeps_its_layer_contracts() -> None:
    result = lint(ROOT / "pyproject.toml", ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _layout(tmp: Path) -> Path:
    """A copy of the package layout (one harmless module per package) with the repository's contracts."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    for package in config["root_packages"]:
        (tmp / package).mkdir()
        (tmp / package / "__init__.py").write_text("")
        (tmp / package / "core.py").write_text("import json\n")
    (tmp / "stores" / "core.py").write_text("import redis\n")
    lines = ["[tool.importlinter]", f"root_packages = {config['root_packages']!r}",
             "include_external_packages = true"]  # fmt: skip
    for contract in config["contracts"]:
        lines.append("[[tool.importlinter.contracts]]")
        lines += [f"{key} = {value!r}".replace("True", "true") for key, value in contract.items()]
    path = tmp / "contracts.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        ("enrich/bad.py", "import redis\n", "enrich/ is the pure core"),
        ("enrich/bad.py", "import confluent_kafka\n", "enrich/ is the pure core"),
        ("enrich/bad.py", "import bytewax.operators\n", "enrich/ is the pure core"),
        ("enrich/bad.py", "import smtplib\n", "enrich/ is the pure core"),
        ("enrich/bad.py", "from stores import core\n", "enrich/ is the pure core"),
        ("flows/bad.py", "import redis\n", "flows/ reaches Redis only through stores/"),
        ("api/bad.py", "from cli import core\n", "api/ imports no cli/ or flows/"),
        ("alerts/bad.py", "import flows.core\n", "alerts/ imports no flows/"),
    ],
)
def test_a_forbidden_import_breaks_the_check(tmp_path: Path, module: str, source: str, contract: str) -> None:
    config = _layout(tmp_path)
    assert lint(config, tmp_path).returncode == 0  # the layout alone keeps every contract
    (tmp_path / module).write_text(source)
    result = lint(config, tmp_path)
    assert result.returncode != 0
    names = [c["name"] for c in tomllib.loads(config.read_text())["tool"]["importlinter"]["contracts"]]
    (name,) = [n for n in names if n.startswith(contract)]
    text = " ".join(result.stdout.split())  # the report wraps long names
    assert f"{name} BROKEN" in text and "1 broken" in text, result.stdout


def test_flows_may_use_redis_through_stores(tmp_path: Path) -> None:
    config = _layout(tmp_path)
    (tmp_path / "flows" / "ok.py").write_text("from stores import core\n")
    assert lint(config, tmp_path).returncode == 0
