"""The Docker driver's calls against a fake daemon, and its HTTP server on a Unix socket."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pymacvtap.control.client import ClientError, RemoteError
from pymacvtap.docker.driver import (
    GENERIC,
    Driver,
    DriverError,
    Store,
    endpoint_name,
    netdev_name,
    parse_options,
)
from pymacvtap.docker.server import PluginServer

REPO = Path(__file__).resolve().parents[2]
NET = "n" * 64
EP = "e1" * 32
MAC = "02:42:c0:a8:00:05"


class FakeDaemon:
    """The control client's two methods; refuses what ``refuse`` says (verb → error)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.refuse: dict[str, Exception] = {}
        self.closed = 0

    def request(self, verb: str, args: dict[str, Any] | None = None) -> Any:
        self.requests.append((verb, dict(args or {})))
        if verb in self.refuse:
            raise self.refuse[verb]
        if verb == "link.add":
            return {"ifname": args and args["name"], "address": (args or {}).get("address", MAC)}
        if verb == "link.show":
            return [{"ifname": "x", "mode": "bridge", "operstate": "UP", "netns": None}]
        return None

    def close(self) -> None:
        self.closed += 1


@pytest.fixture
def daemon() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
def driver(tmp_path: Path, daemon: FakeDaemon) -> Driver:
    return Driver(Store(str(tmp_path / "state" / "docker.json")), lambda: daemon)


def create_network(driver: Driver, **options: str) -> None:
    driver.handle(
        "NetworkDriver.CreateNetwork",
        {
            "NetworkID": NET,
            "Options": {GENERIC: {"parent": "eth0", **options}, "com.docker.network.mtu": ""},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Pool": "192.0.2.0/24",
                          "Gateway": "192.0.2.1/24"}],
        },
    )  # fmt: skip


def test_handshake_and_capabilities(driver: Driver) -> None:
    assert driver.handle("Plugin.Activate", {}) == {"Implements": ["NetworkDriver"]}
    assert driver.handle("NetworkDriver.GetCapabilities", {})["Scope"] == "local"


