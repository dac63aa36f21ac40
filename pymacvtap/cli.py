"""``pymacvtap``: the iproute2-style command line (SPEC 4).

The grammar is ``ip link``'s: keywords followed by their values, in any order.
Parsing is plain functions from words to a :class:`Command` (verb + protocol
arguments), so the tests can check every form without a daemon.

Exit status: 0 success, 1 the request failed (one line on stderr:
``pymacvtap: link add vm0: <cause>``), 2 the command line is wrong (one line
naming the bad word).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import difflib
import grp
import importlib
import json
import os
import pwd
import struct
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, NoReturn, TextIO

from pymacvtap import __version__
from pymacvtap.config import FRONTENDS, TYPES
from pymacvtap.control.client import (
    DEFAULT_SOCKET,
    Client,
    ClientError,
    RemoteError,
)
from pymacvtap.control.protocol import MACADDR_OPS, with_prefix
from pymacvtap.core.modes import MODE_BY_NAME

PROG = "pymacvtap"
REQUEST_TIMEOUT = 120.0  # seconds; link add may create devices in other namespaces
MODES = tuple(MODE_BY_NAME)

# -- help texts ---------------------------------------------------------------------------

HELP_TOP = """\
pymacvtap - user-space macvlan/macvtap endpoints, managed like `ip link`

SYNOPSIS
    pymacvtap [OPTIONS] link show [NAME]
    pymacvtap [OPTIONS] link add link LOWER name NAME type {macvlan|macvtap} [ATTRS...]
    pymacvtap [OPTIONS] link set NAME [up|down] [address MAC] [mtu N] [mode MODE]
                                      [spoofchk {on|off}] [macaddr {add|del|set|flush} [MAC...]]
    pymacvtap [OPTIONS] link del NAME
    pymacvtap [OPTIONS] monitor
    pymacvtap [OPTIONS] exec NAME [queues N] -- COMMAND [ARG...]
    pymacvtap [OPTIONS] capture NAME [-w FILE.pcap] [-c COUNT]
    pymacvtap [OPTIONS] version
    pymacvtap daemon [--socket PATH] [--state-dir DIR] [--admin-group GROUP]
                     [--metrics ADDR:PORT]

DESCRIPTION
    pymacvtap gives a lower Ethernet device macvlan endpoints (network devices for
    containers and the host) and macvtap endpoints (ports for virtual machines), with the
    kernel's modes: private, vepa, bridge, passthru and source.  The forwarding runs in the
    `pymacvtap daemon` process; every other command talks to it over its control socket.

    Words may be abbreviated where `ip` allows it (`pymacvtap l sh` is `link show`).

OPTIONS (before the command)
    -j, --json         print JSON (link show: a list of objects; monitor: one object
                       per line; link add and link set: the endpoint as it now is)
    -p, --pretty       indent JSON output
    -s, --stats        link show: include RX/TX statistics
    -d, --details      accepted for `ip` habits; details are always shown
    --socket PATH      the daemon's control socket (default $PYMACVTAP_SOCKET, else
                       {default})
    -V, --version      print the version of this program and exit
    -h, --help         this text; `pymacvtap COMMAND --help` explains a command

COMMANDS
    link show      list endpoints, or one endpoint           (pymacvtap link show --help)
    link add       create an endpoint                        (pymacvtap link add --help)
    link set       change an endpoint                        (pymacvtap link set --help)
    link del       remove an endpoint                        (pymacvtap link del --help)
    monitor        print events as they happen               (pymacvtap monitor --help)
    exec           run a VM with the endpoint's tap queues   (pymacvtap exec --help)
    capture        record an endpoint's frames               (pymacvtap capture --help)
    version        print this program's and the daemon's versions
    daemon         run the daemon                            (pymacvtap daemon --help)

PERMISSIONS
    Any local user may connect to the control socket; each request is authorized by the
    caller's credentials.  root and members of the daemon's --admin-group may do
    everything; an endpoint's owner and group may show it; everyone else is refused.

ENVIRONMENT
    PYMACVTAP_SOCKET   the control socket, unless --socket is given

EXIT STATUS
    0 success; 1 the daemon refused or could not be reached (one line on stderr saying
    why); 2 the command line is wrong (one line naming the bad word).

EXAMPLES
    pymacvtap link add link eth0 name c1 type macvlan mode bridge netns c1
    pymacvtap link add link eth0 name vm0 type macvtap frontend vhost-user owner alice
    pymacvtap link set vm0 down
    pymacvtap -s link show vm0
    pymacvtap -j monitor
"""

HELP_LINK = """\
pymacvtap link - manage endpoints

SYNOPSIS
    pymacvtap [-j] [-s] link show [[dev] NAME]
    pymacvtap link add link LOWER name NAME type {macvlan|macvtap} [ATTRS...]
    pymacvtap link set [dev] NAME [CHANGES...]
    pymacvtap link del [dev] NAME

    `pymacvtap link` alone is `link show`.  `delete`, `list`, `lst` and `ls` are accepted
    for `del` and `show`, and subcommands may be abbreviated (`link sh`).

    See `pymacvtap link show --help`, `link add --help`, `link set --help` and
    `link del --help` for each subcommand.
"""

HELP_SHOW = """\
pymacvtap link show - list endpoints

SYNOPSIS
    pymacvtap [-j [-p]] [-s] link show [[dev] NAME]

DESCRIPTION
    Without NAME, every endpoint the caller may see (root and the admin group see all;
    others see the endpoints they own or whose group they are in).  With NAME, that
    endpoint only.  The text output resembles `ip -d link show`:

        vm0@eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP
            link/ether 02:12:34:56:78:9a
            macvtap mode vepa bcqueuelen 1000 spoofchk off
            frontend tap netdev vm0 queues 2 owner 1000 group 1000

    The state is UP, DOWN (set down) or LOWERLAYERDOWN (up, but its lower is down).

