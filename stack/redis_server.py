"""Debian's ``redis-server`` on loopback with AOF on, data under ``<state>/redis``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import redis

from stack.errors import StackError
from stack.procs import Managed


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """True when the Redis at ``url`` answers PING within ``timeout`` (one try, no retries)."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, retry=None)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def find_redis_server() -> str | None:
    return shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )


def install_redis_server() -> str:
    """Install Debian's redis-server when missing (needs root and apt). Returns its path."""
    found = find_redis_server()
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise StackError("redis-server is not installed: run `sudo apt-get install -y redis-server`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"],
    ):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise StackError(f"{' '.join(cmd)} failed:\n{(result.stdout + result.stderr)[-2000:]}")
    # Debian starts a system service on install; we run our own instance on the configured port.
    found = find_redis_server()
    if not found:
        raise StackError("redis-server still missing after apt-get install")
    return found


class RedisServer:
    def __init__(self, root: Path, *, port: int, host: str = "127.0.0.1", extra_config: str = "") -> None:
        self.root = root.resolve()
        self.port = port
        self.host = host  # bind address (loopback for the local stack)
        self.extra_config = extra_config  # more redis.conf lines (e.g. cluster mode)
        self.config = self.root / "redis.conf"
        self.process = Managed("redis", self.root / "redis.pid", str(self.root))

    def write_config(self) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        loopback = self.host.startswith("127.")
        self.config.write_text(
            f"bind {self.host}{' -::1' if loopback else ''}\n"
            # Protected mode refuses every non-loopback client of a server without a password; a server
            # bound to another address (a private bridge of test namespaces) is meant to be reached there.
            f"protected-mode {'yes' if loopback else 'no'}\n"
            f"port {self.port}\n"
            "daemonize no\n"
            f"dir {self.root / 'data'}\n"
            f"logfile {self.root / 'redis.log'}\n"
            "appendonly yes\n"
            "appendfsync everysec\n"
            "save 900 1\n"
            "maxmemory-policy noeviction\n" + self.extra_config
        )

    def start(self) -> bool:
        if self.process.pid() is not None:
            return False
        binary = install_redis_server()
        self.write_config()
        self.process.start([binary, str(self.config)], log_file=self.root / "stdout.log", cwd=self.root)
        return True
