"""The Docker network driver's logic: libnetwork's remote-driver calls, answered.

Each call of the protocol (``NetworkDriver.CreateEndpoint`` ...) is a method
taking the request's JSON object and returning the reply's.  The driver talks
to the pymacvtap daemon only through the control protocol (the CLI's verbs),
so it holds no netdev and no socket of its own: a ``network`` is a set of
options remembered in a small JSON file, an ``endpoint`` is a daemon
endpoint made at CreateEndpoint and deleted at DeleteEndpoint.

Options of ``docker network create -d pymacvtap -o KEY=VALUE`` (those of
Docker's own macvlan driver, plus ours):

* ``parent`` — the lower (required);
* ``macvlan_mode`` or ``mode`` — private, vepa, bridge (default, as Docker's macvlan),
  passthru, source;
* ``spoofchk`` — on/off (default off);
* ``dhcp`` — on/off (default off): the daemon keeps a lease from the LAN's DHCP
  server for each endpoint and puts it (and the default route) on the container's
  netdev.  It needs ``--ipam-driver null``: with Docker's default IPAM Docker would
  put an address of its own pool on the netdev too.  (Docker 20.10 has no way for
  a network driver to hand back an address it learns after CreateEndpoint, and a
  remote IPAM driver must answer RequestAddress before the container's netdev
  exists, so before any DHCP exchange could run: the null IPAM, with the address
  kept entirely by the daemon, is what works.)

At Join the endpoint's netdev is handed to Docker by name, which moves it into
the container and names it ``eth<N>``, as it does for its own macvlan driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any, Protocol

from pymacvtap.control.client import Client, ClientError, RemoteError

GENERIC = "com.docker.network.generic"  # where `-o KEY=VALUE` options arrive
MODES = ("private", "vepa", "bridge", "passthru", "source")
DEFAULT_MODE = "bridge"
DEFAULT_STATE = "/var/lib/pymacvtap-docker/networks.json"
_ON = {"on": True, "true": True, "1": True, "yes": True}
_OFF = {"off": False, "false": False, "0": False, "no": False}
KNOWN_OPTIONS = ("parent", "macvlan_mode", "mode", "spoofchk", "dhcp")
NULL_POOL = "0.0.0.0/0"  # what Docker's null IPAM driver gives as the network's pool


class DriverError(Exception):
    """A call refused; the message goes to Docker's user as it is (``{"Err": ...}``)."""


class ControlClient(Protocol):
    """What the driver needs of :class:`pymacvtap.control.client.Client`."""

    def request(self, verb: str, args: dict[str, Any] | None = None) -> Any: ...

    def close(self) -> None: ...


def endpoint_name(endpoint_id: str) -> str:
    """The daemon's NAME for a Docker endpoint: readable in `pymacvtap link show`."""
    return f"docker-{endpoint_id[:12]}"


def netdev_name(endpoint_id: str) -> str:
    """The netdev Docker moves into the container (15 characters, IFNAMSIZ - 1)."""
    return f"pmv{endpoint_id[:12]}"


def parse_options(options: dict[str, Any]) -> dict[str, Any]:
    """A network's settings from CreateNetwork's ``Options``; DriverError when wrong."""
    generic = options.get(GENERIC) or {}
    if not isinstance(generic, dict):
        raise DriverError(f"{GENERIC}: expected an object")
    unknown = sorted(set(generic) - set(KNOWN_OPTIONS))
    if unknown:
        raise DriverError(
            f"unknown option(s) {', '.join(unknown)} (pymacvtap takes {', '.join(KNOWN_OPTIONS)})"
        )
    parent = generic.get("parent")
    if not isinstance(parent, str) or not parent:
        raise DriverError("option parent is required: -o parent=IFNAME (the lower)")
    if "macvlan_mode" in generic and "mode" in generic:
        raise DriverError("give macvlan_mode or mode, not both")
    mode = str(generic.get("macvlan_mode", generic.get("mode", DEFAULT_MODE))).lower()
    if mode not in MODES:
        raise DriverError(f"mode {mode}: unknown (one of {', '.join(MODES)})")
    flags = _ON | _OFF
    settings: dict[str, Any] = {"parent": parent, "mode": mode}
    for key in ("spoofchk", "dhcp"):
        value = str(generic.get(key, "off")).lower()
        if value not in flags:
            raise DriverError(f"{key} {value}: use on or off")
        settings[key] = flags[value]
    return settings