OPTIONS
    NAME, dev NAME   the endpoint to show
    -s               add RX and TX counters (bytes, packets, errors, dropped; RX
                     multicast), like `ip -s link`, and the frames dropped or refused
                     by reason (spoofed, oversize_from_endpoint, rx_queue_full, ...)
    -j               print a JSON list of objects with ifname, link, type, mode, address,
                     mtu, operstate, frontend, path, netns, owner, group, queues,
                     spoofchk; with -s also stats64: {rx: {bytes, packets, errors,
                     dropped, multicast}, tx: {bytes, packets, errors, dropped}} and
                     drops: {REASON: count}
    -p               indent the JSON

EXAMPLES
    pymacvtap link show
    pymacvtap -s link show vm0
    pymacvtap -j -s link show | jq '.[].stats64.rx.packets'
"""

HELP_ADD = """\
pymacvtap link add - create an endpoint

SYNOPSIS
    pymacvtap link add link LOWER name NAME type {macvlan|macvtap}
                       [mode MODE] [address MAC] [netns NS] [ifname IFNAME]
                       [frontend {tap|stream|dgram|vhost-user}] [path PATH] [peer PATH]
                       [owner UID] [group GID] [queues N] [mtu N] [bcqueuelen N]
                       [spoofchk {on|off}] [nopromisc]

DESCRIPTION
    Creates endpoint NAME on the lower device LOWER.  Keywords may come in any order;
    `name` may be left out before NAME (`link add vm0 link eth0 type macvtap`), and
    `dev NAME` means `name NAME`.  Nothing is left behind when creation fails.
    macvlan endpoints start down (like `ip link add`); macvtap endpoints start up.

OPTIONS
    link LOWER         the Ethernet device frames go out of and come in from (required)
    name NAME          the endpoint's name, unique in the daemon (required)
    type macvlan       a network device, for containers or the host
    type macvtap       a port for a virtual machine (see frontend)
    mode MODE          private, vepa (default), bridge, passthru or source:
                         private   never talks to other endpoints of the lower
                         vepa      endpoint to endpoint only through the external switch
                         bridge    bridge endpoints talk to each other directly
                         passthru  the one endpoint of the lower; takes all its traffic
                         source    receives frames whose source is in its macaddr list
    address MAC        the endpoint's unicast MAC (default: a random local address)
    netns NS           put the network device into namespace NS: a name under
                       /run/netns or a path such as /proc/PID/ns/net (frontend tap)
    ifname IFNAME      the network device's name (default NAME; at most 15 characters)
    frontend FE        how the endpoint's user reaches it:
                         tap          a network device / tap (default)
                         stream       a Unix stream socket for QEMU -netdev stream
                         dgram        a Unix datagram socket for QEMU -netdev dgram
                         vhost-user   a vhost-user backend socket
    path PATH          the socket of a stream, dgram or vhost-user frontend
                       (default /run/pymacvtap/NAME.sock)
    peer PATH          dgram only: where to send before the VM has sent anything
    owner UID          user (name or number) who owns the tap or socket, and may show
                       the endpoint and attach to it
    group GID          group (name or number) likewise
    queues N           macvtap tap and vhost-user: number of queues (1-256, default 1)
    mtu N              the endpoint's MTU (68-65535, default the lower's)
    bcqueuelen N       length of the broadcast queue (default 1000)
    spoofchk on|off    drop frames the endpoint sends with a source MAC not its own
                       (default off)
    nopromisc          passthru only: do not make the lower promiscuous

EXAMPLES
    pymacvtap link add link eth0 name c1 type macvlan mode bridge netns c1
    pymacvtap link add link eth0 name vm0 type macvtap owner alice queues 4
    pymacvtap link add link eth0 name vm1 type macvtap frontend vhost-user \\
              path /run/vm1/net.sock owner qemu group kvm
    pymacvtap link add link eth0 name mon type macvtap mode source frontend stream
"""

HELP_SET = """\
pymacvtap link set - change an endpoint

SYNOPSIS
    pymacvtap link set [dev] NAME [up|down] [address MAC] [mtu N] [mode MODE]
                       [spoofchk {on|off}] [macaddr {add|del|set|flush} [MAC...]]

DESCRIPTION
    Changes the named endpoint; several changes may be given at once.

OPTIONS
    up, down           bring the endpoint up or down (a down endpoint receives and
                       sends nothing)
    address MAC        change its MAC (refused if another endpoint on the lower has it)
    mtu N              change its MTU (68-65535)
    mode MODE          private, vepa, bridge, passthru or source
    spoofchk on|off    drop frames sent with a source MAC not the endpoint's own
    macaddr add MAC... mode source: add MACs to the list of watched sources
    macaddr del MAC... remove them
    macaddr set MAC... replace the list
    macaddr flush      empty the list

EXAMPLES
    pymacvtap link set c1 up
    pymacvtap link set dev vm0 address 02:00:00:00:00:10 mtu 9000
    pymacvtap link set mon macaddr add 52:54:00:00:00:01 52:54:00:00:00:02
"""

HELP_DEL = """\
pymacvtap link del - remove an endpoint

SYNOPSIS
    pymacvtap link del [dev] NAME

DESCRIPTION
    Removes the endpoint: its network device is deleted, its sockets are closed, and a
    `monitor` event says so.  Other endpoints are not disturbed.

EXAMPLES
    pymacvtap link del vm0
    pymacvtap link delete dev c1
