"""``pymacvtap daemon``: set the process up, run the loop until SIGTERM/SIGINT, shut down."""

from __future__ import annotations

import argparse
import grp
import logging
import os
import signal
import socket
import sys
import traceback

from pymacvtap import __version__
from pymacvtap.control.server import ControlServer
from pymacvtap.core.announce import ROUNDS
from pymacvtap.daemon.lock import StateDirBusy, StateDirLock
from pymacvtap.daemon.metrics import MetricsServer, bind_metrics, parse_address
from pymacvtap.daemon.service import EndpointService
from pymacvtap.daemon.state import StateStore
from pymacvtap.defaults import CONTROL_SOCKET, SOCKET_ENV, STATE_DIR
from pymacvtap.io.allocator import keep_freed_frames_mapped
from pymacvtap.io.bpf import BpfError
from pymacvtap.io.caps import DAEMON_CAPABILITIES, drop_capabilities
from pymacvtap.io.loop import Loop

log = logging.getLogger("pymacvtap")

# After traffic, keep polling without sleeping this long (µs): a wake-up costs
# more than the frames of a conversation are apart (bench/README.md, the round trip).
BUSY_POLL_US = "0"


def main(args: argparse.Namespace) -> int:
    """``pymacvtap daemon``: run until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=logging.INFO, format="pymacvtap[%(process)d]: %(message)s", stream=sys.stderr
    )
    socket_path = args.socket or os.environ.get(SOCKET_ENV) or CONTROL_SOCKET
    admin_gid: int | None = None
    if args.admin_group:
        try:
            admin_gid = (
                int(args.admin_group)
                if str(args.admin_group).isdigit()
                else grp.getgrnam(args.admin_group).gr_gid
            )
        except KeyError:
            print(f"pymacvtap: daemon: group {args.admin_group}: no such group", file=sys.stderr)
            return 1
    state_dir = args.state_dir or STATE_DIR
    try:
        # Before anything is touched: a second daemon on this state dir would
        # overwrite the first one's saved endpoints (issue 16).
        lock = StateDirLock.acquire(state_dir, socket_path)
    except (StateDirBusy, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"pymacvtap: daemon: {reason}", file=sys.stderr)
        return 1
    try:
        return _run(args, socket_path, state_dir, admin_gid)
    finally:
        lock.release()


def _run(args: argparse.Namespace, socket_path: str, state_dir: str, admin_gid: int | None) -> int:
    """The daemon proper, with the state dir's lock held."""
    keep_freed_frames_mapped()
    loop = Loop()
    loop.spin = float(os.environ.get("PYMACVTAP_BUSY_POLL_US", BUSY_POLL_US)) / 1e6
    rounds = getattr(args, "announce_rounds", None)
    try:
        service = EndpointService(
            loop,
            StateStore(state_dir, log.warning),
            getattr(args, "datapath", None) or "auto",
            announce_rounds=ROUNDS if rounds is None else int(rounds),
        )
    except BpfError as exc:
        print(f"pymacvtap: daemon: {exc}", file=sys.stderr)
        loop.close()
        return 1
    try:
        server = ControlServer(loop, socket_path, service, admin_gid, log)
    except OSError as exc:
        print(f"pymacvtap: daemon: {socket_path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    metrics: MetricsServer | None = None
    if args.metrics:
        # Bound while the daemon may still bind any port (below 1024 too)...
        try:
            address = parse_address(args.metrics)
            metrics = bind_metrics(
                *address, service.endpoints, service.lowers.table, service.datapath
            )
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"pymacvtap: daemon: --metrics {args.metrics}: {reason}", file=sys.stderr)
            server.close()
            service.close()
            loop.close()
            return 1
    service.restore()
    drop_capabilities(DAEMON_CAPABILITIES)  # SPEC 6; the list is argued in SECURITY.md
    if metrics is not None:
        # ...and served from a thread started after drop_capabilities: capabilities
        # are per thread, and the HTTP thread must start with the reduced set.
        metrics.start()
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    log.info("pymacvtap %s ready on %s", __version__, socket_path)
    _sd_notify("READY=1")
    try:
        loop.run()
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if metrics is not None:
            metrics.close()
        server.close()
        service.close()
        loop.close()
    return 0


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) we are ready; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.sendall(message.encode())
