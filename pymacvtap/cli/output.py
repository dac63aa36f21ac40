"""Output: endpoints and events as text in the manner of `ip -d [-s] link show`, or JSON (``-j``).

Pure functions from the daemon's answers to strings; nothing here talks to the daemon.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from pymacvtap.cli.parsed import Options


def _flags(state: str) -> str:
    if state == "UP":
        flags = ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"]
    elif state == "LOWERLAYERDOWN":
        flags = ["NO-CARRIER", "BROADCAST", "MULTICAST", "UP"]
    else:
        flags = ["BROADCAST", "MULTICAST"]
    return ",".join(flags)


def _table(label: str, heads: Sequence[str], values: Sequence[object]) -> list[str]:
    cells = [str(v) for v in values]
    widths = [
        max(len(h), len(c), 6 if i == 0 else 0)
        for i, (h, c) in enumerate(zip(heads, cells, strict=True))
    ]
    head = " ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))
    row = " ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
    return [f"    {label} {head}", f"    {' ' * len(label)} {row}"]


def format_link(entry: dict[str, Any], stats: bool = False) -> str:
    """One endpoint the way `ip -d [-s] link show` prints a link."""
    state = str(entry.get("operstate") or "UNKNOWN")
    lines = [
        f"{entry.get('ifname')}@{entry.get('link')}: <{_flags(state)}> "
        f"mtu {entry.get('mtu')} state {state}"
        # WAITING: configured, not created yet; why (``state WAITING lower eth0 missing``).
        + (f" {entry['waiting']}" if entry.get("waiting") else ""),
        f"    link/ether {entry.get('address')}",
    ]
    detail = f"    {entry.get('type')} mode {entry.get('mode')}"
    if entry.get("nopromisc"):
        detail += " nopromisc"
    if entry.get("bcqueuelen") is not None:
        detail += f" bcqueuelen {entry['bcqueuelen']}"
    detail += f" spoofchk {'on' if entry.get('spoofchk') else 'off'}"
    if entry.get("macnat"):
        detail += " macnat on"
    lines.append(detail)
    for address in entry.get("addresses") or ():
        if isinstance(address, dict):
            lines.append(
                f"    {address.get('family')} {address.get('address')} "
                f"origin {address.get('origin')}"
            )
    macaddrs = entry.get("macaddrs")
    if isinstance(macaddrs, list) and (macaddrs or entry.get("mode") == "source"):
        lines.append(f"    macaddr count {len(macaddrs)}" + "".join(f" {m}" for m in macaddrs))
    fe = f"    frontend {entry.get('frontend')}"
    for key in ("netdev", "netns", "path", "owner", "group", "queues", "datapath"):
        value = entry.get(key)
        if value is not None:
            fe += f" {key} {value}"
    lines.append(fe)
    dhcp = entry.get("dhcp")
    if isinstance(dhcp, dict):
        lines.append(_dhcp_line(dhcp))
    stats64 = entry.get("stats64")
    if stats and isinstance(stats64, dict):
        rx = stats64.get("rx") or {}
        tx = stats64.get("tx") or {}
        rx_keys = ("bytes", "packets", "errors", "dropped", "multicast")
        tx_keys = ("bytes", "packets", "errors", "dropped")
        lines += _table(
            "RX:",
            ("bytes", "packets", "errors", "dropped", "mcast"),
            [rx.get(k, 0) for k in rx_keys],
        )
        lines += _table(
            "TX:", ("bytes", "packets", "errors", "dropped"), [tx.get(k, 0) for k in tx_keys]
        )
        drops = entry.get("drops")
        if isinstance(drops, dict) and drops:
            lines.append("    drops " + " ".join(f"{k} {v}" for k, v in drops.items()))
    return "\n".join(lines)


def format_lower(entry: dict[str, Any], stats: bool = False) -> str:
    """One lower as ``lower show`` prints it: ip's first lines, its endpoints, its counters."""
    state = str(entry.get("operstate") or "UNKNOWN")
    endpoints = entry.get("endpoints") or []
    lines = [
        f"{entry.get('ifname')}: <{_flags(state)}> mtu {entry.get('mtu')} state {state}",
        f"    link/ether {entry.get('address')}",
        "    endpoints " + (" ".join(str(e) for e in endpoints) or "none"),
    ]
    counters = entry.get("stats")
    if stats and isinstance(counters, dict):
        rx_keys = ("bytes", "packets", "errors", "dropped", "not_ours")
        tx_keys = ("bytes", "packets", "errors")
        lines += _table("RX:", rx_keys, [counters.get(f"rx_{k}", 0) for k in rx_keys])
        lines += _table("TX:", tx_keys, [counters.get(f"tx_{k}", 0) for k in tx_keys])
        lines.append(
            f"    bcqueue dropped {counters.get('bcqueue_dropped', 0)}"
            f" queued {entry.get('bcqueue_len', 0)}"
        )
    return "\n".join(lines)


def _dhcp_line(dhcp: dict[str, Any]) -> str:
    """``dhcp hostname H lease A/LEN via GW server S expires TIME`` (or ``lease none``)."""
    line = f"    dhcp hostname {dhcp.get('hostname')}"
    lease = dhcp.get("lease")
    if not isinstance(lease, dict):
        return line + " lease none"
    line += f" lease {lease.get('address')}/{lease.get('prefixlen')}"
    routers = lease.get("routers") or []
    if routers:
        line += f" via {routers[0]}"
    line += f" server {lease.get('server_id')}"
    obtained, seconds = lease.get("obtained"), lease.get("lease_time")
    if isinstance(obtained, int | float) and isinstance(seconds, int) and seconds < 0xFFFFFFFF:
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(obtained + seconds))
        line += f" expires {expires}"
    else:
        line += " expires never"
    return line


def _word(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(_word(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    text = str(value)
    if not text or any(c.isspace() for c in text) or '"' in text:
        return json.dumps(text)
    return text


def format_event(event: dict[str, Any]) -> str:
    """``link.del vm0 reason "lower eth0 removed"``: kind, endpoint, then key value pairs.

    A change says each attribute's old and new value and who made it:
    ``link.set c1 up off -> on mtu 1500 -> 1400 source netdev``.
    """
    words = [str(event.get("event", "event"))]
    if "ifname" in event:
        words.append(_word(event["ifname"]))
    old, new = event.get("old"), event.get("new")
    shown = {"event", "ifname"}
    if isinstance(old, dict) and isinstance(new, dict):
        for key in event.get("changes") or sorted(new):
            words += [str(key), _word(old.get(key)), "->", _word(new.get(key))]
        shown |= {"changes", "old", "new"}
    for key, value in event.items():
        if key not in shown:
            words += [key, _word(value)]
    return " ".join(words)


def event_json(event: dict[str, Any]) -> str:
    """``-j monitor``: one compact JSON object per line."""
    return json.dumps(event, separators=(",", ":"))


def dump_json(opts: Options, value: object) -> str:
    """``-j`` output: one line, or indented with ``-p``."""
    if opts.pretty:
        return json.dumps(value, indent=2)
    return json.dumps(value, separators=(", ", ": "))
