"""Kernel + initramfs for tiny test VMs, built from Debian packages into a shared cache.

The kernel is a Debian ``linux-image-*`` package fetched with ``apt-get download`` and unpacked with
``dpkg -x`` (never installed on the host). The initramfs is written here in pure Python (newc cpio,
gzip): the host's static busybox (package ``busybox-static``), the kernel modules virtio_net needs
(with their dependencies from the modules' own ``depends=`` info, as the .deb has no modules.dep)
and ``init.sh`` as ``/init``.

Cache layout (default ``/var/cache/pymacvtap-test-vm``; world-readable, so QEMU may run as any
user)::

    <package>_<version>/kernel.deb        the downloaded package (kept to build other initramfs)
    <package>_<version>/vmlinuz
    <package>_<version>/initramfs-<key>.cpio.gz   key = hash of modules, busybox, init, lib.sh

Everything is built in a temporary name and renamed into place, under an flock, so concurrent
test processes and interrupted runs never see a partial file.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_CACHE_DIR = Path(os.environ.get("PYMACVTAP_VM_CACHE", "/var/cache/pymacvtap-test-vm"))
# The cloud flavour: a third of the size of the generic kernel, made for virtual machines.
DEFAULT_FLAVOUR = os.environ.get("PYMACVTAP_VM_FLAVOUR", "cloud-amd64")
# Modules /init loads (with their dependencies, in dependency order).
DEFAULT_MODULES = ("virtio_pci", "virtio_net")
BUSYBOX = Path("/bin/busybox")
HERE = Path(__file__).resolve().parent


class VmImageError(RuntimeError):
    """The VM image cannot be built (a host package is missing, apt fails, ...)."""


@dataclass(frozen=True)
class VmImage:
    kernel: Path
    initramfs: Path
    kernel_version: str  # e.g. "6.1.0-56-cloud-amd64"
    package: str  # e.g. "linux-image-6.1.0-56-cloud-amd64_6.1.192-2"
    modules: tuple[str, ...]  # load order


# --------------------------------------------------------------------------- host requirements


def require_host_packages() -> None:
    """Raise VmImageError naming the Debian package that is missing on the host."""
    missing = []
    if shutil.which("qemu-system-x86_64") is None:
        missing.append("qemu-system-x86 (qemu-system-x86_64)")
    if not _is_static_busybox(BUSYBOX):
        missing.append("busybox-static (a statically linked /bin/busybox)")
    for tool, package in (("apt-get", "apt"), ("dpkg", "dpkg")):
        if shutil.which(tool) is None:
            missing.append(f"{package} ({tool})")
    if missing:
        raise VmImageError(
            "test VMs need these Debian packages on the host: "
            + ", ".join(missing)
            + " — apt-get install qemu-system-x86 busybox-static"
        )


def _is_static_busybox(path: Path) -> bool:
    """A 64-bit ELF without a PT_INTERP program header (so it runs without a libc)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:5] != b"\x7fELF\x02":
                return False
            phoff, phentsize, phnum = (
                struct.unpack_from("<Q", head, 32)[0],
                *struct.unpack_from("<HH", head, 54),
            )
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    return all(
        struct.unpack_from("<I", table, i * phentsize)[0] != 3  # PT_INTERP
        for i in range(phnum)
    )


# --------------------------------------------------------------------------- kernel package


