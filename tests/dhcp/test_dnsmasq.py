"""The client against a real DHCP server: dnsmasq in a namespace, the client over AF_PACKET.

Two namespaces joined by a veth: ``srv`` runs dnsmasq (2-minute leases, its
shortest), ``cli`` holds the client's end, read and written through an
AF_PACKET socket by the small adapter below, which is all the I/O the client
needs.  The adapter's clock is the wall clock plus a skew the test may advance,
so T1 comes in a second instead of a minute; dnsmasq's lease file (expiry,
MAC, address, hostname, client-id) is the evidence.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from lab.netns import create_netns, delete_netns, ip, socket_in, unique_prefix
from pymacvtap.core.dhcp import (
    DhcpClient,
    Event,
    Lease,
    LeaseAcquired,
    LeaseLost,
    LeaseRenewed,
    State,
    client_id_for,
    parse_frame,
)

pytestmark = [
    pytest.mark.root,
]

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SERVER = IPv4Address("192.0.2.1")
MAC = bytes.fromhex("020000d0c0a1")
SERVER_MAC = "02:00:00:d0:c0:01"


class Adapter:
    """The client's I/O: an AF_PACKET socket, a clock, and the events seen so far."""

    def __init__(self, client: DhcpClient, sock: socket.socket) -> None:
        self.client = client
        self.sock = sock
        self.skew = 0.0
        self.sent: list[bytes] = []
        self.events: list[Event] = []

    def now(self) -> float:
        return time.time() + self.skew

    def run_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.client.frames_to_send():
                self.sock.send(frame)
                self.sent.append(frame)
            while (event := self.client.next_event()) is not None:
                self.events.append(event)
            if done():
                return
            assert time.monotonic() < deadline, f"timed out in {self.client.state}"
            timer = self.client.get_timer()
            wait = 0.1 if timer is None else max(0.0, min(0.1, timer - self.now()))
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                frame, addr = self.sock.recvfrom(4096)
                if addr[2] != PACKET_OUTGOING:
                    self.client.receive_frame(frame, self.now())
            self.client.handle_timer(self.now())


