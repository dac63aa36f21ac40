"""``link.set`` events that say what changed: the old and the new value of each attribute.

Whoever made the change (a ``link set`` request, ``ip link set`` inside the
container, the kernel clamping an mtu) it is reported the same way, so that
``monitor`` can tell ``up`` from ``down`` and 1500 from 1400.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pymacvtap.core.mac import format_mac
from pymacvtap.core.port import Endpoint

# Who made a change: `source` in the event.
BY_REQUEST = "request"  # pymacvtap link set
BY_NETDEV = "netdev"  # ip link set on the endpoint's netdev (inside the container)
BY_KERNEL = "kernel"  # the kernel, through the lower (an mtu clamped when the lower's shrank)


def values(ep: Endpoint) -> dict[str, Any]:
    """The attributes a link.set event may report, by the ``link set`` word that changes them."""
    return {
        "up": ep.up,
        "address": format_mac(ep.mac),
        "mtu": ep.mtu,
        "mode": ep.mode.label,
        "spoofchk": ep.spoofchk,
        "macnat": ep.macnat,
        "macaddr": sorted(format_mac(m) for m in ep.source_macs),
    }


def link_set(
    name: str,
    before: dict[str, Any],
    after: dict[str, Any],
    source: str,
    asked: Iterable[str] = (),
) -> dict[str, Any] | None:
    """The event for ``name`` going from ``before`` to ``after``; None if nothing changed.

    ``asked``: attributes a request named, reported even when the value stayed; an action
    that has no value (``announce``) is named in ``changes`` only.
    """
    names = sorted({k for k in after if before.get(k) != after[k]} | set(asked))
    if not names:
        return None
    return {
        "event": "link.set",
        "ifname": name,
        "source": source,
        "changes": names,
        "old": {k: before.get(k) for k in names if k in after},
        "new": {k: after.get(k) for k in names if k in after},
    }
