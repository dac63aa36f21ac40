"""``pymacvtap-qemu-helper``: QEMU's bridge-helper protocol, backed by the daemon.

QEMU runs ``-netdev tap,id=n0,br=NAME,helper=.../pymacvtap-qemu-helper`` as
``HELPER --use-vnet --fd=N --br=NAME`` and expects one tap fd back on fd N by
SCM_RIGHTS (with one byte of data), then a zero exit status.  Unlike
qemu-bridge-helper this needs no setuid bit: the helper asks the daemon, which
hands a queue of endpoint NAME's tap only to the endpoint's owner or group
(SO_PEERCRED), root and the admin group.  The control socket is
``$PYMACVTAP_SOCKET`` or the default.

Only the standard library is used, so it runs from any copy of the package.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence

from pymacvtap.control.client import Client, ClientError, RemoteError

PROG = "pymacvtap-qemu-helper"
USAGE = f"usage: {PROG} [--use-vnet] --fd=FD --br=NAME"


def parse(argv: Sequence[str]) -> tuple[int, str, bool]:
    fd: int | None = None
    name: str | None = None
    use_vnet = False
    for arg in argv:
        if arg == "--use-vnet":
            use_vnet = True
        elif arg.startswith("--fd="):
            try:
                fd = int(arg[5:])
            except ValueError:
                raise SystemExit(f"{PROG}: --fd: not a number: {arg[5:]}\n{USAGE}") from None
        elif arg.startswith("--br="):
            name = arg[5:]
        elif arg in ("-h", "--help"):
            print(__doc__.strip())
            print(USAGE)
            raise SystemExit(0)
        else:
            raise SystemExit(f"{PROG}: unknown argument {arg}\n{USAGE}")
    if fd is None or not name:
        raise SystemExit(f"{PROG}: --fd and --br are required\n{USAGE}")
    return fd, name, use_vnet


def main(argv: Sequence[str] | None = None) -> int:
    fd, name, _use_vnet = parse(sys.argv[1:] if argv is None else argv)
    # The daemon's taps always carry a vnet header, which is what --use-vnet asks for.
    try:
        with Client(None, timeout=30.0) as client:
            _, fds = client.request_fds("attach", {"name": name, "queues": 1})
    except RemoteError as exc:
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    try:
        with socket.socket(fileno=fd) as channel:
            socket.send_fds(channel, [b"\0"], fds[:1])
    except OSError as exc:
        print(f"{PROG}: --fd={fd}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        for queue_fd in fds:
            os.close(queue_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