"""

HELP_MONITOR = """\
pymacvtap monitor - print the daemon's events as they happen

SYNOPSIS
    pymacvtap [-j] monitor

DESCRIPTION
    Prints one line per event (endpoints added, changed, removed and why, lowers going
    down ...) until interrupted (Ctrl-C) or the daemon stops.  Output is flushed after
    each line, so it can be piped.  Needs root or the admin group.

OPTIONS
    -j                 one JSON object per line

EXAMPLES
    pymacvtap monitor
    pymacvtap -j monitor | jq -c 'select(.event == "link.del")'
"""

HELP_EXEC = """\
pymacvtap exec - run a command (QEMU) with an endpoint's tap queues as open files

SYNOPSIS
    pymacvtap exec NAME [queues N] -- COMMAND [ARG...]

DESCRIPTION
    Asks the daemon for N fresh queue file descriptors of the tap behind macvtap endpoint
    NAME (frontend tap), places them at fds 3, 4, ... and replaces itself with COMMAND,
    which inherits them: what libvirt does for QEMU's `-netdev tap,fds=3:4`.  No root
    and no access to /dev/net/tun is needed: the endpoint's owner and group, root and the
    admin group may ask.  N defaults to the endpoint's `queues`.

EXAMPLES
    pymacvtap exec vm0 -- qemu-system-x86_64 -accel tcg ... \\
        -netdev tap,id=n0,fd=3 -device virtio-net-pci,netdev=n0,mac=MAC
    pymacvtap exec vm1 queues 2 -- qemu-system-x86_64 ... \\
        -netdev tap,id=n0,fds=3:4 -device virtio-net-pci,netdev=n0,mq=on,vectors=6,mac=MAC
"""

HELP_CAPTURE = """\
pymacvtap capture - record the frames of one endpoint, both directions

SYNOPSIS
    pymacvtap capture NAME [-w FILE.pcap] [-c COUNT]

