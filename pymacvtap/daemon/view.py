"""What an endpoint looks like from outside: ``link show`` (``-j``, ``-s``) and the metrics.

The one place that adds a frontend's own drops and errors to the engine's
counters, names the drop reasons and derives the operstate, so ``link show -s``
and the Prometheus metrics cannot disagree.
"""

from __future__ import annotations

from typing import Any

from pymacvtap.core.mac import format_mac
from pymacvtap.core.modes import Mode
from pymacvtap.core.port import Endpoint
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


def show(rt: EndpointRuntime, stats: bool) -> dict[str, Any]:
    """One endpoint as ``link show`` presents it (the link-show JSON schema)."""
    cfg, ep = rt.cfg, rt.ep
    entry: dict[str, Any] = {
        "ifname": cfg.name,
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
        "bcqueuelen": ep.bcqueuelen,
        "datapath": rt.datapath,
    }
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
