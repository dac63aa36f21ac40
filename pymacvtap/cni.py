"""``pymacvtap-cni``: a CNI plugin giving containers pymacvtap macvlan endpoints.

The runtime (containerd, CRI-O, podman, ``cnitool``) executes this program as
``$CNI_PATH/<type>`` with the CNI environment (``CNI_COMMAND``,
``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_PATH``)
and the network configuration as JSON on stdin.  It speaks CNI 0.3.0 to 1.1.0
and takes the keys of the reference ``macvlan`` plugin::

    {
      "cniVersion": "1.0.0",
      "name": "mynet",
      "type": "pymacvtap-cni",
      "master": "eth0",                    # the lower; default: the default route's device
      "mode": "bridge",                    # private | vepa | bridge (default) | passthru | source
      "mtu": 1500,                         # optional, 0 = the lower's
      "mac": "02:00:00:00:00:01",          # optional; also runtimeConfig.mac, CNI_ARGS MAC=
      "ipam": {"type": "host-local", ...}, # optional; without it the link is L2 only
                                           # {"type": "pymacvtap-dhcp"}: the daemon keeps
                                           # a lease from the LAN's DHCP server (no plugin)
      "socket": "/run/pymacvtap/control.sock"   # optional; else $PYMACVTAP_SOCKET, the default
    }

ADD asks the daemon for a macvlan endpoint named after the container ID and
``CNI_IFNAME`` (so every container may have its ``eth0``), living in
``CNI_NETNS`` as ``CNI_IFNAME`` and up; then runs the IPAM plugin the way
libcni does (``$CNI_PATH/<ipam.type>``, same environment, same stdin) and puts
the addresses and routes it returns on the interface.  With the IPAM type
``pymacvtap-dhcp`` there is no IPAM plugin: the endpoint is made with ``dhcp
on`` (host name: CNI_ARGS K8S_POD_NAME, which Podman sets to the container's
name) and ADD waits for the daemon's lease and returns it.  DEL undoes it and
succeeds when there is nothing left to undo.  CHECK compares the endpoint with
``prevResult``.

Only the standard library, the control client and (to configure addresses
inside the container's namespace) pyroute2 are used, imported when needed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from pymacvtap.control.client import Client, ClientError, RemoteError
from pymacvtap.io.netns import entered

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
MODES = ("private", "vepa", "bridge", "passthru", "source")
REQUEST_TIMEOUT = 60.0
DHCP_IPAM = "pymacvtap-dhcp"  # the IPAM type under which the daemon keeps a DHCP lease
DHCP_WAIT = 30.0  # seconds ADD waits for the lease (ipam "timeout" overrides)
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")

# Error codes of the CNI specification ("Error" section); 100+ are this plugin's own.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50  # STATUS: the plugin cannot serve ADD now
ERR_DAEMON = 100  # the daemon refused the request (details: its errno name)
ERR_CHECK = 101  # CHECK found the attachment different from prevResult

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$")


class CniError(Exception):
    """An error result: ``{"code", "msg", "details"}`` on stdout and exit status 1."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


# -- naming ---------------------------------------------------------------------------


def endpoint_name(container_id: str, ifname: str) -> str:
    """The daemon's endpoint NAME for the attachment (container ID, interface).

    ``cni-<first 12 of the ID>-<ifname>-<10 hex of a hash of both>``: at most
    43 characters of ``[A-Za-z0-9_.-]``, readable in ``pymacvtap link show``,
    distinct for every attachment (the hash), the same on every call (DEL,
    CHECK find what ADD made).
    """
    digest = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()[:10]
    return f"cni-{_SAFE.sub('_', container_id[:12])}-{_SAFE.sub('_', ifname[:15])}-{digest}"


# -- the invocation ----------------------------------------------------------------------


