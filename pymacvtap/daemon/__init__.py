"""The daemon: lowers, endpoints' frontends and the engine joined by one event loop.

Its parts, one job each:

* :mod:`~pymacvtap.daemon.service` — the control verbs and their undo; owns the endpoints;
* :mod:`~pymacvtap.daemon.datapath` — the breath loop that moves the frames;
* :mod:`~pymacvtap.daemon.lowers` — opening and closing lowers;
* :mod:`~pymacvtap.daemon.follow` — following the kernel (link events, namespaces, polls);
* :mod:`~pymacvtap.daemon.kinds` — which frontend each kind of endpoint gets;
* :mod:`~pymacvtap.daemon.view` — an endpoint as ``link show`` and the metrics present it;
* :mod:`~pymacvtap.daemon.runtime` — the records of a lower and an endpoint in use;
* :mod:`~pymacvtap.daemon.config`, :mod:`~pymacvtap.daemon.state` — the endpoint
  configuration and its persistence;
* :mod:`~pymacvtap.daemon.metrics` — the Prometheus endpoint;
* :mod:`~pymacvtap.daemon.entry` — ``pymacvtap daemon`` itself.

Importing this package loads none of them: the CLI reads the configuration's
names (:mod:`pymacvtap.daemon.config`) without the daemon's dependencies.
"""

from __future__ import annotations

import argparse


def main(args: argparse.Namespace) -> int:
    """``pymacvtap daemon`` (see :func:`pymacvtap.daemon.entry.main`)."""
    from pymacvtap.daemon.entry import main as run

    return run(args)