class Store:
    """The driver's own state: networks (id → settings) and endpoints (id → network).

    Docker asks about a network long after creating it (and after either side
    restarted), so the settings are written to ``path`` on every change,
    atomically (a temporary file renamed over the old one).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.networks: dict[str, dict[str, Any]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise DriverError(f"state file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise DriverError(f"state file {path}: expected an object")
        self.networks = dict(data.get("networks") or {})
        self.endpoints = dict(data.get("endpoints") or {})

    def save(self) -> None:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".docker-", dir=directory)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"networks": self.networks, "endpoints": self.endpoints}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


class Driver:
    """libnetwork's remote driver calls; ``connect()`` gives a control client per call."""

    def __init__(self, store: Store, connect: Callable[[], ControlClient]) -> None:
        self.store = store
        self.connect = connect
        self.calls: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "Plugin.Activate": self.activate,
            "NetworkDriver.GetCapabilities": self.get_capabilities,
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": self.delete_network,
            "NetworkDriver.AllocateNetwork": self.nothing,
            "NetworkDriver.FreeNetwork": self.nothing,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.EndpointOperInfo": self.endpoint_oper_info,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": self.nothing,
            "NetworkDriver.DiscoverNew": self.nothing,
            "NetworkDriver.DiscoverDelete": self.nothing,
            "NetworkDriver.ProgramExternalConnectivity": self.nothing,
            "NetworkDriver.RevokeExternalConnectivity": self.nothing,
        }

    def handle(self, call: str, body: dict[str, Any]) -> dict[str, Any]:
        """Answer one call; KeyError for a call this driver does not know."""
        return self.calls[call](body)

    # -- the protocol --------------------------------------------------------------------

    def activate(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"Implements": ["NetworkDriver"]}

    def get_capabilities(self, body: dict[str, Any]) -> dict[str, Any]:
        # local: endpoints are netdevs of this host's daemon, nothing spans hosts.
        return {"Scope": "local", "ConnectivityScope": "local"}

    def nothing(self, body: dict[str, Any]) -> dict[str, Any]:
        return {}

    def create_network(self, body: dict[str, Any]) -> dict[str, Any]:
        network_id = _string(body, "NetworkID")
        settings = parse_options(body.get("Options") or {})
        pools = [d.get("Pool") for d in body.get("IPv4Data") or [] if isinstance(d, dict)]
        if settings["dhcp"] and any(pool not in (None, "", NULL_POOL) for pool in pools):
            raise DriverError("dhcp=on needs --ipam-driver null (the daemon keeps the address)")
        gateways = [d.get("Gateway") for d in body.get("IPv4Data") or [] if isinstance(d, dict)]
        gateway = next((g for g in gateways if isinstance(g, str) and g), None)
        settings["gateway"] = gateway.split("/")[0] if gateway else None
        self.store.networks[network_id] = settings
        self.store.save()
        return {}

    def delete_network(self, body: dict[str, Any]) -> dict[str, Any]:
        network_id = _string(body, "NetworkID")
        if self.store.networks.pop(network_id, None) is not None:
            self.store.save()
        return {}

    def create_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        network_id = _string(body, "NetworkID")
        endpoint_id = _string(body, "EndpointID")
        network = self._network(network_id)
        interface = body.get("Interface") or {}
        mac = interface.get("MacAddress") if isinstance(interface, dict) else None
        args: dict[str, Any] = {
            "name": endpoint_name(endpoint_id),
            "link": network["parent"],
            "type": "macvlan",
            "mode": network["mode"],
            "ifname": netdev_name(endpoint_id),
            "spoofchk": network["spoofchk"],
        }
        if network.get("dhcp"):
            args["dhcp"] = True
        if mac:
            args["address"] = mac
        shown = self._daemon("link.add", args)
        address = shown.get("address") if isinstance(shown, dict) else None
        self.store.endpoints[endpoint_id] = {
            "network": network_id,
            "name": args["name"],
            "address": address,
        }
        self.store.save()
        if mac or not address:
            return {}
        # Docker gave no MAC: it takes the daemon's (else it would make up its own and
        # put it on the netdev).  Only the fields Docker left empty may be answered.
        return {"Interface": {"MacAddress": address}}

    def delete_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint_id = _string(body, "EndpointID")
        try:
            self._daemon("link.del", {"name": endpoint_name(endpoint_id)})
        except DaemonRefused as exc:
            if exc.code != "ENODEV":  # already gone: deleting is idempotent
                raise
        if self.store.endpoints.pop(endpoint_id, None) is not None:
            self.store.save()
        return {}

    def endpoint_oper_info(self, body: dict[str, Any]) -> dict[str, Any]:
        endpoint_id = _string(body, "EndpointID")
        try:
            shown = self._daemon("link.show", {"name": endpoint_name(endpoint_id)})
        except DaemonRefused:
            return {"Value": {}}
        entry = shown[0] if isinstance(shown, list) and shown else {}
        keys = ("ifname", "link", "mode", "address", "operstate", "spoofchk")
        return {"Value": {k: entry[k] for k in keys if k in entry}}

    def join(self, body: dict[str, Any]) -> dict[str, Any]:
        network_id = _string(body, "NetworkID")
        endpoint_id = _string(body, "EndpointID")
        network = self._network(network_id)
        if endpoint_id not in self.store.endpoints:
            raise DriverError(f"endpoint {endpoint_id[:12]}: not created by this driver")
        reply: dict[str, Any] = {
            "InterfaceName": {"SrcName": netdev_name(endpoint_id), "DstPrefix": "eth"},
        }
        if network.get("gateway") and not network.get("dhcp"):
            reply["Gateway"] = network["gateway"]
        return reply

    # -- helpers -------------------------------------------------------------------------

    def _network(self, network_id: str) -> dict[str, Any]:
        network = self.store.networks.get(network_id)
        if network is None:
            raise DriverError(f"network {network_id[:12]}: unknown to the pymacvtap driver")
        return network

    def _daemon(self, verb: str, args: dict[str, Any]) -> Any:
        try:
            client = self.connect()
        except ClientError as exc:
            raise DriverError(str(exc)) from None
        try:
            return client.request(verb, args)
        except RemoteError as exc:
            raise DaemonRefused(exc.code, exc.message) from None
        except ClientError as exc:
            raise DriverError(str(exc)) from None
        finally:
            client.close()


class DaemonRefused(DriverError):
    """The daemon said no: ``code`` is its errno name (ENODEV, EADDRINUSE ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise DriverError(f"{key}: a non-empty string is required")
    return value


def control_client(path: str | None, timeout: float = 30.0) -> Callable[[], ControlClient]:
    """A connector to the daemon's control socket (``path``, else the usual one)."""
    return lambda: Client(path, timeout=timeout)
