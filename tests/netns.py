"""Test hosts as network namespaces, so that every connection of a test
crosses a real interface and a fault can be a real network's: a link down
(a silent partition: packets vanish, no reset), iptables DROP rules for one
direction or one port, random loss with the `statistic` match (this kernel
has no netem).

`hosts(n)` (the `netns_hosts` fixture's factory) makes n namespaces, each
joined to the test's (root) namespace by a veth pair on its own /30 of
10.213.0.0/16: the root side is `host.gateway` (.1, where the control plane
is reached), the host side `host.address` (.2, what `--worker-host` binds).
Names carry the pytest process's pid and the /30 is checked free before use,
so concurrent runs do not collide. Faults live inside the host's namespace
(its link, its iptables), so they never touch the machine's own rules, and
the finalizer removes every rule, veth and namespace even when the test
failed. Tests skip, saying why, unless run as root with `ip netns` and
`iptables` working.

Processes run inside a host with `host.prefix` (`ip netns exec NAME`) in
front of their argv: `host.run(argv)` for any command, or
`Cluster.start_agent(..., prefix=host.prefix)`.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

_NET = ipaddress.ip_network("10.213.0.0/16")


def _ip(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def unavailable() -> str:
    """Why network-namespace tests cannot run here ("" when they can)."""
    if os.geteuid() != 0:
        return "network-namespace tests need root (ip netns, veth, iptables)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"network-namespace tests need `{tool}` (scripts/test-deps.sh installs it)"
    probe = f"mfprobe{os.getpid()}"
    made = _ip("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    try:
        rules = _ip("ip", "netns", "exec", probe, "iptables", "-S", check=False)
        if rules.returncode != 0:
            return f"iptables does not work in a network namespace: {rules.stderr.strip()}"
    finally:
        _ip("ip", "netns", "del", probe, check=False)
    return ""


@dataclass
class Host:
    """One test host: a namespace and its veth pair (see the module docstring)."""

    name: str  # the namespace
    veth: str  # the root side of the pair (the host side is `peer`, inside the namespace)
    peer: str
    gateway: str  # the root side's address
    address: str  # the host's address
    rules: list[list[str]] = field(default_factory=list)  # iptables rules added, to remove

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
        """Start argv inside the host."""
        return subprocess.Popen([*self.prefix, *argv], **popen)

    def exec(self, *argv: str) -> str:
        """Run argv inside the host to completion; its stdout."""
        return _ip(*self.prefix, *argv).stdout

    def link_down(self) -> None:
        """The host's link goes dark: nothing in or out, and no reset is sent to anyone."""
        self.exec("ip", "link", "set", self.peer, "down")

    def link_up(self) -> None:
        self.exec("ip", "link", "set", self.peer, "up")

    def drop(self, direction: str, port: int | None = None) -> list[str]:
        """DROP the host's TCP packets going `direction` ("in", "out" or "both"), only those
        with `port` as source or destination port when given. Returns the last rule added."""
        if direction not in ("in", "out", "both"):
            raise ValueError(f"direction must be 'in', 'out' or 'both', got {direction!r}")
        chains = {"in": ["INPUT"], "out": ["OUTPUT"], "both": ["INPUT", "OUTPUT"]}[direction]
        rule: list[str] = []
        for chain in chains:
            match = ["-p", "tcp", *(["-m", "multiport", "--ports", str(port)] if port is not None else [])]
            rule = [chain, *self._link(chain), *match, "-j", "DROP"]
            self._add(rule)
        return rule

    def loss(self, p: float) -> None:
        """Drop each packet in and out of the host with probability p (iptables `statistic`)."""
        if not 0 < p < 1:
            raise ValueError(f"loss probability must be between 0 and 1, got {p}")
        for chain in ("INPUT", "OUTPUT"):
            self._add([chain, *self._link(chain), "-m", "statistic", "--mode", "random", "--probability", f"{p:g}", "-j", "DROP"])

    def _link(self, chain: str) -> list[str]:
        """Match the host's link only: its own processes talk to each other over lo untouched."""
        return ["-i" if chain == "INPUT" else "-o", self.peer]

    def heal(self) -> None:
        """Remove every rule this host was given and bring its link up."""
        while self.rules:
            _ip(*self.prefix, "iptables", "-D", *self.rules.pop(), check=False)
        self.link_up()

    def _add(self, rule: list[str]) -> None:
        _ip(*self.prefix, "iptables", "-A", *rule)
        self.rules.append(rule)

    def remove(self) -> None:
        """Everything this host made: rules, the veth pair (both ends), the namespace."""
        for rule in reversed(self.rules):
            _ip(*self.prefix, "iptables", "-D", *rule, check=False)
        self.rules.clear()
        _ip("ip", "link", "del", self.veth, check=False)
        _ip("ip", "netns", "del", self.name, check=False)


def _taken_subnets() -> set[ipaddress.IPv4Network]:
    out = _ip("ip", "-o", "-4", "addr", "show").stdout.split()
    return {ipaddress.ip_interface(word).network for word in out if "/" in word and word[0].isdigit()}


def _make(index: int, subnet: ipaddress.IPv4Network) -> Host:
    tag = f"mf{os.getpid()}h{index}"
    gateway, address = (str(a) for a in list(subnet.hosts())[:2])
    host = Host(name=tag, veth=tag, peer=f"{tag}p", gateway=gateway, address=address)
    _ip("ip", "netns", "add", host.name)
    try:
        _ip("ip", "link", "add", host.veth, "type", "veth", "peer", "name", host.peer)
        _ip("ip", "link", "set", host.peer, "netns", host.name)
        _ip("ip", "addr", "add", f"{gateway}/30", "dev", host.veth)
        _ip("ip", "link", "set", host.veth, "up")
        host.exec("ip", "addr", "add", f"{address}/30", "dev", host.peer)
        host.exec("ip", "link", "set", host.peer, "up")
        host.exec("ip", "link", "set", "lo", "up")
    except BaseException:
        host.remove()
        raise
    return host


@pytest.fixture
def netns_hosts() -> Iterator[Callable[[int], list[Host]]]:
    """A factory: `netns_hosts(n)` -> n new test hosts, all removed when the test ends."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    made: list[Host] = []

    def hosts(n: int) -> list[Host]:
        taken = _taken_subnets()
        start = (os.getpid() * 4 + len(made)) % (1 << 14)  # /30s of the /16, a pid-dependent start
        subnets = list(_NET.subnets(new_prefix=30))
        out = []
        for step in range(len(subnets)):
            if len(out) == n:
                break
            subnet = subnets[(start + step) % len(subnets)]
            if subnet in taken:
                continue
            host = _make(len(made), subnet)
            made.append(host)
            out.append(host)
        return out

    try:
        yield hosts
    finally:
        for host in made:
            host.remove()
