"""A TCP receiver in a namespace that counts and hashes what one connection sends.

Transfers through the daemon are checked end to end this way: the sender prints or
knows the digest of what it sent, the receiver reports ``(bytes, hexdigest)``.
"""

from __future__ import annotations

import subprocess
import sys

# Runs in the namespace, possibly as another interpreter (the system one for tests whose
# checkout the test user cannot read): the standard library only.
_SCRIPT = r"""
import hashlib, socket, sys
port, algorithm, limit = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
server = socket.create_server(("0.0.0.0", port))
server.settimeout(120)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(120)
digest, got = hashlib.new(algorithm), 0
# limit: stop after that many bytes, for a sender that never closes (busybox nc).
while not limit or got < limit:
    data = conn.recv(1 << 20)
    if not data:
        break
    digest.update(data)
    got += len(data)
conn.close()
print(got, digest.hexdigest(), flush=True)
"""


class DigestReceiver:
    """Listening on ``port`` in ``netns`` once constructed; :meth:`result` after the transfer."""

    def __init__(
        self,
        netns: str,
        port: int,
        *,
        algorithm: str = "sha256",
        limit: int = 0,
        python: str = sys.executable,
    ) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, python, "-c", _SCRIPT, str(port), algorithm,
             str(limit)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            self.close()
            raise AssertionError(f"the receiver in {netns} did not start: {ready!r}")

    def result(self, timeout: float = 120) -> tuple[int, str]:
        """(bytes received, hex digest of them), once the connection has ended."""
        out, _ = self.proc.communicate(timeout=timeout)
        size, digest = out.split()
        return int(size), digest

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> DigestReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
