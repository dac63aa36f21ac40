"""What an endpoint looks like from outside: ``link show`` (``-j``, ``-s``) and the metrics.

The one place that adds a frontend's own drops and errors to the engine's
counters, names the drop reasons and derives the operstate, so ``link show -s``
and the Prometheus metrics cannot disagree.
"""

from __future__ import annotations

from typing import Any

from pymacvtap.core.mac import format_mac
from pymacvtap.core.modes import Mode
from pymacvtap.core.port import Endpoint, Port
from pymacvtap.daemon.runtime import EndpointRuntime


def operstate(ep: Endpoint) -> str:
    port = ep.port
    if not ep.up:
        return "DOWN"
    if port is not None and not port.up:
        return "LOWERLAYERDOWN"
    return "UP"


def counters(rt: EndpointRuntime) -> dict[str, dict[str, int]]:
    """The endpoint's rx/tx counters, the frontend's drops and errors included."""
    stats = rt.ep.stats.as_dict()
    stats["rx"]["dropped"] += rt.frontend.dropped
    stats["tx"]["errors"] += rt.frontend.errors
    stats["tx"]["dropped"] += rt.frontend.missed
    return stats


def engine_drops(ep: Endpoint) -> dict[str, int]:
    """The engine's drops by reason (the metrics' ``reason`` label)."""
    return {reason.value[2]: n for reason, n in dict(ep.stats.drops).items() if n}


def drops(rt: EndpointRuntime) -> dict[str, int]:
    """Which counter went up and why, by reason (the detail ip -s -s gives for errors)."""
    by_reason = engine_drops(rt.ep)
    if rt.frontend.dropped:
        by_reason["frontend_refused"] = rt.frontend.dropped
    if rt.frontend.errors:
        by_reason["frontend_bad_input"] = rt.frontend.errors
    missed = rt.frontend.missed
    if missed:
        by_reason["frontend_missed"] = missed
    return dict(sorted(by_reason.items()))


def addresses(ep: Endpoint) -> list[dict[str, object]]:
    """The endpoint's IPv4/IPv6 addresses and where each was learned (SPEC 9)."""
    port = ep.port
    if port is None:
        return []
    return port.addressing.book.as_list(ep.name, port.addressing.now)


def show(rt: EndpointRuntime, stats: bool) -> dict[str, Any]:
    """One endpoint as ``link show`` presents it (the link-show JSON schema)."""
    cfg, ep = rt.cfg, rt.ep
    entry: dict[str, Any] = {
        "name": cfg.name,
        "ifname": cfg.name,  # the same: kept for earlier consumers (link-show schema)
        "link": cfg.link,
        "type": cfg.type,
        "mode": ep.mode.label,
        "address": format_mac(ep.mac),
        "mtu": ep.mtu,
        "operstate": operstate(ep),
        "frontend": cfg.frontend,
        "path": cfg.socket_path,
        "netns": cfg.netns,
        "netdev": cfg.netdev_name if cfg.kind.netdev else None,
        "owner": cfg.owner,
        "group": cfg.group,
        "queues": cfg.queues,
        "spoofchk": ep.spoofchk,
        "macnat": ep.macnat,
        "bcqueuelen": ep.bcqueuelen,
        "addresses": addresses(ep),
        "datapath": rt.datapath,
    }
    if cfg.dhcp:
        entry["dhcp"] = {"hostname": cfg.hostname or cfg.name}
        if cfg.lease is not None:
            entry["dhcp"]["lease"] = cfg.lease
    if ep.mode is Mode.SOURCE:
        entry["macaddrs"] = sorted(format_mac(m) for m in ep.source_macs)
    if stats:
        entry["stats64"] = counters(rt)
        entry["drops"] = drops(rt)
        if ep.port is not None:  # SPEC 2.2: the lower's counters, broadcast-queue drops included
            entry["lower_stats"] = ep.port.stats.as_dict()
        queue_stats = rt.frontend.queue_stats()
        if queue_stats is not None:
            entry["queue_stats"] = queue_stats
    return entry


def show_lower(port: Port, stats: bool) -> dict[str, Any]:
    """One lower in use as ``lower show`` presents it (the lower-show JSON schema)."""
    entry: dict[str, Any] = {
        "ifname": port.name,
        "address": format_mac(port.mac),
        "mtu": port.mtu,
        "operstate": "UP" if port.up else "LOWERLAYERDOWN",
        "endpoints": sorted(port.endpoints),
    }
    if stats:
        # The same counters as an endpoint's lower_stats (link show -j -s).
        entry["stats"] = port.stats.as_dict()
        entry["bcqueue_len"] = len(port.bc_queue)
    return entry