def lease_lines(path: Path) -> list[list[str]]:
    """dnsmasq's lease file: ``expiry mac address hostname client-id`` per lease."""
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def dnsmasq_lab(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    prefix = unique_prefix()
    srv, cli = create_netns(prefix + "srv"), create_netns(prefix + "cli")
    proc = None
    try:
        ip(srv, "link", "add", "dh1", "address", SERVER_MAC, "type", "veth", "peer", "name",
           "dh0", "netns", cli)  # fmt: skip
        ip(srv, "addr", "add", f"{SERVER}/24", "dev", "dh1")
        ip(srv, "link", "set", "dh1", "up")
        ip(cli, "link", "set", "dh0", "address", MAC.hex(":"), "up")
        leases, log = tmp_path / "leases", tmp_path / "dnsmasq.log"
        proc = subprocess.Popen(
            ["ip", "netns", "exec", srv, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
             "--port=0", "--interface=dh1", "--bind-interfaces", "--no-ping", "--user=root",
             "--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,2m", "--dhcp-authoritative",
             f"--dhcp-leasefile={leases}", f"--pid-file={tmp_path / 'pid'}", "--log-dhcp",
             f"--log-facility={log}", "--dhcp-option=option:router,192.0.2.1"],
        )  # fmt: skip
        deadline = time.monotonic() + 5
        while not (log.exists() and "DHCP, IP range" in log.read_text()):
            assert proc.poll() is None, "dnsmasq exited"
            assert time.monotonic() < deadline, "dnsmasq did not start"
            time.sleep(0.05)
        yield cli, leases, log
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        delete_netns(cli)
        delete_netns(srv)


def test_lease_renewal_and_release_with_dnsmasq(dnsmasq_lab: tuple[str, Path, Path]) -> None:
    cli, leases, log = dnsmasq_lab
    sock = socket_in(cli, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    with sock:
        sock.bind(("dh0", ETH_P_IP))
        client_id = client_id_for("c1", MAC)
        client = DhcpClient(MAC, os.urandom, client_id=client_id, hostname="c1")
        io = Adapter(client, sock)

        # 1. A lease, written down by the server with our MAC, hostname and client-id.
        client.start(io.now())
        io.run_until(lambda: client.state is State.BOUND)
        (acquired,) = io.events
        assert isinstance(acquired, LeaseAcquired)
        lease = acquired.lease
        assert IPv4Address("192.0.2.50") <= lease.address <= IPv4Address("192.0.2.60")
        assert (lease.prefixlen, lease.server_id, lease.lease_time) == (24, SERVER, 120)
        assert lease.routers == (SERVER,)
        ((expiry, mac, address, hostname, cid),) = lease_lines(leases)
        assert (mac, address, hostname) == (
            ":".join(f"{b:02x}" for b in MAC),
            str(lease.address),
            "c1",
        )
        assert cid == client_id.hex(":")
        assert abs(int(expiry) - lease.expires) <= 2

        # 2. T1: the renewal goes to the server alone, and the server extends the lease.
        time.sleep(1.1)  # the lease file counts whole seconds
        io.skew = lease.t1 - time.time()
        io.sent.clear()
        io.run_until(lambda: any(isinstance(e, LeaseRenewed) for e in io.events))
        renew = parse_frame(io.sent[0])
        assert renew is not None
        assert (renew.dst_ip, renew.src_ip) == (SERVER, lease.address)
        assert renew.dst_mac.hex(":") == SERVER_MAC
        ((renewed_expiry, *_),) = lease_lines(leases)
        assert int(renewed_expiry) > int(expiry)
        assert f"DHCPACK(dh1) {lease.address}" in log.read_text()

        # 3. Release: the server forgets the lease.
        client.release(io.now())
        io.run_until(lambda: lease_lines(leases) == [], timeout=5)
        assert isinstance(io.events[-1], LeaseLost) and io.events[-1].reason == "released"
        assert f"DHCPRELEASE(dh1) {lease.address}" in log.read_text()


def test_resume_after_restart_and_nak_with_dnsmasq(dnsmasq_lab: tuple[str, Path, Path]) -> None:
    cli, leases, log = dnsmasq_lab
    sock = socket_in(cli, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    with sock:
        sock.bind(("dh0", ETH_P_IP))
        client_id = client_id_for("c1", MAC)

        def new_client() -> Adapter:
            return Adapter(DhcpClient(MAC, os.urandom, client_id=client_id, hostname="c1"), sock)

        first = new_client()
        first.client.start(first.now())
        first.run_until(lambda: first.client.state is State.BOUND)
        assert first.client.lease is not None
        saved = first.client.lease.to_dict()

        # A restarted daemon: the lease from the state file, confirmed (INIT-REBOOT).
        second = new_client()
        second.client.start(second.now(), Lease.from_dict(saved))
        assert second.client.state is State.REBOOTING
        second.run_until(lambda: second.client.state is State.BOUND)
        (event,) = second.events
        assert isinstance(event, LeaseAcquired)
        assert str(event.lease.address) == saved["address"]

        # A saved lease the server does not know for us: NAK, then a fresh lease.
        wrong = Lease.from_dict(saved | {"address": "192.0.2.200"})
        third = new_client()
        third.client.start(third.now(), wrong)
        third.run_until(lambda: third.client.state is State.BOUND)
        lost, acquired = third.events
        assert isinstance(lost, LeaseLost) and lost.reason == "nak"
        assert isinstance(acquired, LeaseAcquired)
        assert str(acquired.lease.address) == saved["address"]
        assert "DHCPNAK(dh1) 192.0.2.200" in log.read_text()
        ((_expiry, _mac, address, _hostname, _cid),) = lease_lines(leases)
        assert address == saved["address"]
