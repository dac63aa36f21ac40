"""``pymacvtap-docker``: the Docker network plugin's HTTP server on a Unix socket.

Docker finds plugins by their socket: ``/run/docker/plugins/NAME.sock`` makes
``docker network create -d NAME``.  Every call is an HTTP POST to ``/<Call>``
with a JSON body, answered with JSON (``{"Err": "..."}`` and a non-200 status
for a refusal).  The calls themselves are :class:`pymacvtap.docker.driver.Driver`'s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socketserver
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from types import FrameType
from typing import Any

from pymacvtap.docker.driver import DEFAULT_STATE, Driver, DriverError, Store, control_client

DEFAULT_SOCKET = "/run/docker/plugins/pymacvtap.sock"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_BODY = 1 << 20
log = logging.getLogger("pymacvtap.docker")


class PluginServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Docker may call concurrently; the driver sees one call at a time (``lock``)."""

    daemon_threads = True

    def __init__(self, path: str, driver: Driver) -> None:
        self.driver = driver
        self.lock = threading.Lock()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket left by a killed server
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        super().__init__(path, Handler)
        os.chmod(path, 0o660)

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(OSError):
            os.unlink(str(self.server_address))


class Handler(BaseHTTPRequestHandler):
    server: PluginServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        call = self.path.lstrip("/")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._reply(400, {"Err": "bad Content-Length"})
            return
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            self._reply(400, {"Err": f"{call}: body is not JSON: {exc}"})
            return
        if not isinstance(body, dict):
            self._reply(400, {"Err": f"{call}: body must be a JSON object"})
            return
        if call not in self.server.driver.calls:
            self._reply(404, {"Err": f"{call}: not supported by the pymacvtap driver"})
            return
        log.debug("%s %s", call, json.dumps(body))
        try:
            with self.server.lock:
                result = self.server.driver.handle(call, body)
        except DriverError as exc:
            log.warning("%s: %s", call, exc)
            self._reply(500, {"Err": str(exc)})
            return
        except Exception as exc:  # a bug: Docker gets a message, the server goes on
            log.exception("%s failed", call)
            self._reply(500, {"Err": f"{call}: internal error: {exc}"})
            return
        log.info("%s ok", call)
        self._reply(200, result)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "docker"  # a Unix socket peer has no address

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pymacvtap-docker",
        description="Docker network driver for pymacvtap (libnetwork remote driver).",
    )
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help="the plugin socket Docker finds")
    parser.add_argument("--state", default=DEFAULT_STATE, help="the driver's JSON state file")
    parser.add_argument("--control", default=None, help="the pymacvtap daemon's control socket")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="pymacvtap-docker: %(message)s",
    )
    try:
        store = Store(args.state)
    except DriverError as exc:
        print(f"pymacvtap-docker: {exc}", file=sys.stderr)
        return 1
    server = PluginServer(args.socket, Driver(store, control_client(args.control)))

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("listening on %s", args.socket)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