def _run(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise VmImageError(f"{cmd[0]} not found: {e}") from e
    except subprocess.CalledProcessError as e:
        raise VmImageError(f"{' '.join(cmd)} failed ({e.returncode}): {e.stderr.strip()}") from e


def _apt_field(package: str, field: str) -> str:
    out = _run(["apt-cache", "show", "--no-all-versions", package]).stdout
    m = re.search(rf"^{field}: (.*)$", out, re.MULTILINE)
    if not m:
        raise VmImageError(f"apt-cache show {package}: no {field} field")
    return m.group(1).strip()


def resolve_kernel_package(flavour: str = DEFAULT_FLAVOUR) -> tuple[str, str]:
    """(package, version) of the newest kernel of a flavour, through its metapackage."""
    depends = _apt_field(f"linux-image-{flavour}", "Depends")
    for alternative in re.split(r"[,|]", depends):
        name = alternative.strip().split(" ")[0]
        if re.fullmatch(rf"linux-image-[0-9][^ ]*-{re.escape(flavour)}(-unsigned)?", name):
            return name, _apt_field(name, "Version")
    raise VmImageError(f"linux-image-{flavour} depends on no kernel image: {depends!r}")


@contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if cache_dir.stat().st_uid == os.geteuid():
            cache_dir.chmod(0o755)
        lock = open(cache_dir / ".lock", "a")  # noqa: SIM115
    except PermissionError as e:
        raise VmImageError(
            f"the VM image cache {cache_dir} must be built first, as root (ensure_vm_image): {e}"
        ) from e
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _find_kernel_dir(cache_dir: Path, flavour: str) -> Path:
    """The cache directory for the newest kernel of a flavour (it may not exist yet).

    Without a working apt (offline), falls back to the newest kernel already in the cache.
    """
    try:
        package, version = resolve_kernel_package(flavour)
    except VmImageError:
        cached = sorted(
            (d for d in cache_dir.glob(f"linux-image-*-{flavour}_*") if (d / "vmlinuz").exists()),
            key=lambda d: d.stat().st_mtime,
        )
        if cached:
            return cached[-1]
        raise
    return cache_dir / f"{package}_{version.replace(':', '%3a')}"


def _download_kernel(kdir: Path) -> None:
    """Fill `kdir` (named <package>_<version>) with kernel.deb, vmlinuz and version."""
    if (kdir / "vmlinuz").exists():
        return
    cache_dir = kdir.parent
    package, _, version = kdir.name.partition("_")
    version = version.replace("%3a", ":")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-kernel-", dir=cache_dir))
    try:
        # apt's sandbox user must be able to write the download directory.
        tmp.chmod(0o777)
        _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=tmp)
        debs = list(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise VmImageError(f"apt-get download {package}: got {debs}")
        debs[0].rename(tmp / "kernel.deb")
        tree = tmp / "tree"
        _run(["dpkg-deb", "-x", str(tmp / "kernel.deb"), str(tree)])
        vmlinuz = next((tree / "boot").glob("vmlinuz-*"))
        shutil.copyfile(vmlinuz, tmp / "vmlinuz")
        (tmp / "version").write_text(vmlinuz.name.removeprefix("vmlinuz-") + "\n")
        shutil.rmtree(tree)
        for f in tmp.iterdir():
            f.chmod(0o644)
        tmp.chmod(0o755)
        tmp.rename(kdir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- modules


def _modinfo(data: bytes) -> dict[str, str]:
    """The .modinfo section of an ELF64 kernel module, as key -> value."""
    if data[:5] != b"\x7fELF\x02":
        raise VmImageError("not an ELF64 kernel module")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return name, offset, size

    _, stroff, _ = section(shstrndx)
    info: dict[str, str] = {}
    for i in range(shnum):
        name, offset, size = section(i)
        if data[stroff + name : data.index(b"\0", stroff + name)] == b".modinfo":
            for entry in data[offset : offset + size].split(b"\0"):
                key, sep, value = entry.decode(errors="replace").partition("=")
                if sep:
                    info.setdefault(key, value)
    return info


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        return _run_bytes(["zstd", "-dc", str(path)])
    return data


def _run_bytes(cmd: Sequence[str]) -> bytes:
    try:
        return subprocess.run(cmd, check=True, capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise VmImageError(f"{' '.join(cmd)}: {e} (zstd modules need the zstd package)") from e


def _norm(name: str) -> str:
    return name.replace("-", "_")


def resolve_modules(modules_dir: Path, wanted: Iterable[str]) -> list[tuple[str, bytes]]:
    """The loadable (name, uncompressed .ko) list for `wanted`, dependencies first.

    Modules built into the kernel (modules.builtin) are skipped; a name that is neither built in
    nor a module is an error.
    """
    files: dict[str, Path] = {}
    for p in (modules_dir / "kernel").rglob("*.ko*"):
        files[_norm(re.sub(r"\.ko(\.(xz|gz|zst))?$", "", p.name))] = p
    builtin = set()
    builtin_list = modules_dir / "modules.builtin"
    if builtin_list.exists():
        for line in builtin_list.read_text().split():
            builtin.add(_norm(Path(line).name.removesuffix(".ko")))
    order: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = _norm(name)
        if name in seen or name in builtin:
            return
        if name in chain:
            raise VmImageError(f"module dependency loop: {' -> '.join((*chain, name))}")
        if name not in files:
            raise VmImageError(f"module {name} is neither built into nor shipped with the kernel")
        data = _read_module(files[name])
        for dep in filter(None, _modinfo(data).get("depends", "").split(",")):
            visit(dep, (*chain, name))
        seen.add(name)
        order.append((name, data))

    for name in wanted:
        visit(name, ())
    return order


# --------------------------------------------------------------------------- cpio


class CpioWriter:
    """A newc ("070701") cpio archive, as the kernel's initramfs unpacker reads it."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        name_b = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(name_b), 0)
        self._ino += 1
        self._buf.write(b"070701" + b"".join(b"%08X" % v for v in fields) + name_b)
        self._pad()
        self._buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self._buf.write(b"\0" * (-self._buf.tell() % 4))

    def dir(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self._dirs:
                self._dirs.add(d)
                self._entry(d, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        name = name.strip("/")
        if "/" in name:
            self.dir(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name.strip("/"), stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        self._buf.write(b"\0" * (-self._buf.tell() % 512))
        return self._buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


def overlay_cpio(files: dict[str, bytes | str], mode: int = 0o755) -> bytes:
    """A gzip'd cpio to append to an initramfs (the kernel unpacks concatenated archives)."""
    w = CpioWriter()
    for name, data in files.items():
        w.file(name, data.encode() if isinstance(data, str) else data, mode)
    return gzip_bytes(w.finish())


def _busybox_applets() -> list[str]:
    out = _run([str(BUSYBOX), "--list-full"]).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def build_initramfs(modules: Sequence[tuple[str, bytes]], busybox: bytes, applets: Sequence[str]):
    w = CpioWriter()
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root"):
        w.dir(d)
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    w.file("bin/busybox", busybox, 0o755)
    for applet in applets:
        if applet.strip("/") != "bin/busybox":
            w.symlink(applet, "/bin/busybox")
    w.file("init", (HERE / "init.sh").read_bytes(), 0o755)
    w.file("pmvt/lib.sh", (HERE / "lib.sh").read_bytes(), 0o644)
    for name, data in modules:
        w.file(f"lib/modules/{name}.ko", data, 0o644)
    w.file("etc/pmvt/modules", "".join(f"{name}\n" for name, _ in modules).encode())
    return gzip_bytes(w.finish())


# --------------------------------------------------------------------------- entry point


def ensure_vm_image(
    cache_dir: Path | None = None,
    *,
    flavour: str = DEFAULT_FLAVOUR,
    extra_modules: Sequence[str] = (),
) -> VmImage:
    """Kernel and initramfs for test VMs, from the cache or built now (needs root to build).

    `extra_modules` (e.g. ``("8021q",)``) are added to the initramfs and loaded at boot.
    """
    require_host_packages()
    cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR)
    wanted = (*DEFAULT_MODULES, *extra_modules)
    busybox = BUSYBOX.read_bytes()
    key_src = hashlib.sha256()
    for part in (
        " ".join(wanted).encode(),
        busybox,
        (HERE / "init.sh").read_bytes(),
        (HERE / "lib.sh").read_bytes(),
        Path(__file__).read_bytes(),
    ):
        key_src.update(hashlib.sha256(part).digest())
    key = key_src.hexdigest()[:16]
    kdir = _find_kernel_dir(cache_dir, flavour)
    initramfs = kdir / f"initramfs-{key}.cpio.gz"
    order_file = kdir / f"initramfs-{key}.modules"
    if not (initramfs.exists() and order_file.exists()):  # else: no lock, works for any user
        with _locked(cache_dir):
            _download_kernel(kdir)
            if not (initramfs.exists() and order_file.exists()):
                _build_initramfs_files(kdir, wanted, busybox, initramfs, order_file)
    return VmImage(
        kernel=kdir / "vmlinuz",
        initramfs=initramfs,
        kernel_version=(kdir / "version").read_text().strip(),
        package=kdir.name,
        modules=tuple(order_file.read_text().split()),
    )


def _build_initramfs_files(
    kdir: Path, wanted: Sequence[str], busybox: bytes, initramfs: Path, order_file: Path
) -> None:
    kernel_version = (kdir / "version").read_text().strip()
    with tempfile.TemporaryDirectory(prefix=".tmp-initramfs-", dir=kdir.parent) as tmp:
        tree = Path(tmp) / "tree"
        _run(["dpkg-deb", "-x", str(kdir / "kernel.deb"), str(tree)])
        modules = resolve_modules(tree / "lib/modules" / kernel_version, wanted)
        data = build_initramfs(modules, busybox, _busybox_applets())
        for old in kdir.glob("initramfs-*"):  # prune what no run used for two weeks
            if time.time() - old.stat().st_atime > 14 * 86400:
                old.unlink(missing_ok=True)
        for path, content in (
            (order_file, "".join(f"{n}\n" for n, _ in modules).encode()),
            (initramfs, data),
        ):
            part = Path(tmp) / path.name
            part.write_bytes(content)
            part.chmod(0o644)
            part.rename(path)
