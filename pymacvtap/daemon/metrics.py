"""Prometheus metrics of a running daemon (``pymacvtap daemon --metrics ADDR:PORT``).

A custom collector reads the daemon's state when Prometheus scrapes; nothing
is counted twice and the data path pays nothing for it.  Exposed:

* per endpoint (labels ``endpoint``, ``lower``, ``mode``, ``type``):
  ``pymacvtap_endpoint_{rx,tx}_{bytes,packets,errors,dropped}_total``,
  ``pymacvtap_endpoint_rx_multicast_total`` (the numbers of ``link show -s``),
  ``pymacvtap_endpoint_drops_total{reason}``, ``pymacvtap_endpoint_up``,
  ``pymacvtap_endpoint_rx_queue_length`` (frames waiting for the frontend);
  ``pymacvtap_endpoint_addresses`` (addresses known, by origin);
* per lower (label ``lower``): ``pymacvtap_lower_rx_{packets,bytes,errors,dropped,
  not_ours}_total``, ``pymacvtap_lower_bcqueue_dropped_total``,
  ``pymacvtap_lower_tx_{packets,bytes,errors}_total``, ``pymacvtap_lower_drops_total
  {reason}``, ``pymacvtap_lower_carrier``, ``pymacvtap_lower_endpoints``,
  ``pymacvtap_lower_bc_queue_length``, ``pymacvtap_lower_tx_queue_length``;
* ``pymacvtap_endpoints`` and ``pymacvtap_build_info{version, python}``.

Threading: prometheus_client serves HTTP from its own thread while the daemon
runs single-threaded.  The collector only *reads*: ints and deque lengths are
read atomically under the GIL, and every dict of the daemon is copied with
``list(d.values())`` / ``dict(d)`` (one C-level call, so also atomic) before
it is iterated, so a scrape never sees "dictionary changed size during
iteration".  A scrape may see one endpoint's counters a few frames apart from
another's; that is the usual contract of counters.  The HTTP thread never
calls into the daemon, the engine or the loop.

Bind it (:func:`bind_metrics`) before the daemon drops its capabilities, so that
a port below 1024 can be used, and start its thread (:meth:`MetricsServer.start`)
after: capabilities are per thread, and a thread started earlier would keep them.
"""

from __future__ import annotations

import platform
import socket
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import CollectorRegistry

from pymacvtap import __version__
from pymacvtap.core.port import Endpoint
from pymacvtap.daemon.datapath import DataPath
from pymacvtap.daemon.runtime import EndpointRuntime, LowerRuntime
from pymacvtap.daemon.view import addresses, engine_drops
from pymacvtap.daemon.view import counters as endpoint_counters

ENDPOINT_LABELS = ["endpoint", "lower", "mode", "type"]
_ENDPOINT_COUNTERS = (
    ("rx", "bytes", "bytes received by the endpoint's user"),
    ("rx", "packets", "frames received by the endpoint's user"),
    ("rx", "errors", "receive errors"),
    ("rx", "dropped", "frames for the endpoint dropped (queue full, frontend refused)"),
    ("rx", "multicast", "multicast and broadcast frames received"),
    ("tx", "bytes", "bytes sent by the endpoint's user"),
    ("tx", "packets", "frames sent by the endpoint's user"),
    ("tx", "errors", "frames from the endpoint refused as malformed"),
    ("tx", "dropped", "frames from the endpoint dropped (down, spoofed, wire queue full)"),
)
_LOWER_COUNTERS = (
    ("rx_packets", "frames read from the lower"),
    ("rx_bytes", "bytes read from the lower"),
    ("rx_errors", "malformed frames read from the lower"),
    ("rx_dropped", "frames from the lower dropped"),
    ("rx_not_ours", "frames from the lower for no endpoint (left to the host)"),
    ("bcqueue_dropped", "floods dropped because the broadcast queue was full"),
    ("tx_packets", "frames written to the lower"),
    ("tx_bytes", "bytes written to the lower"),
    ("tx_errors", "frames the lower refused"),
)


_DATAPATH_COUNTERS = {
    "inbox_unlabelled": "frames the fast path's programs handed to the daemon under a label "
    "no device holds (any more): dropped",
}


