"""``enrich api keys create|list|revoke``, ``enrich api policies check`` and a server that refuses to start on
a bad policy file, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import orjson
import pytest

from enrich.settings import Settings
from tests.integration.api_util import api_process, car_row, cleanup, state_doc, write_states

pytestmark = pytest.mark.integration


def enrich(s: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **s.as_env(), **env}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_keys_lifecycle_from_the_command_line(isolated_settings: Settings, tmp_path: Path) -> None:
    s = isolated_settings
    write_states(s, [state_doc(7, car_row(7, "beta", "pilot"))])
    try:
        made = enrich(s, "api", "keys", "create", "--name", "partner", "--tag", "environment=beta", "--json")
        assert made.returncode == 0, made.stderr
        doc = orjson.loads(made.stdout)
        assert doc["tags"] == {"environment": "beta"} and doc["key"].startswith(f"fe_{doc['id']}_")
        plain = enrich(s, "api", "keys", "create", "--name", "x", "--expires-in", "1h")
        assert plain.returncode == 0 and plain.stdout.strip().startswith("fe_")  # only the key on stdout
        bad = enrich(s, "api", "keys", "create", "--name", "x", "--tag", "zone=1")
        assert bad.returncode != 0 and "declares these key tags" in bad.stderr
        listed = enrich(s, "api", "keys", "list")
        assert doc["id"] in listed.stdout and doc["key"] not in listed.stdout
        with api_process(s, tmp_path / "api.log") as base:
            auth = {"Authorization": f"Bearer {doc['key']}"}
            assert httpx.get(f"{base}/v1/vehicles/7", headers=auth).status_code == 200
            ended = threading.Event()

            def listen() -> None:  # an open event stream of the key: revocation must end it too
                with httpx.stream("GET", f"{base}/v1/events", headers=auth, timeout=30) as r:
                    assert r.status_code == 200
                    for _line in r.iter_lines():
                        pass
                ended.set()

            listener = threading.Thread(target=listen, daemon=True)
            listener.start()
            assert enrich(s, "api", "keys", "revoke", doc["id"]).returncode == 0
            assert enrich(s, "api", "keys", "revoke", "000000000000").returncode == 1

            def refused() -> bool:
                return httpx.get(f"{base}/v1/vehicles/7", headers=auth).status_code == 401

            from stack.procs import wait_until

            assert wait_until(refused, timeout=5)  # revocation takes effect within the key cache's second
            assert ended.wait(timeout=15), "the revoked key's event stream is still open"
    finally:
        cleanup(s)


def test_a_bad_policy_file_is_refused_with_its_line(isolated_settings: Settings, tmp_path: Path) -> None:
    s = isolated_settings
    bad = tmp_path / "bad.cedar"
    bad.write_text('// ok so far\npermit (principal, action, resource)\nwhen { resource.stag == "prod" };\n')
    checked = enrich(s, "api", "policies", "check", str(bad))
    assert checked.returncode == 1 and f"{bad}:3:" in checked.stdout.replace("\n", ""), checked.stdout
    assert enrich(s, "api", "policies", "check").returncode == 0
    served = subprocess.run(
        [sys.executable, "-m", "cli.main", "api", "--port", "1"],
        capture_output=True,
        check=False,
        text=True,
        env={**os.environ, **s.as_env(), "ENRICH_API_POLICIES": str(bad)},
        timeout=60,
    )
    assert served.returncode == 78  # a configuration error (EX_CONFIG): `enrich run` does not restart it
    assert served.stderr.count("\n") == 1 and "enrich api: cannot start: access policies:" in served.stderr
    assert ":3:" in served.stderr
