"""packaging/: install.sh into a temp prefix, the systemd unit, sd_notify, man page, completion."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab.daemon import DaemonProcess, as_user_argv
from lab.readme import ROOT as REPO
from lab.readme import code_blocks
from lab.users import temporary_user
from pymacvtap.cli import RunDaemon, parse
from pymacvtap.io.caps import DAEMON_CAPABILITIES

PKG = REPO / "packaging"
COMMANDS = ("pymacvtap", "pymacvtap-qemu-helper", "pymacvtap-cni")


class Installed:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = root / "opt" / "pymacvtap"
        self.bin = root / "bin"
        self.unit = root / "systemd" / "pymacvtap.service"
        self.conf = root / "etc" / "pymacvtap" / "pymacvtap.conf"
        self.man = root / "man"
        self.completion = root / "completions" / "pymacvtap"


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    """`packaging/install.sh PREFIX` with every directory in a world-readable temp dir."""
    root = Path(tempfile.mkdtemp(prefix="pymacvtap-install-"))
    root.chmod(0o755)
    inst = Installed(root)
    env = dict(
        os.environ,
        BINDIR=str(inst.bin),
        SYSCONFDIR=str(root / "etc"),
        UNITDIR=str(inst.unit.parent),
        MANDIR=str(inst.man),
        COMPLETIONDIR=str(inst.completion.parent),
        CREATE_GROUP="0",
    )
    env.pop("DESTDIR", None)
    env.pop("VIRTUAL_ENV", None)
    try:
        proc = subprocess.run(
            ["sh", str(PKG / "install.sh"), str(inst.prefix)],
            env=env, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        yield inst
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_install_sh_gives_every_user_working_commands(installed: Installed) -> None:
    for cmd in COMMANDS:
        link = installed.bin / cmd
        assert link.is_symlink() and os.readlink(link) == str(installed.prefix / "bin" / cmd)
    assert (installed.man / "man8" / "pymacvtap.8").read_bytes() == (
        PKG / "pymacvtap.8"
    ).read_bytes()
    assert installed.completion.exists() and installed.conf.exists()
    # Not editable: the package was copied into the venv, schemas included.
    probe = (
        "import pymacvtap, importlib.resources as r;print(pymacvtap.__file__);"
        "print(sorted(p.name for p in (r.files('pymacvtap')/'schemas').iterdir()));"
        "print((r.files('pymacvtap')/'bpf'/'fastpath.bpf.o').is_file())"
    )
    out = subprocess.check_output(
        [installed.prefix / "bin" / "python", "-c", probe], text=True, cwd="/"
    )
    where, schemas, fast_path = out.splitlines()
    assert where.startswith(str(installed.prefix)), where
    assert schemas == "['link-show.schema.json', 'lower-show.schema.json', 'monitor.schema.json']"
    assert fast_path == "True"  # the programs `make bpf` compiled travel with the package

    with temporary_user() as user:

        def run_as_user(*argv: str, env: dict[str, str] | None = None) -> str:
            proc = subprocess.run(
                as_user_argv(user.pw_uid, user.pw_gid, list(argv)),
                capture_output=True, text=True, check=False, cwd="/", timeout=60,
                env={"PATH": "/usr/bin:/bin", **(env or {})},
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            return proc.stdout

        help_text = run_as_user(str(installed.bin / "pymacvtap"), "--help")
        assert help_text.startswith("pymacvtap - user-space macvlan/macvtap")
        assert "link add" in run_as_user(str(installed.bin / "pymacvtap"), "link", "add", "--help")
        cni = run_as_user(str(installed.bin / "pymacvtap-cni"), env={"CNI_COMMAND": "VERSION"})
        assert json.loads(cni)["supportedVersions"][-1] == "1.1.0"
        helper = subprocess.run(
            as_user_argv(user.pw_uid, user.pw_gid, [str(installed.bin / "pymacvtap-qemu-helper"),
                                                    "--help"]),
            capture_output=True, text=True, check=False, cwd="/",
        )  # fmt: skip
        assert "Traceback" not in helper.stderr


def test_systemd_unit_verifies(installed: Installed, tmp_path: Path) -> None:
    text = installed.unit.read_text()
    # install.sh pointed ExecStart at the command it linked.
    assert f"ExecStart={installed.bin}/pymacvtap daemon " in text
    assert f"EnvironmentFile=-{installed.conf}" in text
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "RuntimeDirectory=pymacvtap",
        "StateDirectory=pymacvtap",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_PACKET",
    ):
        assert line in text.splitlines(), line
    # The unit grants exactly what the daemon keeps after setup (io/caps.py, SECURITY.md).
    for key in ("CapabilityBoundingSet", "AmbientCapabilities"):
        [granted] = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith(key + "=")]
        assert set(granted.split()) == set(DAEMON_CAPABILITIES), key
    env = dict(os.environ, MANPATH=f"{installed.man}:")  # Documentation=man:pymacvtap(8)

    def verify(unit: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemd-analyze", "verify", str(unit)],
            env=env, capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip

    proc = verify(installed.unit)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    broken = tmp_path / "pymacvtap.service"
    broken.write_text(text.replace("Type=notify", "Type=notifyy"))
    proc = verify(broken)
    assert "notifyy" in proc.stderr
    # The configuration file is valid shell/EnvironmentFile syntax with the documented default.
    args = subprocess.check_output(
        ["sh", "-c", f'. "{installed.conf}" && printf %s "$PYMACVTAP_ARGS"'], text=True
    )
    assert args == "--admin-group pymacvtap"


def test_daemon_notifies_systemd_when_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    notify.bind(str(path))
    notify.settimeout(15)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    with Lab() as lab, DaemonProcess(lab.host, tmp_path) as daemon:
        message = notify.recv(4096).decode()
        assert "READY=1" in message.split("\n")
        assert daemon.cli("link", "show") == ""  # ready means: answering
    notify.close()


def test_man_page_renders_without_warnings_and_matches_help() -> None:
    proc = subprocess.run(
        ["man", "--warnings=w", "-l", str(PKG / "pymacvtap.8")],
        env=dict(os.environ, MANWIDTH="80"),
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    page = re.sub(".\x08", "", proc.stdout)  # overstrike (bold) to plain text
    assert "PYMACVTAP(8)" in page and "link add link LOWER name NAME" in page
    # Everything the --help texts offer is in the page.
    helps = {
        args: subprocess.check_output(
            ["python3", "-m", "pymacvtap", *args, "--help"], text=True, cwd=REPO
        )
        for args in ((), ("link", "add"), ("link", "set"), ("daemon",))
    }
    words = set(re.findall(r"^ {4}(--?[a-z][-a-z]*|[a-z]+)\b", helps[()], re.M))
    words |= set(re.findall(r"^ {4}([a-z][-a-z]*)\b", helps[("link", "add")], re.M))
    words |= set(re.findall(r"^ {4}(--[a-z][-a-z]*)", helps[("daemon",)], re.M))
    words -= {"pymacvtap"}
    assert {"--socket", "bcqueuelen", "nopromisc", "--metrics", "capture"} <= words
    missing = sorted(w for w in words if w not in page)
    assert missing == []
    synopsis = re.sub(r"\s+", " ", helps[()].split("DESCRIPTION")[0])
    for line in re.findall(r"pymacvtap \[OPTIONS\] ([a-z ]+)", synopsis):
        assert line.strip() in re.sub(r"\s+", " ", page), line


def test_bash_completion_sources_cleanly_and_completes() -> None:
    script = f"""