class Invocation:
    """The environment and the network configuration of one call."""

    def __init__(self, env: dict[str, str], stdin: bytes) -> None:
        self.env = env
        self.stdin = stdin
        self.command = env.get("CNI_COMMAND", "")
        self.container_id = env.get("CNI_CONTAINERID", "")
        self.netns = env.get("CNI_NETNS", "")
        self.ifname = env.get("CNI_IFNAME", "")
        self.path = env.get("CNI_PATH", "")
        self.args = _parse_cni_args(env.get("CNI_ARGS", ""))
        self.conf: dict[str, Any] = {}
        self.version = LATEST

    def load_config(self) -> None:
        try:
            conf = json.loads(self.stdin or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise CniError(ERR_DECODE, f"network configuration: not JSON: {exc}") from None
        if not isinstance(conf, dict):
            raise CniError(ERR_DECODE, "network configuration: expected a JSON object")
        self.conf = conf
        version = conf.get("cniVersion", "0.1.0")
        if version not in SUPPORTED_VERSIONS:
            raise CniError(
                ERR_INCOMPATIBLE_VERSION,
                f"incompatible CNI versions: config is {version!r}, plugin supports "
                f"{', '.join(SUPPORTED_VERSIONS)}",
            )
        self.version = str(version)
        for key in ("name", "type"):
            if not isinstance(conf.get(key), str) or not conf[key]:
                raise CniError(ERR_INVALID_CONFIG, f"network configuration: {key!r} required")

    def require(self, *names: str) -> None:
        for name in names:
            if not self.env.get(name):
                raise CniError(ERR_INVALID_ENV, f"{name} is required for {self.command}")
        if "CNI_IFNAME" in names and not _IFNAME.match(self.ifname):
            raise CniError(ERR_INVALID_ENV, f"CNI_IFNAME {self.ifname!r}: not an interface name")

    @property
    def name(self) -> str:
        return endpoint_name(self.container_id, self.ifname)

    @property
    def mode(self) -> str:
        mode = self.conf.get("mode") or "bridge"
        if mode not in MODES:
            raise CniError(
                ERR_INVALID_CONFIG, f"mode {mode!r}: unknown (one of {', '.join(MODES)})"
            )
        return str(mode)

    @property
    def mac(self) -> str | None:
        """runtimeConfig.mac, else CNI_ARGS MAC=, else the config's mac (as the reference)."""
        runtime = self.conf.get("runtimeConfig") or {}
        mac = (runtime.get("mac") if isinstance(runtime, dict) else None) or self.args.get("MAC")
        mac = mac or self.conf.get("mac")
        if mac is None or mac == "":
            return None
        if not isinstance(mac, str) or not _MAC.match(mac):
            raise CniError(ERR_INVALID_CONFIG, f"mac {mac!r}: not a MAC address")
        return mac.lower()

    @property
    def mtu(self) -> int | None:
        mtu = self.conf.get("mtu", 0)
        if not isinstance(mtu, int) or isinstance(mtu, bool) or mtu < 0:
            raise CniError(ERR_INVALID_CONFIG, f"mtu {mtu!r}: must be 0 or a positive number")
        return mtu or None

    @property
    def dhcp(self) -> bool:
        """IPAM by the daemon's DHCP (no IPAM plugin to run)."""
        ipam = self.ipam
        return ipam is not None and ipam["type"] == DHCP_IPAM

    @property
    def ipam(self) -> dict[str, Any] | None:
        ipam = self.conf.get("ipam")
        if not ipam:
            return None
        if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str):
            raise CniError(ERR_INVALID_CONFIG, "ipam: an object with a 'type' is required")
        return ipam

    def master(self) -> str:
        master = self.conf.get("master")
        if master:
            if not isinstance(master, str) or not _IFNAME.match(master):
                raise CniError(ERR_INVALID_CONFIG, f"master {master!r}: not an interface name")
            return master
        found = _default_route_device()
        if found is None:
            raise CniError(ERR_INVALID_CONFIG, "master: not given and there is no default route")
        return found

    def client(self) -> Client:
        path = self.conf.get("socket")
        if path is not None and not isinstance(path, str):
            raise CniError(ERR_INVALID_CONFIG, "socket: must be a path")
        try:
            return Client(path, timeout=REQUEST_TIMEOUT)
        except ClientError as exc:
            raise CniError(ERR_TRY_AGAIN, str(exc)) from None


def _parse_cni_args(text: str) -> dict[str, str]:
    args: dict[str, str] = {}
    for item in text.split(";"):
        key, eq, value = item.partition("=")
        if eq and key.strip():
            args[key.strip()] = value.strip()
    return args


def _default_route_device() -> str | None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=socket.AF_INET):
            oif = route.get("RTA_OIF") or route.get("oif")
            if oif:
                return str(ipr.link("get", index=int(oif))[0].get("ifname"))
    return None


# -- the daemon --------------------------------------------------------------------------


