"""Endpoints that are configured but cannot be created yet: they wait, they are not forgotten.

At start an endpoint may find its lower missing (a NIC renamed by udev, a driver
that loads late, a bond not yet up), its namespace not there yet, or its netdev's
name taken.  Dropping it would lose the configuration for good (issue 16); so it
stays in the saved state, ``link show`` lists it as ``WAITING`` with the reason,
and it is created as soon as what it waits for appears.  Only ``link del``
forgets it.  (A lower or namespace that goes away while the daemon runs takes its
endpoints with it, as the kernel's macvlan does: README, "When things go away".)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pymacvtap.daemon.config import EndpointConfig
from pymacvtap.io import netlink
from pymacvtap.io.netns import netns_exists

# How often waiting endpoints whose cause no event announces (a namespace that
# appears, a netdev name set free) are tried again.
WAITING_RETRY_SECONDS = 1.0
NOT_TRIED = "not created yet"


@dataclass
class Waiting:
    """A configured endpoint not created (yet), and why."""

    cfg: EndpointConfig
    reason: str = NOT_TRIED
    # Waits for what never comes back (a process's namespace): kept, never retried.
    for_good: bool = False


def gone_for_good(cfg: EndpointConfig) -> bool:
    """The endpoint's namespace was a process's (``/proc/PID/ns/net``) and that process is gone.

    Such a namespace never comes back, and a new process given the same PID is
    someone else: the endpoint is kept (only ``link del`` forgets) but not retried.
    """
    netns = cfg.netns
    return netns is not None and netns.startswith("/proc/") and not netns_exists(netns)


def missing(cfg: EndpointConfig) -> str | None:
    """What the endpoint needs that is not there (cheap checks, no side effects)."""
    if cfg.netns is not None and not netns_exists(cfg.netns):
        if gone_for_good(cfg):
            return f"netns {cfg.netns} missing (its process is gone; link del forgets it)"
        return f"netns {cfg.netns} missing"
    if not netlink.link_exists(cfg.link):
        return f"lower {cfg.link} missing"
    return None


def reason_of(cfg: EndpointConfig, exc: Exception) -> str:
    """A failed creation's message without the ``link add NAME:`` the show line has already."""
    return str(exc).removeprefix(f"link add {cfg.name}: ")


def show_waiting(waiting: Waiting) -> dict[str, Any]:
    """A waiting endpoint as ``link show`` presents it: as configured, state WAITING."""
    cfg = waiting.cfg
    entry: dict[str, Any] = {
        "name": cfg.name,
        "ifname": cfg.name,
        "link": cfg.link,
        "type": cfg.type,
        "mode": cfg.mode,
        "address": cfg.address,
        "mtu": cfg.mtu,
        "operstate": "WAITING",
        "waiting": waiting.reason,
        "frontend": cfg.frontend,
        "path": cfg.socket_path,
        "netns": cfg.netns,
        "netdev": cfg.netdev_name if cfg.kind.netdev else None,
        "owner": cfg.owner,
        "group": cfg.group,
        "queues": cfg.queues,
        "spoofchk": cfg.spoofchk,
        "macnat": cfg.macnat,
        "bcqueuelen": cfg.bcqueuelen,
        "addresses": [],
        "datapath": None,
    }
    if cfg.dhcp:
        entry["dhcp"] = {"hostname": cfg.hostname or cfg.name}
        if cfg.lease is not None:
            entry["dhcp"]["lease"] = cfg.lease
    if cfg.mode == "source":
        entry["macaddrs"] = sorted(cfg.macaddrs)
    return entry
