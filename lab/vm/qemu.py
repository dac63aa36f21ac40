"""Boot tiny test VMs with QEMU (TCG) and read their results from the serial console.

Example::

    image = ensure_vm_image()
    nic = Nic("dgram,local.type=unix,local.path=/tmp/x/a.sock,remote.type=unix,"
              "remote.path=/tmp/x/b.sock", ip="10.77.0.1/24")
    with boot_vm(image, nic, ping=["10.77.0.2"]) as vm:
        vm.wait(timeout=60)
        assert vm.results["ping:10.77.0.2"].ok, vm.output

The guest (see init.sh) configures static addresses from the kernel command line, pings the
`ping` targets, runs `script` (busybox sh, with lib.sh's pmvt_ping/pmvt_result/pmvt_mark), prints
``PMVT-*`` markers and powers off — or, with ``stay=True``, stays up answering pings and running
``vm.run("command")`` sent through the serial console. QEMU is always killed when the `Vm` is
closed (context manager, `close()`, or at interpreter exit), with its whole process group.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lab.vm.image import VmImage, overlay_cpio

QEMU = "qemu-system-x86_64"
_live: set[Vm] = set()
_macs: set[str] = set()
_user_counter = itertools.count(1)


class VmError(AssertionError):
    """The VM did not do what was expected in time; the message carries the serial output."""


@dataclass(frozen=True)
class Nic:
    """One virtio NIC: ``-netdev <netdev>,id=nI -device <device>,netdev=nI,mac=<mac>``.

    `netdev` is the backend without ``id``, e.g. ``"tap,ifname=t0,script=no,downscript=no"``,
    ``"dgram,local.type=unix,local.path=A,remote.type=unix,remote.path=B"`` or
    ``"stream,server=off,addr.type=unix,addr.path=P"``. The NIC is ethI in the guest (in order).
    """

    netdev: str
    ip: str | None = None  # "10.77.0.21/24", configured in the guest
    mac: str | None = None  # default: new_mac()
    device: str = "virtio-net-pci"
    device_opts: str = ""  # e.g. "mq=on,vectors=6"


@dataclass(frozen=True)
class Result:
    name: str
    status: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def new_mac() -> str:
    """A random 52:54:00:xx:xx:xx (QEMU's prefix) MAC, unique within this process."""
    while True:
        mac = "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))
        if mac not in _macs:
            _macs.add(mac)
            return mac


class Vm:
    """A running QEMU; use `boot_vm` to make one."""

    def __init__(
        self,
        image: VmImage,
        nics: Sequence[Nic],
        *,
        script: str = "",
        ping: Sequence[str] = (),
        ping_count: int = 3,
        ping_wait: int = 30,
        stay: bool = False,
        gateway: str | None = None,
        memory: int = 192,
        shared_memory: bool = False,
        user: str | None = None,
        netns: str | None = None,
        extra_args: Sequence[str] = (),
        extra_cmdline: Sequence[str] = (),
        ipv6: bool = False,
        name: str = "vm",
        smp: int = 1,
        env: Mapping[str, str] | None = None,
        argv_prefix: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.image = image
        self.nics = [n if n.mac else dataclasses.replace(n, mac=new_mac()) for n in nics]
        self.user = user
        self.netns = netns
        self.lines: list[str] = []
        self.results: dict[str, Result] = {}
        self.started = time.monotonic()
        self.booted_after: float | None = None  # seconds from start to PMVT-BOOTED
        self._cond = threading.Condition()
        self._cmd_ids = itertools.count(1)
        self._closed = False
        self.tmpdir = Path(tempfile.mkdtemp(prefix=f"pmvt-{name}-"))
        try:
            uid = gid = None
            if user is not None:
                pw = pwd.getpwnam(user)
                uid, gid = pw.pw_uid, pw.pw_gid
                os.chown(self.tmpdir, uid, gid)
            self.tmpdir.chmod(0o755)

            # Per-VM initrd: the shared image + a small appended archive (the kernel unpacks both).
            overlay: dict[str, bytes | str] = {}
            if script:
                overlay["pmvt/script"] = script
            initrd = self.tmpdir / "initrd"
            base = image.initramfs.read_bytes()
            initrd.write_bytes(
                base + b"\0" * (-len(base) % 4) + (overlay_cpio(overlay) if overlay else b"")
            )
            initrd.chmod(0o644)

            cmdline = ["console=ttyS0", "panic=-1", "quiet", "loglevel=3", "8250.nr_uarts=1"]
            if not ipv6:
                cmdline.append("ipv6.disable=1")
            for i, nic in enumerate(self.nics):
                if nic.ip:
                    cmdline.append(f"pmvt.eth{i}={nic.ip}")
            if gateway:
                cmdline.append(f"pmvt.gw={gateway}")
            if ping:
                cmdline += [f"pmvt.ping={','.join(ping)}", f"pmvt.count={ping_count}"]
                cmdline.append(f"pmvt.wait={ping_wait}")
            if stay:
                cmdline.append("pmvt.stay=1")
            cmdline += extra_cmdline

            argv = [
                QEMU,
                "-name", name,
                "-accel", "tcg",
                "-machine", "pc",
                "-smp", str(smp),
                "-m", str(memory),
                "-nodefaults", "-no-user-config",
                "-display", "none",
                "-monitor", "none",
                "-serial", "stdio",
                "-no-reboot",
                "-kernel", str(image.kernel),
                "-initrd", str(initrd),
                "-append", " ".join(cmdline),
            ]  # fmt: skip
            if shared_memory:  # guest RAM in a shared memfd, as vhost-user back-ends need
                argv += [
                    "-object", f"memory-backend-memfd,id=mem,size={memory}M,share=on",
                    "-machine", "memory-backend=mem",
                ]  # fmt: skip
            for i, nic in enumerate(self.nics):
                opts = f"{nic.device},netdev=n{i},mac={nic.mac}"
                if nic.device.endswith("-pci"):
                    opts += ",romfile="  # no iPXE option ROM: faster, and ipxe-qemu not needed
                if nic.device_opts:
                    opts += "," + nic.device_opts
                argv += ["-netdev", f"{nic.netdev},id=n{i}", "-device", opts]
            argv += list(extra_args)
            # setpriv: the parent-death signal (QEMU dies with the test process even when no cleanup
            # code runs), and the user to run as. It execs QEMU, so the pid stays the same.
            wrap = ["setpriv", "--pdeathsig=KILL"]
            if user is not None:
                wrap += [f"--reuid={uid}", f"--regid={gid}", "--init-groups"]
            argv = [*wrap, "--", *argv_prefix, *argv]
            if netns is not None:
                argv = ["ip", "netns", "exec", netns, *argv]
            self.argv = argv
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.tmpdir,
                env=None if env is None else {**os.environ, **env},
                start_new_session=True,
            )
        except BaseException:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            raise
        _live.add(self)
        self._reader = threading.Thread(target=self._read, name=f"{name}-serial", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ serial output

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n").replace("\r", "")
            with self._cond:
                self.lines.append(line)
                m = re.search(r"PMVT-RESULT (\S+) (\S+) ?(.*)$", line)
                if m:
                    self.results[m[1]] = Result(m[1], m[2], m[3].strip())
                if self.booted_after is None and "PMVT-BOOTED" in line:
                    self.booted_after = time.monotonic() - self.started
                self._cond.notify_all()
        self.proc.wait()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def _fail(self, what: str) -> VmError:
        return VmError(
            f"VM {self.name}: {what} after {time.monotonic() - self.started:.1f}s "
            f"(qemu exit={self.proc.poll()})\n--- argv: {shlex.join(self.argv)}\n"
            f"--- serial output:\n{self.output}"
        )

    def wait_for_marker(self, text: str | re.Pattern[str], timeout: float = 60.0) -> str:
        """Block until a console line contains `text` (or matches the pattern); return the line.

        Lines seen before the call count. Raises VmError on timeout or when QEMU exits first.
        """
        return self._wait_line(text, 0, timeout)

    def _wait_line(self, text: str | re.Pattern[str], start: int, timeout: float) -> str:
        def hit(line: str) -> bool:
            return text in line if isinstance(text, str) else text.search(line) is not None

        deadline = time.monotonic() + timeout
        pos = start
        with self._cond:
            while True:
                for line in self.lines[pos:]:
                    if hit(line):
                        return line
                pos = len(self.lines)
                if not self._reader.is_alive():
                    raise self._fail(f"exited before {text!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._fail(f"no {text!r}")
                self._cond.wait(left)

    def wait(self, timeout: float = 90.0) -> dict[str, Result]:
        """Wait for the guest to finish and power off; return its results.

        On timeout QEMU is killed and VmError raised; also if PMVT-DONE never came.
        """
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._fail("did not power off") from None
        self._reader.join(5)
        if not any("PMVT-DONE" in line for line in self.lines):
            raise self._fail("powered off without PMVT-DONE")
        return dict(self.results)

    def check(self, *names: str) -> None:
        """Raise VmError unless each named result (all results if none named) is ok."""
        with self._cond:
            wanted = names or tuple(self.results)
            bad = [n for n in wanted if n not in self.results or not self.results[n].ok]
        if bad:
            raise self._fail(f"results not ok: {bad}")

    # ------------------------------------------------------------------ command loop (stay=True)

    def run(self, command: str, timeout: float = 60.0) -> tuple[int, str]:
        """Run a one-line shell command in a ``stay=True`` guest; return (exit code, output)."""
        if "\n" in command:
            raise ValueError("one line only")
        self.wait_for_marker("PMVT-READY", timeout)
        cid = next(self._cmd_ids)
        with self._cond:
            start = len(self.lines)
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"PMVT-CMD {cid} {command}\n".encode())
        self.proc.stdin.flush()
        end = self._wait_line(re.compile(rf"PMVT-END {cid} -?\d+$"), start, timeout)
        with self._cond:
            lines = self.lines[start:]
        begin = next(i for i, line in enumerate(lines) if line == f"PMVT-BEGIN {cid}")
        stop = lines.index(end, begin)
        return int(end.rsplit(" ", 1)[1]), "\n".join(lines[begin + 1 : stop])

    # ------------------------------------------------------------------ lifetime

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.kill()
        self._reader.join(5)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                if f is not None:
                    f.close()
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        _live.discard(self)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def boot_vm(
    image: VmImage,
    nics: Nic | Sequence[Nic] = (),
    *,
    script: str = "",
    ping: Sequence[str] = (),
    ping_count: int = 3,
    ping_wait: int = 30,
    stay: bool = False,
    gateway: str | None = None,
    memory: int = 192,
    shared_memory: bool = False,
    user: str | None = None,
    netns: str | None = None,
    extra_args: Sequence[str] = (),
    extra_cmdline: Sequence[str] = (),
    ipv6: bool = False,
    name: str = "vm",
    smp: int = 1,
    env: Mapping[str, str] | None = None,
    argv_prefix: Sequence[str] = (),
) -> Vm:
    """Start a VM (returns at once; use `wait`, `wait_for_marker`, `run`, and close it).

    `user`: run QEMU as this user (setpriv); the image must be readable by it (the default cache
    is), the per-VM files are in a private temp dir chowned to it, and the netdev sockets'
    directory must be writable by it. `netns`: run QEMU in that named netns (``ip netns exec``),
    e.g. to open a tap created there. `shared_memory`: guest RAM in a shared memfd (for
    ``-netdev vhost-user``: pass ``Nic("vhost-user,chardev=c0", device_opts="vectors=0")`` and
    ``extra_args=["-chardev", "socket,id=c0,path=PATH"]``; QEMU 7.2 under TCG segfaults starting
    vhost-user with MSI-X, hence ``vectors=0``). `extra_args`: more QEMU arguments.
    `smp`: guest CPUs (2 to use two queues of a multi-queue NIC). `env`: added to QEMU's
    environment (which QEMU passes on, e.g. to a ``helper=``). `argv_prefix`: a command that
    runs QEMU, put before it (after the user switch), e.g.
    ``["pymacvtap", "exec", "vm0", "--"]``; it must exec QEMU so the pid stays QEMU's.
    """
    return Vm(
        image,
        [nics] if isinstance(nics, Nic) else list(nics),
        script=script,
        ping=ping,
        ping_count=ping_count,
        ping_wait=ping_wait,
        stay=stay,
        gateway=gateway,
        memory=memory,
        shared_memory=shared_memory,
        user=user,
        netns=netns,
        extra_args=extra_args,
        extra_cmdline=extra_cmdline,
        ipv6=ipv6,
        name=name,
        smp=smp,
        env=env,
        argv_prefix=argv_prefix,
    )


def kill_all_vms() -> None:
    for vm in list(_live):
        vm.close()


atexit.register(kill_all_vms)


def open_dir(
    stack: contextlib.ExitStack, prefix: str, owner: pwd.struct_passwd | None = None
) -> Path:
    """A temporary directory every user may traverse (0755), given to ``owner`` if any.

    VM users cannot read the checkout or the test's own 0700 tmp dirs, so what
    they need (the helper script, their dgram socket) goes here; ``stack``
    removes it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    stack.callback(shutil.rmtree, path, True)
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def temporary_user(prefix: str = "pmvtvm") -> Iterator[pwd.struct_passwd]:
    """A throwaway system user (no home, no login shell), removed afterwards."""
    name = f"{prefix}{os.getpid() % 100000}x{next(_user_counter)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--user-group", "--shell",
         "/usr/sbin/nologin", name],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)
