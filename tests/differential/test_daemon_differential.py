"""Differential test: the daemon and CLI against kernel macvlan, frame by frame (SPEC 2, 4, 8).

The scenarios of ``tests/differential/test_kernel_differential.py`` (the engine against the kernel)
are run end to end here, each twice, in two identical labs of SPEC section 8 (same
lower names and MACs, same static switch table on each ``br0``, same hairpin setting):

* the kernel lab, exactly as the engine test runs it (``run_kernel``): kernel macvlan
  endpoints on the veth lowers ``low0``/``low1``;
* the daemon lab: a real ``pymacvtap daemon`` in the host namespace, one reused for
  every scenario, and ``macvlan`` endpoints made with the real CLI
  (``pymacvtap link add link LOWER name N type macvlan mode M [address MAC] netns NS
  ifname eth0``, ``link set N up``, ``link set N macaddr OP MAC...``), each a veth
  netdev in a namespace of its own; the whole suite runs once per data path (ebpf,
  python).  Multicast groups are joined with ``ip maddr add`` and
  allmulti set with ``ip link set eth0 allmulticast on`` inside the endpoint's namespace,
  as a container would; the daemon reads groups every GROUP_POLL_SECONDS, so before the
  first frame each joined group is probed from ext until the endpoint gets it.

Frames are injected the same way on both sides: "from an endpoint" is a write to an
AF_PACKET socket on the endpoint's netdev (the kernel macvlan's ``macvlan_start_xmit``;
the veth's transmit, which the programs or the daemon read), "from outside" a write on ext's
interface.  Receivers are captured on every endpoint netdev (ingress only), on the switch
port facing each lower (``wire:<lower>``: what the lower sent) and on ext.  Endpoint and
lower names are the same in both labs, so receivers compare without renaming.

For every injected frame the multiset of receivers with a byte-identical copy must be
equal, whether the sender took the frame must be equal (a down endpoint's netdev refuses
the write with ENETDOWN on both sides, so nothing reaches the daemon), and so must the
per-endpoint deltas of rx_packets, tx_packets, rx_multicast, rx_bytes and tx_bytes
(``pymacvtap -j -s link show`` against ``ip -s -j link``).  Byte counters: the daemon
counts like the engine, so the kernel's two byte-counting quirks that SPEC 2.3 lets us
skip are allowed for exactly as in the engine test (``kernel_view``), nothing else.
The kernel's salted multicast hash may let a group nobody joined through; such runs are
retried on the kernel side with fresh salts, with the engine test's rule
(``only_hash_collisions``).

Not compared, on purpose: the daemon's rx_dropped/tx_dropped/errors (the kernel
counts none for these frames, and a frame refused at the socket reaches neither).
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab import Lab, PacketSocket, cleanup_leftovers, drain, ip, mac_str
from lab.daemon import DaemonProcess
from tests.differential.test_kernel_differential import (
    ADDRESSES,
    COUNTERS,
    ENDPOINT_MACS,
    ETHERTYPE,
    EXT_MAC,
    LOWERS,
    MAX_ATTEMPTS,
    PT,
    SCENARIOS,
    SWITCH_TABLE,
    KernelLab,
    Scenario,
    Seen,
    inject,
    kernel_view,
    only_hash_collisions,
    run_kernel,
)

pytestmark = pytest.mark.root

IFNAME = "eth0"  # the endpoint's tap netdev inside its namespace
# Without a frame of ours for this long, a frame counts as settled.  A little longer than
# the kernel side's: a frame may cross the daemon (a Python loop) twice via the hairpin.
DAEMON_QUIET = 0.2
PROBE = b"PMVT-PROBE"  # payload of the group probes (never ``ours``)
GROUP_TIMEOUT = 8.0  # seconds for the daemon to pick up a joined group


# -- the two labs ------------------------------------------------------------------------


@contextlib.contextmanager
def switch_lab() -> Iterator[tuple[Lab, dict[str, PacketSocket], PacketSocket]]:
    """The lab of the engine test: both lowers on br0, its static table, capture sockets."""
    with Lab(ext_mac=EXT_MAC) as lab, contextlib.ExitStack() as stack:
        for name, mac in LOWERS.items():
            lab.add_lower(name, mac, hairpin=True)
        lab.fdb_static_many(SWITCH_TABLE)
        wires = {name: stack.enter_context(lab.wire_socket(name)) for name in LOWERS}
        ext = stack.enter_context(lab.ext_socket())
        yield lab, wires, ext


@dataclass
class DaemonLab:
    lab: Lab
    daemon: DaemonProcess
    wires: dict[str, PacketSocket]
    ext: PacketSocket
    netns: dict[str, str] = field(default_factory=dict)  # endpoint name -> its namespace

    def container(self, name: str) -> str:
        """The endpoint's namespace, made on first use and kept for later scenarios."""
        if name not in self.netns:
            self.netns[name] = self.lab.add_netns(f"c-{name}")
        return self.netns[name]

    def stats(self) -> dict[str, dict[str, dict[str, int]]]:
        """Endpoint name -> ``stats64`` from ``pymacvtap -j -s link show``."""
        return {e["ifname"]: e["stats64"] for e in self.daemon.show(stats=True)}


@pytest.fixture(scope="module")
def klab() -> Iterator[KernelLab]:
    cleanup_leftovers()
    with switch_lab() as (lab, wires, ext):
        yield KernelLab(lab, wires, ext)


@pytest.fixture(scope="module", params=["ebpf", "python"])
def dlab(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonLab]:
    """The daemon lab, once per data path (SPEC 7: both are proven against the kernel)."""
    cleanup_leftovers()
    with switch_lab() as (lab, wires, ext):
        daemon = DaemonProcess(
            lab.host, Path(tmp_path_factory.mktemp("daemon")), datapath=request.param
        )
        try:
            daemon.start()
            yield DaemonLab(lab, daemon, wires, ext)
        finally:
            daemon.cleanup()