@pytest.mark.parametrize(
    ("options", "settings"),
    [
        ({"parent": "eth0"}, {"parent": "eth0", "mode": "bridge", "spoofchk": False}),
        ({"parent": "eth0", "macvlan_mode": "vepa"}, {"mode": "vepa"}),
        ({"parent": "eth0", "mode": "PRIVATE"}, {"mode": "private"}),
        ({"parent": "eth0", "spoofchk": "on"}, {"spoofchk": True}),
    ],
)
def test_network_options(options: dict[str, str], settings: dict[str, Any]) -> None:
    parsed = parse_options({GENERIC: options})
    assert parsed == parsed | settings


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "option parent is required"),
        ({"parent": "eth0", "mode": "vepa", "macvlan_mode": "bridge"}, "not both"),
        ({"parent": "eth0", "mode": "hairpin"}, "mode hairpin: unknown"),
        ({"parent": "eth0", "spoofchk": "maybe"}, "spoofchk maybe"),
        ({"parent": "eth0", "ipvlan_mode": "l2"}, "unknown option(s) ipvlan_mode"),
    ],
)
def test_bad_network_options_are_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(DriverError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_options({GENERIC: options})


def test_endpoint_life(driver: Driver, daemon: FakeDaemon, tmp_path: Path) -> None:
    create_network(driver, macvlan_mode="vepa", spoofchk="on")
    reply = driver.handle(
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": EP, "Interface": {}, "Options": {}},
    )
    assert reply == {"Interface": {"MacAddress": MAC}}  # the daemon's choice, told to Docker
    assert daemon.requests == [
        (
            "link.add",
            {
                "name": endpoint_name(EP),
                "link": "eth0",
                "type": "macvlan",
                "mode": "vepa",
                "ifname": netdev_name(EP),
                "spoofchk": True,
            },
        )
    ]
    assert len(netdev_name(EP)) == 15

    joined = driver.handle(
        "NetworkDriver.Join",
        {"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/var/run/docker/netns/x"},
    )
    assert joined == {
        "InterfaceName": {"SrcName": netdev_name(EP), "DstPrefix": "eth"},
        "Gateway": "192.0.2.1",
    }
    info = driver.handle("NetworkDriver.EndpointOperInfo", {"NetworkID": NET, "EndpointID": EP})
    assert info["Value"]["operstate"] == "UP"
    assert driver.handle("NetworkDriver.Leave", {"NetworkID": NET, "EndpointID": EP}) == {}

    # Restart of the driver: what it knew comes back from its state file.
    again = Driver(Store(driver.store.path), lambda: daemon)
    assert again.store.endpoints == {
        EP: {"network": NET, "name": endpoint_name(EP), "address": MAC}
    }
    assert again.handle("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP})

    again.handle("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})
    assert daemon.requests[-1] == ("link.del", {"name": endpoint_name(EP)})
    again.handle("NetworkDriver.DeleteNetwork", {"NetworkID": NET})
    assert json.loads(Path(driver.store.path).read_text()) == {"networks": {}, "endpoints": {}}
    assert daemon.closed == len(daemon.requests)  # one connection per call, closed


def test_docker_given_mac_goes_to_the_daemon_and_nothing_comes_back(
    driver: Driver, daemon: FakeDaemon
) -> None:
    create_network(driver)
    reply = driver.handle(
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": EP,
         "Interface": {"Address": "192.0.2.5/24", "MacAddress": "02:00:00:00:00:07"}},
    )  # fmt: skip
    assert reply == {}
    assert daemon.requests[0][1]["address"] == "02:00:00:00:00:07"


def test_with_docker_ipam_only_the_mac_is_answered(driver: Driver, daemon: FakeDaemon) -> None:
    # What dockerd 20.10 sends: the address from its IPAM, the MAC left empty.
    create_network(driver)
    reply = driver.handle(
        "NetworkDriver.CreateEndpoint",
        {"NetworkID": NET, "EndpointID": EP,
         "Interface": {"Address": "192.0.2.5/24", "AddressIPv6": "", "MacAddress": ""}},
    )  # fmt: skip
    assert reply == {"Interface": {"MacAddress": MAC}}
    assert "address" not in daemon.requests[0][1]


def test_daemon_refusal_reaches_docker_and_nothing_is_recorded(
    driver: Driver, daemon: FakeDaemon
) -> None:
    create_network(driver)
    daemon.refuse["link.add"] = RemoteError(
        "ENODEV", "link add docker-x: link eth0: no such device"
    )
    with pytest.raises(DriverError, match="no such device"):
        driver.handle("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP})
    assert driver.store.endpoints == {}


def test_unreachable_daemon_is_a_clear_error(tmp_path: Path) -> None:
    def connect() -> FakeDaemon:
        raise ClientError("cannot reach the daemon at /x: No such file or directory")

    driver = Driver(Store(str(tmp_path / "s.json")), connect)
    create_network(driver)
    with pytest.raises(DriverError, match="cannot reach the daemon"):
        driver.handle("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP})


def test_delete_of_an_endpoint_already_gone_succeeds(driver: Driver, daemon: FakeDaemon) -> None:
    daemon.refuse["link.del"] = RemoteError("ENODEV", "link del docker-x: no such endpoint")
    assert driver.handle("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP}) == {}
    daemon.refuse["link.del"] = RemoteError("EPERM", "link del docker-x: not allowed")
    with pytest.raises(DriverError, match="not allowed"):
        driver.handle("NetworkDriver.DeleteEndpoint", {"NetworkID": NET, "EndpointID": EP})


def test_calls_on_unknown_networks_or_endpoints_are_refused(driver: Driver) -> None:
    with pytest.raises(DriverError, match="unknown to the pymacvtap driver"):
        driver.handle("NetworkDriver.CreateEndpoint", {"NetworkID": NET, "EndpointID": EP})
    create_network(driver)
    with pytest.raises(DriverError, match="not created by this driver"):
        driver.handle("NetworkDriver.Join", {"NetworkID": NET, "EndpointID": EP})
    with pytest.raises(DriverError, match="NetworkID"):
        driver.handle("NetworkDriver.CreateNetwork", {"NetworkID": 5})


def test_corrupt_state_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(DriverError, match="state file"):
        Store(str(path))


# -- the HTTP server ---------------------------------------------------------------------


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


@pytest.fixture
def server(tmp_path: Path, driver: Driver) -> Iterator[str]:
    path = str(tmp_path / "plugins" / "pymacvtap.sock")
    srv = PluginServer(path, driver)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def post(path: str, call: str, body: bytes | None = None) -> tuple[int, Any]:
    conn = UnixHTTPConnection(path)
    try:
        conn.request("POST", f"/{call}", body=body or b"")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_server_speaks_the_plugin_protocol(server: str, daemon: FakeDaemon) -> None:
    assert post(server, "Plugin.Activate") == (200, {"Implements": ["NetworkDriver"]})
    body = {"NetworkID": NET, "Options": {GENERIC: {"parent": "eth0"}}, "IPv4Data": []}
    assert post(server, "NetworkDriver.CreateNetwork", json.dumps(body).encode()) == (200, {})
    status, reply = post(server, "NetworkDriver.CreateNetwork", b'{"NetworkID": "x"}')
    assert status == 500 and "option parent is required" in reply["Err"]
    status, reply = post(server, "NetworkDriver.Frobnicate", b"{}")
    assert status == 404 and "Err" in reply
    status, reply = post(server, "NetworkDriver.Join", b"[1")
    assert status == 400 and "not JSON" in reply["Err"]


# -- packaging -------------------------------------------------------------------------


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = (REPO / "packaging" / "pymacvtap-docker.service").read_text()
    command = Path(sys.executable).parent / "pymacvtap-docker"
    assert "ExecStart=/usr/local/bin/pymacvtap-docker " in unit
    unit = unit.replace("/usr/local/bin/pymacvtap-docker", str(command))
    (tmp_path / "pymacvtap-docker.service").write_text(unit)
    # The unit it needs, as a stub: only this unit is under test.
    (tmp_path / "pymacvtap.service").write_text("[Service]\nExecStart=/bin/true\n")
    (tmp_path / "man" / "man8").mkdir(parents=True)  # Documentation=man:pymacvtap(8)
    shutil.copy(REPO / "packaging" / "pymacvtap.8", tmp_path / "man" / "man8")
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "pymacvtap-docker.service")],
        capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, "MANPATH": str(tmp_path / "man")},
    )  # fmt: skip
    problems = [line for line in proc.stderr.splitlines() if "pymacvtap-docker.service" in line]
    assert proc.returncode == 0 and problems == [], proc.stderr