def _daemon(inv: Invocation, verb: str, args: dict[str, Any]) -> Any:
    with inv.client() as client:
        try:
            return client.request(verb, args)
        except RemoteError as exc:
            raise CniError(ERR_DAEMON, exc.message, exc.code) from None
        except ClientError as exc:
            raise CniError(ERR_TRY_AGAIN, str(exc)) from None


# -- IPAM delegation ------------------------------------------------------------------


def _find_plugin(inv: Invocation, plugin: str) -> str:
    if "/" in plugin:
        raise CniError(ERR_INVALID_CONFIG, f"ipam type {plugin!r}: not a plugin name")
    for directory in inv.path.split(os.pathsep):
        candidate = os.path.join(directory, plugin)
        if directory and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(ERR_INVALID_CONFIG, f"failed to find plugin {plugin!r} in path {inv.path!r}")


def delegate(inv: Invocation, command: str) -> dict[str, Any] | None:
    """Run the IPAM plugin as libcni would; its result (ADD), or None."""
    ipam = inv.ipam
    assert ipam is not None
    exe = _find_plugin(inv, ipam["type"])
    env = dict(inv.env, CNI_COMMAND=command)
    try:
        proc = subprocess.run(
            [exe], input=inv.stdin, env=env, capture_output=True, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CniError(ERR_IO, f"ipam {ipam['type']} {command}: {exc}") from None
    sys.stderr.buffer.write(proc.stderr)
    out = proc.stdout.strip()
    parsed: Any = None
    if out:
        try:
            parsed = json.loads(out)
        except ValueError:
            raise CniError(
                ERR_DECODE, f"ipam {ipam['type']} {command}: output is not JSON: {out[:200]!r}"
            ) from None
    if proc.returncode != 0:
        if isinstance(parsed, dict) and "code" in parsed:
            raise CniError(
                int(parsed.get("code") or ERR_IO),
                f"ipam {ipam['type']} {command}: {parsed.get('msg', '')}",
                str(parsed.get("details", "")),
            )
        raise CniError(ERR_IO, f"ipam {ipam['type']} {command}: exit status {proc.returncode}")
    return parsed if isinstance(parsed, dict) else None


# -- addresses inside the container ---------------------------------------------------


@contextmanager
def _rtnl(netns: str) -> Iterator[Any]:
    """An IPRoute whose socket lives in ``netns`` (created there, used from here)."""
    from pyroute2 import IPRoute

    with entered(netns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _ifindex(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _write_sysctl(netns: str, path: str, value: str) -> None:
    with entered(netns):
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError:
            pass  # best effort, as the reference plugin: IPv6 may be off, the knob absent


def configure(netns: str, ifname: str, result: dict[str, Any]) -> None:
    """Put ``result``'s addresses and routes on ``ifname`` (as libcni's ConfigureIface)."""
    from pyroute2.netlink.exceptions import NetlinkError

    _write_sysctl(netns, f"/proc/sys/net/ipv4/conf/{ifname}/arp_notify", "1")
    _write_sysctl(netns, f"/proc/sys/net/ipv6/conf/{ifname}/ndisc_notify", "1")
    ips = result.get("ips") or []
    gateways: dict[int, str] = {}
    with _rtnl(netns) as ipr:
        index = _ifindex(ipr, ifname)
        if index is None:
            raise CniError(ERR_IO, f"{ifname}: not found in {netns}")
        try:
            ipr.link("set", index=index, state="up")
            for entry in ips:
                iface = ipaddress.ip_interface(entry["address"])
                ipr.addr(
                    "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                )
                if entry.get("gateway"):
                    gateways.setdefault(iface.version, entry["gateway"])
            for route in result.get("routes") or []:
                dst = ipaddress.ip_network(route["dst"], strict=False)
                gw = route.get("gw") or gateways.get(dst.version)
                spec: dict[str, Any] = {"dst": str(dst), "oif": index}
                if gw:
                    spec["gateway"] = gw
                if route.get("priority"):
                    spec["priority"] = int(route["priority"])
                ipr.route("add", **spec)
        except NetlinkError as exc:
            raise CniError(ERR_IO, f"{ifname}: configuring addresses: {exc}") from None
        except (KeyError, ValueError) as exc:
            raise CniError(ERR_DECODE, f"ipam result: bad address or route: {exc}") from None


def wait_for_lease(inv: Invocation) -> dict[str, Any]:
    """The daemon's DHCP lease for the new endpoint, as an IPAM result (it is on the
    netdev already: the daemon put it there)."""
    ipam = inv.ipam or {}
    timeout = ipam.get("timeout", DHCP_WAIT)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise CniError(ERR_INVALID_CONFIG, f"ipam timeout {timeout!r}: seconds expected")
    deadline = time.monotonic() + float(timeout)
    while True:
        shown = _daemon(inv, "link.show", {"name": inv.name})[0]
        lease = (shown.get("dhcp") or {}).get("lease")
        if lease:
            break
        if time.monotonic() > deadline:
            raise CniError(ERR_TRY_AGAIN, f"dhcp: no lease from the LAN's server in {timeout} s")
        time.sleep(0.1)
    routers = lease.get("routers") or []
    entry: dict[str, Any] = {"address": f"{lease['address']}/{lease['prefixlen']}"}
    if routers:
        entry["gateway"] = routers[0]
    result: dict[str, Any] = {"ips": [entry]}
    if routers:
        result["routes"] = [{"dst": "0.0.0.0/0", "gw": routers[0]}]
    if lease.get("dns"):
        result["dns"] = {"nameservers": lease["dns"]}
    return result


# -- results --------------------------------------------------------------------------


def _versioned(version: str, result: dict[str, Any]) -> dict[str, Any]:
    """``result`` in the shape of CNI ``version`` (0.3.x/0.4.0 ips carry a ``version``)."""
    out = dict(result, cniVersion=version)
    ips = []
    for entry in out.get("ips") or []:
        item = {k: v for k, v in entry.items() if k != "version"}
        if version < "1.0.0":
            item["version"] = str(ipaddress.ip_interface(entry["address"]).version)
        ips.append(item)
    out["ips"] = ips
    return out


def cmd_add(inv: Invocation) -> dict[str, Any]:
    inv.require("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    if not os.path.exists(inv.netns):
        raise CniError(ERR_UNKNOWN_CONTAINER, f"CNI_NETNS {inv.netns}: no such namespace")
    args: dict[str, Any] = {
        "name": inv.name,
        "link": inv.master(),
        "type": "macvlan",
        "mode": inv.mode,
        "netns": inv.netns,
        "ifname": inv.ifname,
        "up": True,
    }
    if inv.mac:
        args["address"] = inv.mac
    if inv.mtu:
        args["mtu"] = inv.mtu
    ipam = inv.ipam
    dhcp = inv.dhcp
    if dhcp:
        args["dhcp"] = True
        pod = inv.args.get("K8S_POD_NAME", "")
        if _HOSTNAME.match(pod):
            args["hostname"] = pod
    elif ipam is not None:
        _find_plugin(inv, ipam["type"])  # fail before creating anything
    shown = _daemon(inv, "link.add", args)
    ipam_done = False
    try:
        ipam_result: dict[str, Any] = {}
        if dhcp:
            ipam_result = wait_for_lease(inv)
        elif ipam is not None:
            ipam_result = delegate(inv, "ADD") or {}
            ipam_done = True
            if not ipam_result.get("ips"):
                raise CniError(ERR_INVALID_CONFIG, "IPAM plugin returned missing IP config")
            configure(inv.netns, inv.ifname, ipam_result)
    except BaseException:
        if ipam_done:
            with suppress(CniError):
                delegate(inv, "DEL")
        with suppress(CniError):
            _daemon(inv, "link.del", {"name": inv.name})
        raise
    result: dict[str, Any] = {
        "interfaces": [{"name": inv.ifname, "mac": shown["address"], "sandbox": inv.netns}],
        "ips": [dict(ip, interface=0) for ip in ipam_result.get("ips") or []],
        "routes": ipam_result.get("routes") or [],
        "dns": inv.conf.get("dns") or ipam_result.get("dns") or {},
    }
    return _versioned(inv.version, result)


def cmd_del(inv: Invocation) -> None:
    inv.require("CNI_CONTAINERID", "CNI_IFNAME")
    if inv.ipam is not None and not inv.dhcp:
        delegate(inv, "DEL")
    try:
        _daemon(inv, "link.del", {"name": inv.name})
    except CniError as exc:
        if exc.details != "ENODEV":  # already gone (or never made): DEL is idempotent
            raise


def cmd_check(inv: Invocation) -> None:
    inv.require("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    if inv.version < "0.4.0":
        raise CniError(ERR_INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    prev = inv.conf.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "CHECK: required prevResult missing")
    ours = [
        (i, iface)
        for i, iface in enumerate(prev.get("interfaces") or [])
        if iface.get("name") == inv.ifname and iface.get("sandbox") == inv.netns
    ]
    if not ours:
        raise CniError(ERR_CHECK, f"CHECK: {inv.ifname} in {inv.netns} is not in prevResult")
    index, iface = ours[0]
    shown = _daemon(inv, "link.show", {"name": inv.name})[0]
    expect = {
        "type": "macvlan",
        "mode": inv.mode,
        "netns": inv.netns,
        "netdev": inv.ifname,
        "address": str(iface.get("mac", "")).lower(),
    }
    for key, want in expect.items():
        if shown.get(key) != want:
            raise CniError(
                ERR_CHECK, f"CHECK: endpoint {inv.name}: {key} is {shown.get(key)!r}, not {want!r}"
            )
    if shown.get("operstate") != "UP":
        raise CniError(ERR_CHECK, f"CHECK: endpoint {inv.name} is {shown.get('operstate')}")
    if not os.path.exists(inv.netns):
        raise CniError(ERR_UNKNOWN_CONTAINER, f"CNI_NETNS {inv.netns}: no such namespace")
    with _rtnl(inv.netns) as ipr:
        ifindex = _ifindex(ipr, inv.ifname)
        if ifindex is None:
            raise CniError(ERR_CHECK, f"CHECK: {inv.ifname}: not found in {inv.netns}")
        link = ipr.link("get", index=ifindex)[0]
        if str(link.get("address", "")).lower() != expect["address"]:
            raise CniError(
                ERR_CHECK,
                f"CHECK: {inv.ifname}: address {link.get('address')}, not {expect['address']}",
            )
        have = {f"{a.get('address')}/{a['prefixlen']}" for a in ipr.get_addr(index=ifindex)}
        for entry in prev.get("ips") or []:
            if entry.get("interface", index) != index:
                continue
            if str(ipaddress.ip_interface(entry["address"])) not in have:
                raise CniError(ERR_CHECK, f"CHECK: {inv.ifname}: {entry['address']} missing")
        routes = {
            (str(r.get("dst") or ""), int(r["dst_len"]))
            for family in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.route("dump", family=family, table=254)
        }
        for route in prev.get("routes") or []:
            dst = ipaddress.ip_network(route["dst"], strict=False)
            route_key = ("" if dst.prefixlen == 0 else str(dst.network_address), dst.prefixlen)
            alt = (str(dst.network_address), dst.prefixlen)
            if route_key not in routes and alt not in routes:
                raise CniError(ERR_CHECK, f"CHECK: route to {route['dst']} missing")
    if inv.ipam is not None and not inv.dhcp:
        delegate(inv, "CHECK")


def cmd_status(inv: Invocation) -> None:
    try:
        _daemon(inv, "version", {})
    except CniError as exc:
        raise CniError(ERR_NOT_AVAILABLE, exc.msg, exc.details) from None


def version_info() -> dict[str, Any]:
    return {"cniVersion": LATEST, "supportedVersions": list(SUPPORTED_VERSIONS)}


# -- main ------------------------------------------------------------------------------


def run(env: dict[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """One invocation: (exit status, JSON to print or None)."""
    inv = Invocation(env, stdin)
    try:
        if inv.command == "VERSION":
            return 0, version_info()
        inv.load_config()
        if inv.command == "ADD":
            return 0, cmd_add(inv)
        if inv.command == "DEL":
            cmd_del(inv)
        elif inv.command == "CHECK":
            cmd_check(inv)
        elif inv.command == "STATUS":
            cmd_status(inv)
        elif inv.command == "GC":
            pass  # the daemon removes endpoints whose namespace is gone by itself
        else:
            raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND {inv.command!r}: unknown")
        return 0, None
    except CniError as exc:
        error = {"cniVersion": inv.version, "code": exc.code, "msg": exc.msg}
        if exc.details:
            error["details"] = exc.details
        return 1, error


def main() -> int:
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    status, output = run(dict(os.environ), stdin)
    if output is not None:
        sys.stdout.write(json.dumps(output) + "\n")
        sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