DESCRIPTION
    Streams every frame the endpoint sends ("tx", read from its user) and receives ("rx",
    handed to its user) from the moment the daemon accepts the request.  Without -w, one
    line per frame is printed; with -w the frames are written to FILE as a pcap file
    (link type Ethernet) that tcpdump and Wireshark read; "-w -" writes it to standard
    output.  Offloaded super-frames are recorded as the one large frame they are.
    Once the daemon has accepted, "pymacvtap: capturing on NAME, both directions" is
    printed on standard error (as tcpdump's "listening on"): no frame after that line is
    missed.  The endpoint's owner and group, root and the admin group may capture.  When
    nobody captures, the daemon's data path does no capture work at all.

OPTIONS
    -w FILE     write a pcap file instead of printing a summary per frame
    -c COUNT    stop after COUNT frames (default: until interrupted)

EXAMPLES
    pymacvtap capture vm0 -c 10
    pymacvtap capture vm0 -w vm0.pcap -c 1000 && tcpdump -e -r vm0.pcap
"""

HELP_DAEMON = """\
pymacvtap daemon - run the daemon

SYNOPSIS
    pymacvtap daemon [--socket PATH] [--state-dir DIR] [--admin-group GROUP]
                     [--metrics ADDR:PORT]

DESCRIPTION
    Runs in the foreground in the network namespace of the lower devices, until SIGTERM
    or SIGINT.  Endpoints saved in the state directory are restored at start.  Logs go
    to stderr.  Notifies systemd (Type=notify) when ready.

OPTIONS
    --socket PATH        the control socket (default $PYMACVTAP_SOCKET, else
                         {default}); created mode 0666, its directory 0755
    --state-dir DIR      where the configuration is saved (default /var/lib/pymacvtap)
    --admin-group GROUP  members of GROUP (name or number) may do everything root may
    --metrics ADDR:PORT  serve counters for Prometheus on ADDR:PORT

EXAMPLES
    pymacvtap daemon --admin-group netadm
    PYMACVTAP_SOCKET=/tmp/p.sock pymacvtap daemon --state-dir /tmp/p-state
"""

# -- errors ---------------------------------------------------------------------------------


class UsageError(Exception):
    """A wrong command line: exit 2."""


class Failure(Exception):
    """A failed request: exit 1."""


def _fill(text: str) -> str:
    return text.replace("{default}", DEFAULT_SOCKET)


def _usage(where: str, message: str, help_cmd: str | None = None) -> NoReturn:
    text = f"{where}: {message}" if where else message
    if help_cmd is not None:
        text += f"; see `{' '.join([PROG, *help_cmd.split(), '--help'])}`"
    raise UsageError(text)


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# -- the parsed command -------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    json: bool = False
    pretty: bool = False
    stats: bool = False
    socket: str | None = None


@dataclasses.dataclass
class Command:
    """What to ask the daemon: ``verb`` + ``args``; ``target`` prefixes error messages."""

    verb: str
    args: dict[str, Any]
    target: str


@dataclasses.dataclass
class Help:
    text: str


@dataclasses.dataclass
class Daemon:
    args: argparse.Namespace


@dataclasses.dataclass
class ShowVersion:
    ask_daemon: bool


@dataclasses.dataclass
class Capture:
    name: str
    write: str | None
    count: int | None


@dataclasses.dataclass
class Exec:
    name: str
    queues: int | None
    argv: list[str]


Parsed = Command | Help | Daemon | ShowVersion | Exec | Capture

_GLOBAL_FLAGS = {
    "-j": "json",
    "--json": "json",
    "-json": "json",
    "-p": "pretty",
    "--pretty": "pretty",
    "-pretty": "pretty",
    "-s": "stats",
    "--stats": "stats",
    "-stats": "stats",
    "-statistics": "stats",
    "-d": "details",
    "--details": "details",
    "-details": "details",
}
_HELP_WORDS = ("-h", "--help", "-help")


def parse(argv: Sequence[str]) -> tuple[Options, Parsed]:
    """Words → (options, what to do).  Raises UsageError naming the bad word."""
    opts = Options()
    words = list(argv)
    while words and words[0].startswith("-") and words[0] != "-":
        word = words.pop(0)
        if word in _HELP_WORDS:
            return opts, Help(_fill(HELP_TOP))
        if word in ("-V", "--version", "-Version"):
            return opts, ShowVersion(ask_daemon=False)
        if word == "--socket" or word.startswith("--socket="):
            if "=" in word:
                opts.socket = word.split("=", 1)[1]
            elif words:
                opts.socket = words.pop(0)
            else:
                _usage("", '"--socket" needs a PATH', "")
            if not opts.socket:
                _usage("", '"--socket" needs a PATH', "")
            continue
        flag = _GLOBAL_FLAGS.get(word)
        if flag is None and len(word) > 2 and word[1] != "-":
            # clustered short flags: -js, -sj
            names = [_GLOBAL_FLAGS.get("-" + c) for c in word[1:]]
            if all(names):
                for name in names:
                    _set_flag(opts, str(name))
                continue
        if flag is None:
            _usage(
                "",
                f'option "{word}": unknown (global options: -j, -p, -s, -d, --socket PATH, '
                "-V, --help)",
            )
        _set_flag(opts, flag)
    if not words:
        _usage("", "no command given (link, monitor, version or daemon)", "")
    obj, rest = words[0], words[1:]
    if obj == "daemon":
        return opts, _parse_daemon(rest, opts)
    name = _match(obj, ("link", "monitor", "help", "version"))
    if name == "link":
        return opts, _parse_link(rest)
    if name == "monitor":
        return opts, _parse_monitor(rest)
    if name == "version":
        if rest:
            _usage("version", f'"{rest[0]}": unexpected word')
        return opts, ShowVersion(ask_daemon=True)
    if name == "help":
        return opts, _help_for(rest)
    if obj == "exec":
        return opts, _parse_exec(rest)
    if obj == "capture":
        return opts, _parse_capture(rest)
    _usage(
        "", f'unknown command "{obj}"{_suggest(obj, ("link", "monitor", "daemon", "version"))}', ""
    )


def _parse_exec(words: list[str]) -> Parsed:
    if not words or words[0] in _HELP_WORDS:
        if words:
            return Help(HELP_EXEC)
        _usage("exec", "NAME is missing", "exec")
    name, rest = words[0], words[1:]
    queues: int | None = None
    if rest and rest[0] == "queues":
        if len(rest) < 2:
            _usage(f"exec {name}", '"queues" needs a number', "exec")
        queues = _int(f"exec {name}", "queues", rest[1], "exec")
        if not 1 <= queues <= 256:
            _usage(f"exec {name}", f"queues {queues}: must be 1..256", "exec")
        rest = rest[2:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        _usage(f"exec {name}", "COMMAND is missing (pymacvtap exec NAME -- COMMAND ...)", "exec")
    return Exec(name, queues, rest)


def _parse_capture(words: list[str]) -> Parsed:
    if not words or words[0] in _HELP_WORDS:
        if words:
            return Help(HELP_CAPTURE)
        _usage("capture", "NAME is missing", "capture")
    name, rest = words[0], words[1:]
    write: str | None = None
    count: int | None = None
    where = f"capture {name}"
    while rest:
        word = rest.pop(0)
        if word in ("-w", "-c") and not rest:
            _usage(where, f'"{word}" needs a value', "capture")
        if word == "-w":
            write = rest.pop(0)
        elif word == "-c":
            count = _int(where, "-c", rest.pop(0), "capture")
            if count < 1:
                _usage(where, f"-c {count}: must be at least 1", "capture")
        elif word in _HELP_WORDS:
            return Help(HELP_CAPTURE)
        else:
            _usage(where, f'"{word}": unexpected word (-w FILE, -c COUNT)', "capture")
    return Capture(name, write, count)


_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def _run_capture(opts: Options, cmd: Capture, out: TextIO) -> int:
    target = f"capture {cmd.name}"
    sink: BinaryIO | None = None
    if cmd.write == "-":
        sink = sys.stdout.buffer
    elif cmd.write is not None:
        try:
            sink = open(cmd.write, "wb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise Failure(f"{target}: {cmd.write}: {exc.strerror}") from None
    try:
        client = Client(opts.socket)
    except ClientError as exc:
        raise Failure(str(exc)) from None
    seen = 0
    try:
        if sink is not None:
            sink.write(_PCAP_HEADER)
            sink.flush()
        events = client.stream("capture", {"name": cmd.name})
        # As tcpdump says "listening on": from here on no frame is missed, which is
        # what a script starting traffic after the capture waits for.
        print(f"{PROG}: capturing on {cmd.name}, both directions", file=sys.stderr, flush=True)
        for event in events:
            frame = event.get("capture")
            if not isinstance(frame, dict):
                continue
            data = base64.b64decode(frame["data"])
            stamp = float(frame["time"])
            if sink is not None:
                sec = int(stamp)
                usec = int((stamp - sec) * 1_000_000)
                sink.write(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)
                sink.flush()
            else:
                out.write(_capture_line(stamp, str(frame["dir"]), data) + "\n")
                out.flush()
            seen += 1
            if cmd.count is not None and seen >= cmd.count:
                break
    except RemoteError as exc:
        raise Failure(with_prefix(target, exc.message, cmd.name)) from None
    except ClientError as exc:
        raise Failure(str(exc)) from None
    finally:
        client.close()
        if sink is not None and sink is not sys.stdout.buffer:
            sink.close()
    return 0


def _capture_line(stamp: float, direction: str, data: bytes) -> str:
    """One line per frame, in the spirit of ``tcpdump -e``."""
    clock = time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp % 1 * 1e6):06d}"
    if len(data) < 14:
        return f"{clock} {direction} runt, length {len(data)}"
    dst, src = data[0:6].hex(":"), data[6:12].hex(":")
    ethertype = int.from_bytes(data[12:14], "big")
    return f"{clock} {direction} {src} > {dst}, ethertype 0x{ethertype:04x}, length {len(data)}"


def _run_exec(opts: Options, cmd: Exec) -> int:
    target = f"exec {cmd.name}"
    args: dict[str, Any] = {"name": cmd.name}
    if cmd.queues is not None:
        args["queues"] = cmd.queues
    try:
        client = Client(opts.socket, timeout=REQUEST_TIMEOUT)
    except ClientError as exc:
        raise Failure(str(exc)) from None
    try:
        _, fds = client.request_fds("attach", args)
    except RemoteError as exc:
        # The daemon speaks of its verb ("attach vm0: ..."); the user typed "exec vm0".
        message = exc.message.removeprefix(f"attach {cmd.name}: ")
        raise Failure(with_prefix(target, message, cmd.name)) from None
    except ClientError as exc:
        raise Failure(str(exc)) from None
    finally:
        client.close()
    # Move the queues to 3, 4, ... (inheritable), whatever numbers they arrived as.
    # After closing the originals the copies are ascending and each is >= its
    # target, so no dup2 below can overwrite a copy still to be moved.
    moved = [os.dup(fd) for fd in fds]
    for fd in fds:
        os.close(fd)
    moved.sort()
    for i, fd in enumerate(moved):
        if fd == 3 + i:
            os.set_inheritable(fd, True)
        else:
            os.dup2(fd, 3 + i, inheritable=True)
            os.close(fd)
    sys.stdout.flush()
    try:
        os.execvp(cmd.argv[0], cmd.argv)
    except OSError as exc:
        raise Failure(f"{target}: {cmd.argv[0]}: {exc.strerror}") from None


def _set_flag(opts: Options, flag: str) -> None:
    if flag != "details":
        setattr(opts, flag, True)


def _match(word: str, choices: Sequence[str]) -> str | None:
    """iproute2's matches(): the first choice that ``word`` is a prefix of."""
    if not word:
        return None
    for choice in choices:
        if choice.startswith(word):
            return choice
    return None


def _help_for(words: list[str]) -> Help:
    if not words:
        return Help(_fill(HELP_TOP))
    if words[0] == "daemon":
        return Help(_fill(HELP_DAEMON))
    if words[0] == "exec":
        return Help(HELP_EXEC)
    if words[0] == "capture":
        return Help(HELP_CAPTURE)
    if _match(words[0], ("monitor",)):
        return Help(HELP_MONITOR)
    if _match(words[0], ("link",)):
        if len(words) > 1:
            return _link_help(words[1]) or Help(HELP_LINK)
        return Help(HELP_LINK)
    _usage("help", f'"{words[0]}": no such command')


_LINK_SUBCOMMANDS = ("add", "set", "delete", "show", "list", "lst", "ls", "help")


def _link_sub(word: str) -> str | None:
    if word == "del":
        return "delete"
    name = _match(word, _LINK_SUBCOMMANDS)
    if name in ("list", "lst", "ls"):
        return "show"
    return name


def _link_help(word: str) -> Help | None:
    sub = _link_sub(word)
    texts = {"add": HELP_ADD, "set": HELP_SET, "delete": HELP_DEL, "show": HELP_SHOW}
    return Help(texts[sub]) if sub in texts else None


def _wants_help(words: list[str]) -> bool:
    return bool(words) and (words[0] == "help" or any(w in _HELP_WORDS for w in words))


def _parse_link(words: list[str]) -> Parsed:
    if not words:
        return _parse_show([])
    sub = _link_sub(words[0])
    rest = words[1:]
    if sub is None:
        if words[0] in _HELP_WORDS:
            return Help(HELP_LINK)
        _usage(
            "link",
            f'unknown subcommand "{words[0]}"{_suggest(words[0], ("add", "set", "del", "show"))}'
            " (add, set, del or show)",
            "link",
        )
    if sub == "help":
        return Help(HELP_LINK)
    if _wants_help(rest):
        help_ = _link_help(sub)
        assert help_ is not None
        return help_
    if sub == "show":
        return _parse_show(rest)
    if sub == "add":
        return _parse_add(rest)
    if sub == "set":
        return _parse_set(rest)
    return _parse_del(rest)


def _global_misplaced(where: str, word: str, help_cmd: str) -> None:
    if word in _GLOBAL_FLAGS or word == "--socket":
        _usage(
            where,
            f'"{word}": global options go before the command (pymacvtap {word} {where} ...)',
        )
    if word.startswith("-"):
        _usage(where, f'"{word}": unknown option', help_cmd)


def _take_name(where: str, words: list[str], help_cmd: str) -> tuple[str | None, list[str]]:
    """``[dev] NAME`` at the front of ``words``."""
    if not words:
        return None, []
    if words[0] == "dev":
        if len(words) < 2:
            _usage(where, '"dev" needs a NAME', help_cmd)
        return words[1], words[2:]
    _global_misplaced(where, words[0], help_cmd)
    return words[0], words[1:]


def _parse_show(words: list[str]) -> Command:
    name, rest = _take_name("link show", words, "link show")
    if rest:
        _global_misplaced("link show", rest[0], "link show")
        _usage("link show", f'"{rest[0]}": unexpected word after NAME {name}', "link show")
    args: dict[str, Any] = {"name": name} if name is not None else {}
    return Command("link.show", args, f"link show {name}" if name else "link show")


def _parse_del(words: list[str]) -> Command:
    name, rest = _take_name("link del", words, "link del")
    if name is None:
        _usage("link del", "which endpoint? give its NAME", "link del")
    if rest:
        _usage(f"link del {name}", f'"{rest[0]}": unexpected word', "link del")
    return Command("link.del", {"name": name}, f"link del {name}")


# link add keywords: attribute name and how its value is read
_ADD_VALUES: dict[str, str] = {
    "link": "link",
    "name": "name",
    "dev": "name",
    "type": "type",
    "mode": "mode",
    "address": "address",
    "addr": "address",
    "netns": "netns",
    "ifname": "ifname",
    "frontend": "frontend",
    "path": "path",
    "peer": "peer",
    "owner": "owner",
    "user": "owner",
    "group": "group",
    "queues": "queues",
    "mtu": "mtu",
    "bcqueuelen": "bcqueuelen",
    "spoofchk": "spoofchk",
}
_ADD_FLAGS = {"nopromisc": "nopromisc"}
_METAVAR = {
    "link": "LOWER",
    "name": "NAME",
    "type": "macvlan|macvtap",
    "mode": "MODE",
    "address": "MAC",
    "netns": "NS",
    "ifname": "IFNAME",
    "frontend": "tap|stream|dgram|vhost-user",
    "path": "PATH",
    "peer": "PATH",
    "owner": "UID",
    "group": "GID",
    "queues": "N",
    "mtu": "N",
    "bcqueuelen": "N",
    "spoofchk": "on|off",
}
_INT_ATTRS = ("queues", "mtu", "bcqueuelen")


def _prescan(words: list[str], keywords: Sequence[str]) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word in keywords:
            return words[i + 1]
    return None


def _enum(where: str, key: str, value: str, choices: Sequence[str], help_cmd: str) -> str:
    if value not in choices:
        _usage(
            where,
            f'{key} "{value}": expected {_alternatives(choices)}{_suggest(value, choices)}',
            help_cmd,
        )
    return value


def _alternatives(choices: Sequence[str]) -> str:
    if len(choices) == 2:
        return f"{choices[0]} or {choices[1]}"
    return "one of " + ", ".join(choices)


def _onoff(where: str, key: str, value: str, help_cmd: str) -> bool:
    return _enum(where, key, value, ("on", "off"), help_cmd) == "on"


def _int(where: str, key: str, value: str, help_cmd: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        _usage(where, f'{key} "{value}": not a number', help_cmd)


def _parse_add(words: list[str]) -> Command:
    help_cmd = "link add"
    name0 = _prescan(words, ("name", "dev"))
    if name0 is None and words and words[0] not in _ADD_VALUES and words[0] not in _ADD_FLAGS:
        name0 = words[0]
    where = f"link add {name0}" if name0 else "link add"
    values: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(words):
        word = words[i]
        key = _ADD_VALUES.get(word)
        if key is not None:
            if i + 1 >= len(words):
                _usage(where, f'"{word}" needs a value ({_METAVAR[key]})', help_cmd)
            if key in values:
                _usage(where, f'"{word}" given twice', help_cmd)
            values[key] = words[i + 1]
            i += 2
            continue
        if word in _ADD_FLAGS:
            flags.add(_ADD_FLAGS[word])
            i += 1
            continue
        _global_misplaced(where, word, help_cmd)
        hint = _suggest(word, list(_ADD_VALUES) + list(_ADD_FLAGS))
        if "name" not in values and not hint:
            values["name"] = word  # `ip link add NAME ...`
            i += 1
            continue
        if "name" not in values:
            hint += f'; for an endpoint called {word}, write "name {word}"'
        _usage(where, f'"{word}": unknown word{hint}', help_cmd)
    for key in ("link", "name", "type"):
        if key not in values:
            _usage(where, f'"{key} {_METAVAR[key]}" is missing', help_cmd)
    name = values["name"]
    where = f"link add {name}"
    args: dict[str, Any] = {}
    for key, value in values.items():
        if key == "type":
            args[key] = _enum(where, key, value, TYPES, help_cmd)
        elif key == "mode":
            args[key] = _enum(where, key, value, MODES, help_cmd)
        elif key == "frontend":
            args[key] = _enum(where, key, value, FRONTENDS, help_cmd)
        elif key == "spoofchk":
            args[key] = _onoff(where, key, value, help_cmd)
        elif key in _INT_ATTRS:
            args[key] = _int(where, key, value, help_cmd)
        elif key == "owner":
            args[key] = resolve_user(where, value)
        elif key == "group":
            args[key] = resolve_group(where, value)
        else:
            args[key] = value
    for flag in flags:
        args[flag] = True
    return Command("link.add", args, where)


def resolve_user(where: str, value: str) -> int:
    """A user name or number → uid, looked up here (the caller's view of the names)."""
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise Failure(f"{where}: owner {value}: no such user") from None


def resolve_group(where: str, value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise Failure(f"{where}: group {value}: no such group") from None


_SET_KEYWORDS = ("up", "down", "address", "addr", "mtu", "mode", "spoofchk", "macaddr")


def _parse_set(words: list[str]) -> Command:
    help_cmd = "link set"
    name, rest = _take_name("link set", words, help_cmd)
    if name is None:
        _usage("link set", "which endpoint? give its NAME", help_cmd)
    where = f"link set {name}"
    changes: dict[str, Any] = {}
    given: set[str] = set()

    def once(word: str, key: str) -> None:
        if key in given:
            _usage(where, f'"{word}" given twice', help_cmd)
        given.add(key)

    i = 0
    while i < len(rest):
        word = rest[i]
        if word in ("up", "down"):
            if "up" in changes and changes["up"] != (word == "up"):
                _usage(where, '"up" and "down" together', help_cmd)
            changes["up"] = word == "up"
            i += 1
            continue
        if word in ("address", "addr", "mtu", "mode", "spoofchk"):
            key = "address" if word == "addr" else word
            once(word, key)
            if i + 1 >= len(rest):
                _usage(where, f'"{word}" needs a value ({_METAVAR[key]})', help_cmd)
            value = rest[i + 1]
            i += 2
            if key == "mtu":
                changes[key] = _int(where, key, value, help_cmd)
            elif key == "mode":
                changes[key] = _enum(where, key, value, MODES, help_cmd)
            elif key == "spoofchk":
                changes[key] = _onoff(where, key, value, help_cmd)
            else:
                changes[key] = value
            continue
        if word == "macaddr":
            once(word, word)
            if i + 1 >= len(rest):
                _usage(where, '"macaddr" needs add, del, set or flush', help_cmd)
            op = _enum(where, "macaddr", rest[i + 1], MACADDR_OPS, help_cmd)
            i += 2
            macs: list[str] = []
            while i < len(rest) and rest[i] not in _SET_KEYWORDS:
                macs.append(rest[i])
                i += 1
            if op in ("add", "del") and not macs:
                _usage(where, f'"macaddr {op}" needs at least one MAC', help_cmd)
            if op == "flush" and macs:
                _usage(where, f'"macaddr flush" takes no MAC, got "{macs[0]}"', help_cmd)
            changes["macaddr"] = {"op": op, "addresses": macs}
            continue
        _global_misplaced(where, word, help_cmd)
        _usage(where, f'"{word}": unknown word{_suggest(word, _SET_KEYWORDS)}', help_cmd)
    if not changes:
        _usage(
            where,
            "nothing to change (give up, down, address, mtu, mode, spoofchk or macaddr)",
            help_cmd,
        )
    return Command("link.set", {"name": name, "changes": changes}, where)


def _parse_monitor(words: list[str]) -> Parsed:
    if _wants_help(words):
        return Help(HELP_MONITOR)
    for word in words:
        if word not in ("link", "all"):
            _global_misplaced("monitor", word, "monitor")
            _usage("monitor", f'"{word}": unexpected word', "monitor")
    return Command("monitor", {}, "monitor")


_DAEMON_OPTIONS = {
    "--socket": "socket",
    "--state-dir": "state_dir",
    "--admin-group": "admin_group",
    "--metrics": "metrics",
}


def _parse_daemon(words: list[str], opts: Options) -> Parsed:
    if _wants_help(words):
        return Help(_fill(HELP_DAEMON))
    values: dict[str, str | None] = dict.fromkeys(_DAEMON_OPTIONS.values())
    i = 0
    while i < len(words):
        word = words[i]
        opt, eq, inline = word.partition("=")
        key = _DAEMON_OPTIONS.get(opt)
        if key is None:
            choices = list(_DAEMON_OPTIONS)
            _usage("daemon", f'"{word}": unknown option{_suggest(opt, choices)}', "daemon")
        if eq:
            value = inline
            i += 1
        elif i + 1 < len(words):
            value = words[i + 1]
            i += 2
        else:
            _usage("daemon", f'"{opt}" needs a value', "daemon")
        if not value:
            _usage("daemon", f'"{opt}" needs a value', "daemon")
        values[key] = value
    metrics = values["metrics"]
    if metrics is not None:
        host, colon, port = metrics.rpartition(":")
        if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
            _usage("daemon", f'--metrics "{metrics}": expected ADDR:PORT', "daemon")
        del host
    if values["socket"] is None:
        values["socket"] = opts.socket
    return Daemon(argparse.Namespace(**values))


# -- output ---------------------------------------------------------------------------------


def _flags(state: str) -> str:
    if state == "UP":
        flags = ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"]
    elif state == "LOWERLAYERDOWN":
        flags = ["NO-CARRIER", "BROADCAST", "MULTICAST", "UP"]
    else:
        flags = ["BROADCAST", "MULTICAST"]
    return ",".join(flags)


def _table(label: str, heads: Sequence[str], values: Sequence[object]) -> list[str]:
    cells = [str(v) for v in values]
    widths = [
        max(len(h), len(c), 6 if i == 0 else 0)
        for i, (h, c) in enumerate(zip(heads, cells, strict=True))
    ]
    head = " ".join(h.rjust(w) for h, w in zip(heads, widths, strict=True))
    row = " ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
    return [f"    {label} {head}", f"    {' ' * len(label)} {row}"]


def format_link(entry: dict[str, Any], stats: bool = False) -> str:
    """One endpoint the way `ip -d [-s] link show` prints a link."""
    state = str(entry.get("operstate") or "UNKNOWN")
    lines = [
        f"{entry.get('ifname')}@{entry.get('link')}: <{_flags(state)}> "
        f"mtu {entry.get('mtu')} state {state}",
        f"    link/ether {entry.get('address')}",
    ]
    detail = f"    {entry.get('type')} mode {entry.get('mode')}"
    if entry.get("nopromisc"):
        detail += " nopromisc"
    if entry.get("bcqueuelen") is not None:
        detail += f" bcqueuelen {entry['bcqueuelen']}"
    detail += f" spoofchk {'on' if entry.get('spoofchk') else 'off'}"
    lines.append(detail)
    macaddrs = entry.get("macaddrs")
    if isinstance(macaddrs, list) and (macaddrs or entry.get("mode") == "source"):
        lines.append(f"    macaddr count {len(macaddrs)}" + "".join(f" {m}" for m in macaddrs))
    fe = f"    frontend {entry.get('frontend')}"
    for key in ("netdev", "netns", "path", "owner", "group", "queues"):
        value = entry.get(key)
        if value is not None:
            fe += f" {key} {value}"
    lines.append(fe)
    stats64 = entry.get("stats64")
    if stats and isinstance(stats64, dict):
        rx = stats64.get("rx") or {}
        tx = stats64.get("tx") or {}
        rx_keys = ("bytes", "packets", "errors", "dropped", "multicast")
        tx_keys = ("bytes", "packets", "errors", "dropped")
        lines += _table(
            "RX:",
            ("bytes", "packets", "errors", "dropped", "mcast"),
            [rx.get(k, 0) for k in rx_keys],
        )
        lines += _table(
            "TX:", ("bytes", "packets", "errors", "dropped"), [tx.get(k, 0) for k in tx_keys]
        )
        drops = entry.get("drops")
        if isinstance(drops, dict) and drops:
            lines.append("    drops " + " ".join(f"{k} {v}" for k, v in drops.items()))
    return "\n".join(lines)


def _word(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None:
        return "none"
    if isinstance(value, list):
        return ",".join(_word(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    text = str(value)
    if not text or any(c.isspace() for c in text) or '"' in text:
        return json.dumps(text)
    return text


def format_event(event: dict[str, Any]) -> str:
    """``link.del vm0 reason "lower eth0 removed"``: kind, endpoint, then key value pairs."""
    words = [str(event.get("event", "event"))]
    if "ifname" in event:
        words.append(_word(event["ifname"]))
    for key, value in event.items():
        if key not in ("event", "ifname"):
            words += [key, _word(value)]
    return " ".join(words)


def _dump_json(opts: Options, value: object) -> str:
    if opts.pretty:
        return json.dumps(value, indent=2)
    return json.dumps(value, separators=(", ", ": "))


# -- running --------------------------------------------------------------------------------


def _request(opts: Options, cmd: Command) -> Any:
    try:
        with Client(opts.socket, timeout=REQUEST_TIMEOUT) as client:
            return client.request(cmd.verb, cmd.args)
    except RemoteError as exc:
        raise Failure(with_prefix(cmd.target, exc.message)) from None
    except ClientError as exc:
        raise Failure(str(exc)) from None


def _run_command(opts: Options, cmd: Command, out: TextIO) -> int:
    if cmd.verb == "monitor":
        return _monitor(opts, cmd, out)
    if cmd.verb == "link.show":
        cmd.args["stats"] = opts.stats
    result = _request(opts, cmd)
    if cmd.verb == "link.show":
        entries = result if isinstance(result, list) else []
        if opts.json:
            print(_dump_json(opts, entries), file=out)
        else:
            for entry in entries:
                print(format_link(entry, opts.stats), file=out)
    elif opts.json and result is not None:
        print(_dump_json(opts, result), file=out)
    return 0


def _monitor(opts: Options, cmd: Command, out: TextIO) -> int:
    try:
        client = Client(opts.socket)
    except ClientError as exc:
        raise Failure(str(exc)) from None
    try:
        for event in client.monitor():
            line = json.dumps(event, separators=(",", ":")) if opts.json else format_event(event)
            out.write(line + "\n")
            out.flush()
    except RemoteError as exc:
        raise Failure(with_prefix(cmd.target, exc.message)) from None
    except ClientError as exc:
        raise Failure(str(exc)) from None
    finally:
        client.close()
    return 0


def _version(opts: Options, ask_daemon: bool, out: TextIO) -> int:
    print(f"{PROG} {__version__}", file=out)
    if ask_daemon:
        result = _request(opts, Command("version", {}, "version"))
        if isinstance(result, dict):
            print(f"daemon {result.get('version')} (protocol {result.get('protocol')})", file=out)
    return 0


def _run_daemon(parsed: Daemon) -> int:
    # Imported here: the daemon's dependencies are no business of the client commands.
    daemon = importlib.import_module("pymacvtap.daemon")
    run: Callable[[argparse.Namespace], int] = daemon.main
    return run(parsed.args)


def run(argv: Sequence[str], out: TextIO | None = None) -> int:
    """Parse and execute; errors are raised (UsageError → 2, Failure → 1)."""
    out = out or sys.stdout
    opts, parsed = parse(argv)
    if isinstance(parsed, Help):
        out.write(parsed.text)
        return 0
    if isinstance(parsed, ShowVersion):
        return _version(opts, parsed.ask_daemon, out)
    if isinstance(parsed, Daemon):
        return _run_daemon(parsed)
    if isinstance(parsed, Exec):
        return _run_exec(opts, parsed)
    if isinstance(parsed, Capture):
        return _run_capture(opts, parsed, out)
    return _run_command(opts, parsed, out)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``pymacvtap`` entry point: exit status 0, 1 (failed) or 2 (usage)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if _is_monitor(args) else 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit flush quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


def _is_monitor(args: Sequence[str]) -> bool:
    """monitor and capture run until interrupted: Ctrl-C is their normal end."""
    words = [a for a in args if not a.startswith("-")]
    return any(_match(a, ("monitor",)) == "monitor" or a == "capture" for a in words)
