"""A multi-host lab on one machine: network namespaces joined to the host by veth pairs on a bridge.

Each namespace is a "host" with its own address and network stack; the host side of the bridge has one more
address, where private servers (a Kafka broker, Redis) listen so that every namespace reaches them. All
addresses are in one /24 of 10.0.0.0/8 that no route of the machine uses yet; traffic never leaves the
machine. Needs root and iproute2 (``ip netns``); :func:`netns_unsupported` says why not, where it cannot run.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from stack.errors import StackError


def _ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise StackError(f"`{' '.join(cmd)}` failed: {result.stderr.strip()}")
    return result


def netns_unsupported() -> str | None:
    """Why network namespaces cannot be made here (not root, no iproute2, kernel refuses), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed (scripts/bootstrap installs it)"
    probe = f"fe-probe-{uuid.uuid4().hex[:6]}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is refused here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    used = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines() + _ip("-4", "route").stdout.splitlines():
        for word in line.split():
            with contextlib.suppress(ValueError):
                used.append(ipaddress.ip_network(word, strict=False))
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randrange(200, 250)}.{rng.randrange(256)}.0/24")
        if not any(net.overlaps(u) for u in used if u.version == 4 and u.prefixlen > 0):
            return net
    raise StackError("no free /24 in 10.200.0.0–10.249.255.0 for the namespaces")


@dataclass(frozen=True, slots=True)
class NsHost:
    netns: str
    ip: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]


@dataclass(slots=True)
class Lab:
    """The namespaces (``hosts``) and the host's own address on their bridge (``host_ip``)."""

    token: str
    bridge: str
    host_ip: str
    hosts: list[NsHost] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Delete the namespaces (their veth ends go with them) and the bridge. Processes inside must have
        been stopped first."""
        for h in self.hosts:
            _ip("netns", "del", h.netns, check=False)
        for link in [*self.links, self.bridge]:
            _ip("link", "del", link, check=False)


@contextlib.contextmanager
def lab(count: int = 2) -> Iterator[Lab]:
    """Create ``count`` namespaces on a fresh bridge; remove everything on exit."""
    token = uuid.uuid4().hex[:6]
    net = _free_subnet()
    addrs = list(net.hosts())
    prefix = net.prefixlen
    made = Lab(token, f"fe{token}br", str(addrs[0]))
    try:
        _ip("link", "add", made.bridge, "type", "bridge")
        _ip("addr", "add", f"{made.host_ip}/{prefix}", "dev", made.bridge)
        _ip("link", "set", made.bridge, "up")
        for i in range(count):
            host = NsHost(f"fe-{token}-{i}", str(addrs[i + 1]))
            outer, inner = f"fe{token}h{i}", f"fe{token}n{i}"
            _ip("netns", "add", host.netns)
            made.hosts.append(host)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            made.links.append(outer)
            _ip("link", "set", inner, "netns", host.netns)
            _ip("link", "set", outer, "master", made.bridge)
            _ip("link", "set", outer, "up")
            _ip("addr", "add", f"{host.ip}/{prefix}", "dev", inner, netns=host.netns)
            _ip("link", "set", inner, "up", netns=host.netns)
            _ip("link", "set", "lo", "up", netns=host.netns)
        yield made
    finally:
        made.close()