# -- the daemon side -----------------------------------------------------------------------


def probe_frame(group: bytes) -> bytes:
    payload = (PROBE + secrets.token_bytes(8)).ljust(64, b".")
    return group + EXT_MAC + ETHERTYPE + payload


def is_probe(data: bytes) -> bool:
    return data[12:14] == ETHERTYPE and data[14 : 14 + len(PROBE)] == PROBE


def wait_for_groups(d: DaemonLab, sc: Scenario, sockets: dict[str, PacketSocket]) -> None:
    """Until the daemon has read every up endpoint's joined groups, probe them from ext."""
    watch = {**sockets, **{f"wire:{n}": s for n, s in d.wires.items()}, "ext": d.ext}
    for ep in sc.endpoints:
        if not ep.up:
            continue
        for gname in ep.groups:
            group = ADDRESSES[gname]
            deadline = time.monotonic() + GROUP_TIMEOUT
            while True:
                d.ext.send(probe_frame(group))
                got = drain(watch, quiet=0.1, limit=0.5, interesting=is_probe)
                if any(data[:6] == group for data in got[ep.name]):
                    break
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{sc.id}: daemon endpoint {ep.name} never received group {gname} "
                        f"({mac_str(group)}) joined on its netdev, within {GROUP_TIMEOUT}s",
                        pytrace=False,
                    )
    # Copies of the probes still on their way must not count for the first frame.
    drain(watch, quiet=DAEMON_QUIET, interesting=is_probe)


def run_daemon(d: DaemonLab, sc: Scenario) -> list[Seen]:
    lab, daemon = d.lab, d.daemon
    assert daemon.show() == [], "endpoints left over from an earlier scenario"
    for lower in LOWERS:
        lab.set_hairpin(lower, sc.hairpin)
    created: list[str] = []
    sockets: dict[str, PacketSocket] = {}
    try:
        for ep in sc.endpoints:
            ns = d.container(ep.name)
            args = ["link", "add", "link", ep.lower, "name", ep.name, "type", "macvlan"]
            args += ["mode", ep.mode]
            if ep.mode != PT:
                args += ["address", mac_str(ENDPOINT_MACS[ep.name])]
            daemon.cli(*args, "netns", ns, "ifname", IFNAME)
            created.append(ep.name)
            for op, names in ep.macaddr:
                macs = [mac_str(ADDRESSES[n]) for n in names]
                daemon.cli("link", "set", ep.name, "macaddr", op, *macs)
            # One `ip` per group: `ip -batch` applies only the first of several `maddr add`.
            for g in ep.groups:
                lab.join_group(IFNAME, ADDRESSES[g], netns=ns)
            missing = {g for g in ep.groups if ADDRESSES[g] not in lab.groups(IFNAME, ns)}
            assert not missing, f"{sc.id}: netdev of {ep.name} did not join {missing}"
            if ep.allmulti:
                ip(ns, "link", "set", IFNAME, "allmulticast", "on")
        for ep in sc.endpoints:
            if ep.up:
                daemon.cli("link", "set", ep.name, "up")
        for ep in sc.endpoints:
            sockets[ep.name] = PacketSocket(d.netns[ep.name], IFNAME)
        wait_for_groups(d, sc, sockets)
        watch = {**sockets, **{f"wire:{n}": s for n, s in d.wires.items()}, "ext": d.ext}
        seen = inject(sc, sockets, d.ext, watch, d.stats, DAEMON_QUIET)
        return seen
    finally:
        for s in sockets.values():
            s.close()
        for name in reversed(created):
            daemon.run_cli("link", "del", name)


# -- comparison ------------------------------------------------------------------------------


def differences(sc: Scenario, kernel: list[Seen], daemon: list[Seen]) -> list[str]:
    """Every way the daemon's run differs from the kernel's (byte quirks allowed for)."""
    out = []
    for i, (tx, k, d) in enumerate(zip(sc.frames, kernel, daemon, strict=True)):
        if k.accepted != d.accepted or k.receivers != d.receivers:
            out.append(f"frame {i} [{tx}]: kernel {k.describe()} / daemon {d.describe()}")
        want = kernel_view(sc, tx, d)
        for name in k.counters:
            if k.counters[name] != want[name]:
                out.append(
                    f"frame {i} [{tx}]: {name} deltas {COUNTERS}: kernel {k.counters[name]}"
                    f" / daemon {d.counters[name]} (kernel quirks applied: {want[name]})"
                )
    return out


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.id for sc in SCENARIOS])
def test_daemon_matches_kernel(klab: KernelLab, dlab: DaemonLab, sc: Scenario) -> None:
    try:
        daemon = run_daemon(dlab, sc)
    except Exception:
        print(dlab.daemon.log())  # shown by pytest only when the test failed
        raise
    notes = []
    for attempt in range(MAX_ATTEMPTS):
        kernel, groups = run_kernel(klab, sc, spacers=attempt * len(sc.endpoints))
        diffs = differences(sc, kernel, daemon)
        if not diffs:
            return
        if not only_hash_collisions(sc, kernel, daemon):
            break
        notes.append(f"attempt {attempt + 1}: kernel hash-filter collision: {diffs}")
    joined = {n: sorted(g.hex(":") for g in gs) for n, gs in groups.items()}
    diffs.append(f"groups of the kernel endpoints: {joined}")
    pytest.fail(
        f"daemon disagrees with kernel macvlan in scenario {sc.id} "
        f"(hairpin {'on' if sc.hairpin else 'off'}):\n  " + "\n  ".join([*notes, *diffs]),
        pytrace=False,
    )
