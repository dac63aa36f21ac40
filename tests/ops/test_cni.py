"""pymacvtap-cni driven as a runtime drives a CNI plugin, with the reference host-local IPAM.

The plugin is exec'd from a CNI_PATH directory next to Debian's host-local
(containernetworking-plugins), with the CNI environment and the network
configuration on stdin; the daemon is real, the namespaces are made as
runtimes make them (`ip netns add`, an unshare'd process).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, ip, ip_json
from lab.daemon import DaemonProcess
from lab.dnsmasq import dnsmasq
from lab.fixtures import EXT_IP, SUBNET
from lab.readme import code_blocks
from pymacvtap.cni import SUPPORTED_VERSIONS, endpoint_name

HOST_LOCAL = "/usr/lib/cni/host-local"  # Debian's containernetworking-plugins
PLUGIN = "pymacvtap-cni"


@pytest.fixture
def cni_path(tmp_path: Path) -> Path:
    """A CNI_PATH with our plugin (as an executable) and the reference host-local."""
    assert os.access(HOST_LOCAL, os.X_OK), "apt install containernetworking-plugins"
    bindir = tmp_path / "cni-bin"
    bindir.mkdir()
    script = bindir / PLUGIN
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m pymacvtap.cni "$@"\n')
    script.chmod(0o755)
    (bindir / "host-local").symlink_to(HOST_LOCAL)
    return bindir


class Cni:
    def __init__(self, path: Path, daemon: DaemonProcess, data_dir: Path) -> None:
        self.path = path
        self.daemon = daemon
        self.data_dir = data_dir

    def config(self, version: str = "1.0.0", *, ipam: bool = True, **keys: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": version,
            "name": "pmvtnet",
            "type": PLUGIN,
            "master": "low0",
            "socket": str(self.daemon.socket),
            **keys,
        }
        if ipam:
            conf["ipam"] = {
                "type": "host-local",
                "ranges": [[{"subnet": f"{SUBNET}.0/24", "rangeStart": f"{SUBNET}.50",
                             "rangeEnd": f"{SUBNET}.59", "gateway": EXT_IP}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": f"{SUBNET}.1"}],
                "dataDir": str(self.data_dir),
            }  # fmt: skip
        return conf

    def run(
        self,
        command: str,
        conf: dict[str, Any] | None,
        *,
        container: str = "",
        netns: str = "",
        ifname: str = "eth0",
        args: str = "",
    ) -> tuple[int, Any]:
        env = {
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_ARGS": args,
            "CNI_PATH": str(self.path),
        }
        proc = subprocess.run(
            [str(self.path / PLUGIN)],
            input=json.dumps(conf).encode() if conf is not None else b"",
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
            cwd="/",
        )
        out = proc.stdout.decode().strip()
        return proc.returncode, json.loads(out) if out else None

    def ok(self, command: str, conf: dict[str, Any], **kw: str) -> Any:
        status, out = self.run(command, conf, **kw)
        assert status == 0, out
        return out


@pytest.fixture
def cni(cni_path: Path, daemon: DaemonProcess, tmp_path: Path) -> Cni:
    return Cni(cni_path, daemon, tmp_path / "ipam")


def ping(netns_path: str, address: str) -> bool:
    proc = subprocess.run(
        ["nsenter", f"--net={netns_path}", "ping", "-c", "2", "-i", "0.2", "-W", "1", address],
        capture_output=True,
        check=False,
    )
    return proc.returncode == 0


def test_two_containers_with_eth0_add_ping_check_del(
    lab: Lab, daemon: DaemonProcess, cni: Cni, sleeper_netns: Callable[[], str]
) -> None:
    ns1 = f"/run/netns/{lab.add_netns('c1')}"  # as `ip netns add` makes it
    ns2 = sleeper_netns()  # as a runtime's sandbox process has it
    conf = cni.config()
    r1 = cni.ok("ADD", conf, container="ctr-one-0123456789abcdef", netns=ns1)
    r2 = cni.ok("ADD", conf, container="ctr-two-0123456789abcdef", netns=ns2)

    # The result: the container's interface, its address from host-local, routes.
    assert r1["cniVersion"] == "1.0.0"
    assert r1["interfaces"] == [{"name": "eth0", "mac": r1["interfaces"][0]["mac"], "sandbox": ns1}]
    assert r1["ips"] == [{"address": f"{SUBNET}.50/24", "gateway": EXT_IP, "interface": 0}]
    assert r2["ips"][0]["address"] == f"{SUBNET}.51/24"
    assert {"dst": "0.0.0.0/0"} in r1["routes"]
    assert "dns" in r1

    # The daemon's endpoints: named per container, eth0 in each netns, default mode bridge.
    shown = {e["ifname"]: e for e in daemon.show()}
    name1 = endpoint_name("ctr-one-0123456789abcdef", "eth0")
    assert set(shown) == {name1, endpoint_name("ctr-two-0123456789abcdef", "eth0")}
    assert shown[name1]["netns"] == ns1
    assert shown[name1]["netdev"] == "eth0"
    assert shown[name1]["mode"] == "bridge"
    assert shown[name1]["operstate"] == "UP"
    assert shown[name1]["address"] == r1["interfaces"][0]["mac"]

    # Inside the container: the address, the routes (default via the ipam gateway).
    with_ns = ["nsenter", f"--net={ns2}", "ip", "-j"]
    addrs = json.loads(subprocess.check_output([*with_ns, "addr", "show", "dev", "eth0"]))
    assert addrs[0]["address"] == r2["interfaces"][0]["mac"]
    assert f"{SUBNET}.51" in [a["local"] for a in addrs[0]["addr_info"]]
    routes = json.loads(subprocess.check_output([*with_ns, "route", "show"]))
    assert {"dst": "default", "gateway": EXT_IP, "dev": "eth0"}.items() <= routes[0].items()
    assert any(r["dst"] == "192.0.2.0/24" and r.get("gateway") == f"{SUBNET}.1" for r in routes)

    # Traffic: container to container (bridge mode, inside the daemon) and to the outside.
    assert ping(ns1, f"{SUBNET}.51")
    assert ping(ns2, f"{SUBNET}.50")
    assert ping(ns1, EXT_IP)

    # CHECK against prevResult passes; after the address is removed it fails.
    check1 = dict(conf, prevResult=r1)
    assert cni.run("CHECK", check1, container="ctr-one-0123456789abcdef", netns=ns1) == (0, None)
    ip(lab.namespaces[-1], "addr", "del", f"{SUBNET}.50/24", "dev", "eth0")
    status, err = cni.run("CHECK", check1, container="ctr-one-0123456789abcdef", netns=ns1)
    assert status != 0
    assert err["code"] == 101 and f"{SUBNET}.50/24 missing" in err["msg"]
    # CHECK of a container that was never added: the daemon has no such endpoint.
    status, err = cni.run("CHECK", check1, container="nobody", netns=ns1)
    assert status != 0 and err["details"] == "ENODEV"

    # DEL: endpoint and lease gone; DEL again (and with the netns gone) still succeeds.
    for _ in range(2):
        assert cni.run("DEL", conf, container="ctr-one-0123456789abcdef", netns=ns1) == (0, None)
    assert name1 not in {e["ifname"] for e in daemon.show()}
    assert not (cni.data_dir / "pmvtnet" / f"{SUBNET}.50").exists()
    assert (cni.data_dir / "pmvtnet" / f"{SUBNET}.51").exists()
    assert ip_json(lab.namespaces[-1], "link", "show", "dev", "lo")  # the netns itself stays
    assert "eth0" not in ip(lab.namespaces[-1], "link", "show")
    assert cni.run("DEL", conf, container="ctr-two-0123456789abcdef", netns="") == (0, None)
    assert daemon.show() == []
    assert cni.run("DEL", conf, container="ctr-two-0123456789abcdef", netns="") == (0, None)


def test_vepa_l2_only_mac_and_mtu_from_runtime_config_and_cni_args(
    lab: Lab, daemon: DaemonProcess, cni: Cni
) -> None:
    ns1 = f"/run/netns/{lab.add_netns('v1')}"
    ns2 = f"/run/netns/{lab.add_netns('v2')}"
    conf = cni.config("0.4.0", ipam=False, mode="vepa", mtu=1400, mac="02:00:00:00:aa:00")
    r1 = cni.ok(
        "ADD",
        dict(conf, runtimeConfig={"mac": "02:00:00:00:AA:01"}),
        container="v1",
        netns=ns1,
        args="IgnoreUnknown=1;MAC=02:00:00:00:aa:09",
    )
    r2 = cni.ok("ADD", conf, container="v2", netns=ns2, args="MAC=02:00:00:00:aa:02")
    assert r1["cniVersion"] == "0.4.0"
    assert r1["interfaces"][0]["mac"] == "02:00:00:00:aa:01"  # runtimeConfig first
    assert r2["interfaces"][0]["mac"] == "02:00:00:00:aa:02"  # then CNI_ARGS, then "mac"
    assert r1["ips"] == []  # L2 only: no ipam
    entry = daemon.show(endpoint_name("v1", "eth0"))
    assert (entry["mode"], entry["mtu"], entry["operstate"]) == ("vepa", 1400, "UP")
    link = ip_json(lab.namespaces[-2], "link", "show", "dev", "eth0")[0]
    assert link["mtu"] == 1400 and "UP" in link["flags"]
    # VEPA: container to container only through the hairpin switch port.
    ip(lab.namespaces[-2], "addr", "add", "192.168.77.1/24", "dev", "eth0")
    ip(lab.namespaces[-1], "addr", "add", "192.168.77.2/24", "dev", "eth0")
    assert ping(ns1, "192.168.77.2")
    lab.set_hairpin("low0", False)
    assert not ping(ns1, "192.168.77.2")
    lab.set_hairpin("low0", True)
    check = dict(conf, prevResult=r2)
    assert cni.run("CHECK", check, container="v2", netns=ns2) == (0, None)
    # A MAC changed behind the plugin's back fails CHECK.
    ip(lab.namespaces[-1], "link", "set", "eth0", "address", "02:00:00:00:aa:03")
    status, err = cni.run("CHECK", check, container="v2", netns=ns2)
    assert status == 1 and "address" in err["msg"]


def test_versions_ip_version_field_and_errors(lab: Lab, daemon: DaemonProcess, cni: Cni) -> None:
    status, out = cni.run("VERSION", {"cniVersion": "1.0.0"})
    assert status == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED_VERSIONS)}
    assert SUPPORTED_VERSIONS == ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
    ns = f"/run/netns/{lab.add_netns('e1')}"

    # 0.3.1 results name each address's IP version.
    r = cni.ok("ADD", cni.config("0.3.1"), container="old", netns=ns)
    assert r["cniVersion"] == "0.3.1"
    assert r["ips"][0]["version"] == "4" and r["ips"][0]["interface"] == 0
    status, err = cni.run("CHECK", dict(cni.config("0.3.1"), prevResult=r), container="old",
                          netns=ns)  # fmt: skip
    assert status == 1 and err["code"] == 1  # CHECK needs 0.4.0 or later
    assert cni.run("DEL", cni.config("0.3.1"), container="old", netns=ns) == (0, None)

    # The same attachment twice is an error; the first stays intact.
    cni.ok("ADD", cni.config(), container="dup", netns=ns)
    status, err = cni.run("ADD", cni.config(), container="dup", netns=ns)
    assert status == 1 and err["details"] == "EEXIST"
    assert len(daemon.show()) == 1
    cni.ok("DEL", cni.config(), container="dup", netns=ns)

    def error(command: str, conf: Any, **kw: str) -> dict[str, Any]:
        status, err = cni.run(command, conf, **kw)
        assert status != 0, err
        assert set(err) >= {"cniVersion", "code", "msg"}
        return dict(err)

    assert error("ADD", cni.config("0.2.0"), container="x", netns=ns)["code"] == 1
    assert error("ADD", None, container="x", netns=ns)["code"] == 6
    assert error("ADD", cni.config(), container="x", netns="/run/netns/none")["code"] == 3
    assert error("ADD", cni.config(), container="", netns=ns)["code"] == 4
    assert error("ADD", cni.config(), container="x", netns=ns, ifname="a/b")["code"] == 4
    assert error("ADD", cni.config(mode="sideways"), container="x", netns=ns)["code"] == 7
    assert error("FROB", cni.config(), container="x", netns=ns)["code"] == 4
    err = error("ADD", cni.config(master="nosuch0"), container="x", netns=ns)
    assert err["code"] == 100 and err["details"] == "ENODEV" and "nosuch0" in err["msg"]
    err = error("ADD", cni.config(socket="/nonexistent.sock"), container="x", netns=ns)
    assert err["code"] == 11
    err = error("STATUS", cni.config("1.1.0", socket="/nonexistent.sock"))
    assert err["code"] == 50
    assert cni.run("STATUS", cni.config("1.1.0")) == (0, None)

    # IPAM failing after the endpoint exists: the endpoint is removed again.
    broken = cni.config()
    broken["ipam"]["ranges"] = [[{"subnet": "not-a-subnet"}]]
    err = error("ADD", broken, container="x", netns=ns)
    assert "ipam host-local ADD" in err["msg"]
    assert daemon.show() == []
    assert error("ADD", cni.config(ipam=False) | {"ipam": {"type": "nosuch"}}, container="x",
                 netns=ns)["code"] == 7  # fmt: skip
    assert daemon.show() == []


def test_the_documented_example_adds_and_deletes_a_container(
    lab: Lab, daemon: DaemonProcess, cni: Cni, tmp_path: Path
) -> None:
    """The example of docs/cni.md, run as written but for the paths only a test changes:
    CNI_PATH, the configuration file, the namespace, the lower and the daemon's socket."""
    [block] = code_blocks("Adding a container by hand", "sh", doc="docs/cni.md")
    m = re.search(r"<<'JSON'\n(.*?\n)JSON\n", block, re.DOTALL)
    assert m, block
    conf = json.loads(m[1])
    assert (conf["type"], conf["mode"], conf["master"]) == (PLUGIN, "bridge", "eth0")
    conf_file = tmp_path / "10-pmvt.conf"
    conf_file.write_text(
        json.dumps(
            dict(
                conf,
                master="low0",
                socket=str(daemon.socket),
                ipam=dict(conf["ipam"], dataDir=str(cni.data_dir)),
            )
        )
    )
    netns = f"/run/netns/{lab.add_netns('ctr1')}"
    replaced = {
        "/usr/lib/cni": str(cni.path),
        "/etc/cni/net.d/10-pmvt.conf": str(conf_file),
        "/run/netns/ctr1": netns,
    }
    text = block.replace("\\\n", " ")
    for old, new in replaced.items():
        text = text.replace(old, new)
    commands = [ln for ln in text.splitlines() if ln.startswith("CNI_COMMAND=")]
    assert [c.split()[0] for c in commands] == ["CNI_COMMAND=ADD", "CNI_COMMAND=DEL"]

    def run(command: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": f"{cni.path}:{os.environ['PATH']}"}
        return subprocess.run(
            ["sh", "-c", command], env=env, capture_output=True, text=True, timeout=60, cwd="/"
        )

    added = run(commands[0])
    assert added.returncode == 0, added.stdout + added.stderr
    result = json.loads(added.stdout)
    # What the guide says comes back.
    shown = re.search(r'"ips": (\[.*?\])', block)
    assert shown, block
    assert result["ips"] == json.loads(shown[1])
    assert result["interfaces"][0]["name"] == "eth0"
    assert result["interfaces"][0]["sandbox"] == netns
    assert ping(netns, EXT_IP)  # the route to the gateway the ipam section gives
    deleted = run(commands[1])
    assert (deleted.returncode, deleted.stdout) == (0, ""), deleted.stderr
    assert daemon.show() == []


def test_dhcp_ipam_returns_the_daemons_lease(
    lab: Lab, daemon: DaemonProcess, cni: Cni, tmp_path: Path
) -> None:
    """``"ipam": {"type": "pymacvtap-dhcp"}``: no IPAM plugin; the daemon's lease comes back
    in the result (on the netdev already), and DEL releases it."""
    conf = cni.config(ipam=False, mode="vepa")
    conf["ipam"] = {"type": "pymacvtap-dhcp"}
    with dnsmasq(lab.ext, lab.ext_dev, tmp_path, f"{SUBNET}.50", f"{SUBNET}.60", EXT_IP) as server:
        results = {}
        for pod in ("pod1", "pod2"):
            ns = f"/run/netns/{lab.add_netns(pod)}"
            out = cni.ok("ADD", conf, container=f"id-{pod}", netns=ns,
                         args=f"IgnoreUnknown=1;K8S_POD_NAME={pod}")  # fmt: skip
            (entry,) = out["ips"]
            assert entry["gateway"] == EXT_IP
            assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": EXT_IP}]
            results[pod] = (ns, entry["address"].split("/")[0])
        assert results["pod1"][1] != results["pod2"][1]
        assert ping(results["pod1"][0], results["pod2"][1])
        assert ping(results["pod2"][0], EXT_IP)
        assert {lease.hostname for lease in server.leases()} == {"pod1", "pod2"}
        for pod, (ns, _) in results.items():
            cni.ok("DEL", conf, container=f"id-{pod}", netns=ns)
        assert daemon.show() == []
        assert server.leases() == []