source {PKG / "pymacvtap.bash-completion"}
complete -p pymacvtap
t() {{ COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
       _pymacvtap; echo "${{COMPREPLY[*]}}"; }}
t pymacvtap link a
t pymacvtap -j link s
t pymacvtap link add link eth0 type m
t pymacvtap link add frontend v
t pymacvtap daemon --m
t pymacvtap mon
"""
    proc = subprocess.run(["bash", "--norc", "-c", script], capture_output=True, text=True,
                          check=False)  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "complete -F _pymacvtap pymacvtap"
    assert lines[1:] == ["add", "show set", "macvlan macvtap", "vhost-user", "--metrics",
                         "monitor"]  # fmt: skip


def test_the_documented_service_configuration(installed: Installed, tmp_path: Path) -> None:
    """The PYMACVTAP_ARGS line of docs/service.md is options the daemon takes, and its drop-in,
    added to the installed unit, still verifies."""
    section, doc = "Daemon options", "docs/service.md"
    conf_block, drop_in = code_blocks(section, "sh", doc) + code_blocks(section, "ini", doc)
    args = subprocess.check_output(
        ["sh", "-c", f'{conf_block}\nprintf %s "$PYMACVTAP_ARGS"'], text=True
    )
    _opts, parsed = parse(["daemon", *shlex.split(args)])
    assert isinstance(parsed, RunDaemon)
    assert (parsed.args.admin_group, parsed.args.metrics) == ("pymacvtap", "127.0.0.1:9477")
    unit_dir = tmp_path / "units"
    (unit_dir / "pymacvtap.service.d").mkdir(parents=True)
    shutil.copy(installed.unit, unit_dir / "pymacvtap.service")
    (unit_dir / "pymacvtap.service.d" / "metrics.conf").write_text(drop_in)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit_dir / "pymacvtap.service")],
        env=dict(os.environ, MANPATH=f"{installed.man}:", SYSTEMD_UNIT_PATH=f"{unit_dir}:"),
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "AF_INET" in drop_in