class DaemonCollector:
    """Reads the daemon's endpoints and lowers on every scrape (see the module docstring)."""

    def __init__(
        self,
        endpoints: Mapping[str, EndpointRuntime],
        lowers: Mapping[str, LowerRuntime],
        datapath: DataPath | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.lowers = lowers
        self.datapath = datapath

    def describe(self) -> Iterable[Metric]:
        return []  # names vary with the state; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        endpoints = list(self.endpoints.values())
        lowers = list(self.lowers.items())
        yield from self._endpoint_metrics(endpoints)
        yield from self._lower_metrics(lowers)
        if self.datapath is not None:
            for name, value in self.datapath.counters().items():
                family = CounterMetricFamily(
                    f"pymacvtap_datapath_{name}", _DATAPATH_COUNTERS.get(name, name)
                )
                family.add_metric([], value)
                yield family
        count = GaugeMetricFamily("pymacvtap_endpoints", "endpoints in the daemon")
        count.add_metric([], len(endpoints))
        yield count
        info = InfoMetricFamily("pymacvtap_build", "the daemon's version")
        info.add_metric([], {"version": __version__, "python": platform.python_version()})
        yield info

    @staticmethod
    def _endpoint_metrics(endpoints: list[EndpointRuntime]) -> Iterable[Metric]:
        counters = {
            (d, n): CounterMetricFamily(f"pymacvtap_endpoint_{d}_{n}", doc, labels=ENDPOINT_LABELS)
            for d, n, doc in _ENDPOINT_COUNTERS
        }
        drops = CounterMetricFamily(
            "pymacvtap_endpoint_drops",
            "frames charged to the endpoint as dropped or in error, by reason",
            labels=[*ENDPOINT_LABELS, "reason"],
        )
        up = GaugeMetricFamily("pymacvtap_endpoint_up", "1 when up", labels=ENDPOINT_LABELS)
        rxq = GaugeMetricFamily(
            "pymacvtap_endpoint_rx_queue_length",
            "frames waiting to be written to the endpoint's frontend",
            labels=ENDPOINT_LABELS,
        )
        known = GaugeMetricFamily(
            "pymacvtap_endpoint_addresses",
            "IPv4/IPv6 addresses the daemon knows for the endpoint, by where they were learned",
            labels=[*ENDPOINT_LABELS, "origin"],
        )
        for rt in endpoints:
            cfg, ep = rt.cfg, rt.ep
            labels = [cfg.name, cfg.link, ep.mode.label, cfg.type]
            stats = endpoint_counters(rt)  # the numbers of `link show -s`
            for (direction, name), family in counters.items():
                family.add_metric(labels, stats[direction][name])
            for reason, value in engine_drops(ep).items():
                drops.add_metric([*labels, reason], value)
            up.add_metric(labels, 1 if ep.up else 0)
            rxq.add_metric(labels, len(ep.rx_queue))
            for origin, count in _by_origin(ep).items():
                known.add_metric([*labels, origin], count)
        yield from counters.values()
        yield from (drops, up, rxq, known)

    @staticmethod
    def _lower_metrics(lowers: list[tuple[str, LowerRuntime]]) -> Iterable[Metric]:
        counters = {
            name: CounterMetricFamily(f"pymacvtap_lower_{name}", doc, labels=["lower"])
            for name, doc in _LOWER_COUNTERS
        }
        drops = CounterMetricFamily(
            "pymacvtap_lower_drops",
            "frames charged to the lower as dropped or in error, by reason",
            labels=["lower", "reason"],
        )
        gauges = {
            "carrier": GaugeMetricFamily(
                "pymacvtap_lower_carrier", "1 when the lower has carrier", labels=["lower"]
            ),
            "endpoints": GaugeMetricFamily(
                "pymacvtap_lower_endpoints", "endpoints on the lower", labels=["lower"]
            ),
            "bc": GaugeMetricFamily(
                "pymacvtap_lower_bc_queue_length",
                "floods waiting in the broadcast queue",
                labels=["lower"],
            ),
            "tx": GaugeMetricFamily(
                "pymacvtap_lower_tx_queue_length",
                "frames waiting to be written to the lower",
                labels=["lower"],
            ),
        }
        for name, lower in lowers:
            port = lower.port
            values = port.stats.as_dict()
            for key, family in counters.items():
                family.add_metric([name], values[key])
            for reason, value in dict(port.stats.drops).items():
                drops.add_metric([name, reason.value[2]], value)
            gauges["carrier"].add_metric([name], 1 if port.up else 0)
            gauges["endpoints"].add_metric([name], len(port.endpoints))
            gauges["bc"].add_metric([name], len(port.bc_queue))
            gauges["tx"].add_metric([name], len(port.tx_queue))
        yield from counters.values()
        yield drops
        yield from gauges.values()


# How often serve_forever looks for a shutdown request: close() waits up to this
# long, and with socketserver's default (0.5 s) a SIGTERM took that long to act.
SHUTDOWN_POLL_SECONDS = 0.02


class MetricsServer:
    """The HTTP server serving ``/metrics``: bound, then :meth:`start`-ed; :meth:`close`."""

    def __init__(self, server: WSGIServer) -> None:
        self.server = server
        self.thread = threading.Thread(
            target=server.serve_forever,
            args=(SHUTDOWN_POLL_SECONDS,),
            name="pymacvtap-metrics",
            daemon=True,
        )

    def start(self) -> None:
        self.thread.start()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()  # waits for serve_forever: only once it runs
            self.thread.join(5)
        self.server.server_close()


def parse_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` (``[::1]:9101`` for IPv6) → (addr, port); ValueError if malformed."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: expected ADDR:PORT")
    return host.removeprefix("[").removesuffix("]"), int(port)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged: one line per scrape would drown the daemon's log."""


def bind_metrics(
    addr: str,
    port: int,
    endpoints: Mapping[str, EndpointRuntime],
    lowers: Mapping[str, LowerRuntime],
    datapath: DataPath | None = None,
) -> MetricsServer:
    """A server for the metrics of ``endpoints`` and ``lowers`` on http://ADDR:PORT/metrics.

    Bound, not started.

    prometheus_client's ``start_http_server`` binds and starts its thread in one
    call; the daemon needs the two apart (see the module docstring), so the
    server is put together here from the library's WSGI app and server class.
    Raises OSError when the address cannot be bound.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(endpoints, lowers, datapath))
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(addr, port, make_wsgi_app(registry), Server, _QuietHandler)
    return MetricsServer(server)


def _by_origin(ep: Endpoint) -> dict[str, int]:
    """How many addresses of each origin the endpoint has (the loop may be changing them:
    a scrape that meets a table mid-change reports nothing for it this time)."""
    counts: dict[str, int] = {}
    try:
        for entry in addresses(ep):
            origin = str(entry["origin"])
            counts[origin] = counts.get(origin, 0) + 1
    except RuntimeError:
        return {}
    return counts
