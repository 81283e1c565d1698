"""`enrich stack up | down` on a second, throw-away stack (own state dir and ports): idempotent up,
down stops exactly what up started."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from enrich.settings import Settings
from stack.manager import Stack
from stack.procs import free_port, wait_until

pytestmark = pytest.mark.integration


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; only its parent's wait is missing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.skipif(
    not (shutil.which("java") and shutil.which("mvn") and shutil.which("redis-server")),
    reason="needs java, mvn and redis-server (scripts/bootstrap installs them)",
)
def test_stack_up_is_idempotent_and_down_leaves_nothing(tmp_path: Path) -> None:
    main_state = Path(os.environ.get("ENRICH_STATE_DIR", ".stack"))
    shared_lib = main_state / "kafka" / "lib"
    kport, cport, rport = free_port(), free_port(), free_port()
    settings = Settings(
        state_dir=tmp_path / "state",
        kafka_bootstrap=f"127.0.0.1:{kport}",
        kafka_controller_port=cport,
        redis_url=f"redis://127.0.0.1:{rport}/0",
        kafka_lib_dir=shared_lib if (shared_lib / ".resolved").exists() else None,
        kafka_heap="512m",
    )
    stack = Stack(settings)
    try:
        stack.up(timeout=120)
        first = {s.name: s.pid for s in stack.status()}
        assert all(s.ready for s in stack.status())
        assert (tmp_path / "state" / "kafka" / "data" / "meta.properties").exists()  # storage formatted
        stack.up(timeout=60)  # second up: nothing restarted
        assert {s.name: s.pid for s in stack.status()} == first
        pids = [p for p in first.values() if p is not None]
        assert len(pids) == 2
    finally:
        stopped = stack.down()
    assert sorted(stopped) == ["kafka", "redis"]
    assert not [pid for pid in pids if _running(pid)]
    assert wait_until(lambda: not _listening(kport) and not _listening(rport), 10)
    assert stack.down() == []  # nothing left to stop
