"""A container image without a registry: a busybox root file system as a tar, for
``docker import`` and ``podman import``."""

from __future__ import annotations

import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # busybox-static: runs in an empty root
APPLETS = ("sh", "sleep", "ping", "ip", "cat", "hostname")


def busybox_rootfs(path: Path) -> None:
    """A tar of a root file system holding busybox and the applets the tests run."""
    with tarfile.open(path, "w") as tar:
        for directory in ("bin", "proc", "sys", "dev", "etc", "tmp", "run"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(str(BUSYBOX), "bin/busybox")
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
