"""The lab with one lower and a daemon on it: what most daemon tests start from."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tests.lab.daemon import DaemonProcess
from tests.lab.topology import Lab


@contextlib.contextmanager
def lab_with_lower(subnet: str, lower_mac: bytes, lower: str = "low0") -> Iterator[Lab]:
    """SPEC 8's lab: the outside host at ``subnet``.100/24, one hairpin lower."""
    with Lab(ext_ip=f"{subnet}.100/24") as lab:
        lab.add_lower(lower, lower_mac, hairpin=True)
        yield lab


@contextlib.contextmanager
def running_daemon(
    lab: Lab, workdir: Path, *, must_survive: bool = False
) -> Iterator[DaemonProcess]:
    """A started daemon in the lab's host namespace, stopped and cleaned up afterwards.

    Its log is printed at the end (pytest shows it only for a failed test);
    ``must_survive`` fails the test if the daemon died during it.
    """
    proc = DaemonProcess(lab.host, workdir)
    proc.start()
    try:
        yield proc
        if must_survive:
            assert proc.proc is not None and proc.proc.poll() is None, proc.log()
    finally:
        proc.cleanup()
        print(proc.log())
