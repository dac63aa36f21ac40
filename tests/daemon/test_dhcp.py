"""DHCP kept by the daemon: dnsmasq on the outside host, containers with ``dhcp on``.

The evidence is on both sides: the container's netdev has the leased address and
default route and reaches the outside host; dnsmasq's lease file names each
endpoint's MAC and host name, and forgets the lease when the endpoint is deleted.
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from lab import Lab
from lab.daemon import DaemonProcess, wait_until
from lab.dnsmasq import dnsmasq
from lab.fixtures import EXT_IP, SUBNET, Containers
from lab.netns import ip
from lab.readme import code_blocks

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(90),
]


def add_dhcp_container(lab: Lab, daemon: DaemonProcess, name: str) -> str:
    ns = lab.add_netns(name)
    daemon.cli(
        "link", "add", "link", "low0", "name", name, "type", "macvlan", "mode", "vepa",
        "netns", ns, "ifname", "eth0", "dhcp", "on", "hostname", f"host-{name}",
    )  # fmt: skip
    ip(ns, "link", "set", "eth0", "up")
    return ns


def leased(daemon: DaemonProcess, name: str) -> dict[str, object] | None:
    lease = daemon.show(name)["dhcp"].get("lease")
    return lease if isinstance(lease, dict) else None


def wait_for_lease(daemon: DaemonProcess, name: str) -> dict[str, object]:
    assert wait_until(lambda: leased(daemon, name) is not None, timeout=15), daemon.log()
    lease = leased(daemon, name)
    assert lease is not None
    return lease


def on_netdev(ns: str) -> str:
    return ip(ns, "-o", "-4", "addr", "show", "dev", "eth0")


def ping(ns: str, address: str) -> bool:
    argv = ["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", address]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


def test_leases_kept_renewed_and_released(
    lab: Lab, daemon: DaemonProcess, containers: Containers, tmp_path: Path
) -> None:
    with dnsmasq(lab.ext, lab.ext_dev, tmp_path, f"{SUBNET}.50", f"{SUBNET}.60", EXT_IP,
                 t1=3) as server:  # fmt: skip
        c1 = add_dhcp_container(lab, daemon, "c1")
        c2 = add_dhcp_container(lab, daemon, "c2")
        first = {name: wait_for_lease(daemon, name) for name in ("c1", "c2")}
        addresses = {name: str(lease["address"]) for name, lease in first.items()}
        assert addresses["c1"] != addresses["c2"]
        for name, ns in (("c1", c1), ("c2", c2)):
            assert wait_until(lambda ns=ns, name=name: f"{addresses[name]}/24" in on_netdev(ns))
            assert f"default via {EXT_IP} dev eth0" in ip(ns, "route")
        # The hairpin between the two, and the outside host.
        assert ping(c1, addresses["c2"])
        assert ping(c2, EXT_IP)
        by_mac = {lease.mac: lease for lease in server.leases()}
        for name in ("c1", "c2"):
            mac = daemon.show(name)["address"]
            assert by_mac[mac].address == addresses[name]
            assert by_mac[mac].hostname == f"host-{name}"
        link_show = json.loads(
            (resources.files("pymacvtap") / "schemas" / "link-show.schema.json").read_text()
        )
        jsonschema.Draft202012Validator(link_show).validate(daemon.show())
        text = daemon.cli("link", "show", "c1")
        assert f"dhcp hostname host-c1 lease {addresses['c1']}/24 via {EXT_IP}" in text

        # T1 of 3 s: renewed (unicast to the server), same address, later obtained.
        assert wait_until(
            lambda: float(leased(daemon, "c1")["obtained"]) > float(first["c1"]["obtained"]),  # type: ignore[arg-type, index]
            timeout=10,
        )
        assert leased(daemon, "c1")["address"] == addresses["c1"]  # type: ignore[index]
        assert "DHCPREQUEST" in server.log()

        # SIGKILL: the next daemon resumes the saved lease (INIT-REBOOT) and keeps it.
        daemon.kill()
        daemon.start()
        assert leased(daemon, "c1")["address"] == addresses["c1"]  # type: ignore[index]
        assert ping(c1, EXT_IP)
        assert wait_until(lambda: f"{addresses['c1']}/24" in on_netdev(c1))

        # link del releases the lease: dnsmasq forgets it.
        daemon.cli("link", "del", "c1")
        mac_c2 = daemon.show("c2")["address"]
        assert wait_until(lambda: len(server.leases()) == 1, timeout=5), server.log()
        assert server.leases()[0].mac == mac_c2
        assert "DHCPRELEASE" in server.log()


def test_dhcp_is_for_macvlan_endpoints(daemon: DaemonProcess) -> None:
    proc = daemon.run_cli(
        "link", "add", "link", "low0", "name", "vm0", "type", "macvtap", "frontend", "stream",
        "dhcp", "on",
    )  # fmt: skip
    assert proc.returncode != 0
    assert "dhcp: only macvlan endpoints" in proc.stderr


def test_the_guides_dhcp_example(lab: Lab, daemon: DaemonProcess, tmp_path: Path) -> None:
    """docs/containers.md's DHCP example as written, but for the lab's lower and namespace."""
    block = code_blocks("DHCP", "sh", doc="docs/containers.md")[0]
    lines = [ln.split("#")[0].strip() for ln in block.replace("\\\n", " ").splitlines()]
    shown = [ln for ln in block.splitlines() if ln.startswith("#     dhcp ")]
    assert shown, block
    with dnsmasq(lab.ext, lab.ext_dev, tmp_path, f"{SUBNET}.50", f"{SUBNET}.60", EXT_IP) as server:
        ns = ""
        for line in filter(None, lines):
            words = shlex.split(line)
            if words[:3] == ["ip", "netns", "add"]:
                ns = lab.add_netns(words[3])
            elif words[:2] == ["ip", "-n"]:
                ip(ns, *words[3:])
            elif words[:3] == ["pymacvtap", "link", "show"]:
                assert wait_until(lambda: leased(daemon, "c1") is not None, timeout=15)
                text = daemon.cli(*words[1:])
                # The guide's line, with the lease's address and expiry left open.
                pattern = re.escape(shown[0].removeprefix("#").strip())
                pattern = pattern.replace(re.escape("10.97.0.51"), r"10\.97\.0\.\d+")
                pattern = pattern.replace(re.escape("…"), r"\S+")
                assert re.search(pattern, text), text
            else:
                assert words[0] == "pymacvtap", line
                args = [
                    {"eth0": "low0", "c1": ns}.get(w, w) if prev in ("link", "netns") else w
                    for prev, w in itertools.pairwise(words)
                ]
                daemon.cli(*args)
        assert daemon.show() == []
        assert server.leases() == []
        assert "DHCPRELEASE" in server.log()
