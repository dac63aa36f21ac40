"""A DHCP server on the lab's outside host: dnsmasq, its lease file read back as evidence."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DnsmasqLease:
    """One line of dnsmasq's lease file."""

    expires: int
    mac: str
    address: str
    hostname: str
    client_id: str


class Dnsmasq:
    """dnsmasq serving DHCP (no DNS) on ``dev`` in ``netns``."""

    def __init__(self, netns: str, dev: str, workdir: Path) -> None:
        self.netns = netns
        self.dev = dev
        self.lease_file = workdir / "dnsmasq.leases"
        self.log_file = workdir / "dnsmasq.log"
        self.pid_file = workdir / "dnsmasq.pid"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, first: str, last: str, router: str, *, t1: int | None = None) -> None:
        """Addresses ``first``..``last`` (/24, two-minute leases: dnsmasq's shortest);
        ``t1`` (with T2 a little later) makes a renewal come within seconds."""
        argv = [
            "ip", "netns", "exec", self.netns, "dnsmasq", "--keep-in-foreground",
            "--conf-file=/dev/null", "--port=0", f"--interface={self.dev}", "--bind-interfaces",
            "--no-ping", "--user=root", f"--dhcp-range={first},{last},255.255.255.0,2m",
            "--dhcp-authoritative", f"--dhcp-leasefile={self.lease_file}",
            f"--pid-file={self.pid_file}", "--log-dhcp", f"--log-facility={self.log_file}",
            f"--dhcp-option=option:router,{router}",
        ]  # fmt: skip
        if t1 is not None:
            argv += [f"--dhcp-option=option:T1,{t1}", f"--dhcp-option=option:T2,{t1 * 2}"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.pid_file.exists():
            assert self.proc.poll() is None, f"dnsmasq exited:\n{self.log()}"
            assert time.monotonic() < deadline, "dnsmasq did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def leases(self) -> list[DnsmasqLease]:
        try:
            lines = self.lease_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            fields = line.split()
            if len(fields) >= 5:
                out.append(DnsmasqLease(int(fields[0]), *fields[1:5]))
        return out

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@contextlib.contextmanager
def dnsmasq(
    netns: str,
    dev: str,
    workdir: Path,
    first: str,
    last: str,
    router: str,
    *,
    t1: int | None = None,
) -> Iterator[Dnsmasq]:
    server = Dnsmasq(netns, dev, workdir)
    server.start(first, last, router, t1=t1)
    try:
        yield server
    finally:
        server.stop()
        print(server.log()[-3000:])
