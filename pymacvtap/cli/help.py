"""The help texts, one per command: what `pymacvtap [COMMAND] --help` prints.

Kept apart from the parser so they read as the manual they are; the parser only
chooses which one to show.
"""

from __future__ import annotations

from pymacvtap.cli.fields import json_option_help
from pymacvtap.defaults import BCQUEUELEN, CONTROL_SOCKET, STATE_DIR

HELP_TOP = """\
pymacvtap - user-space macvlan/macvtap endpoints, managed like `ip link`

SYNOPSIS
    pymacvtap [OPTIONS] link show [NAME]
    pymacvtap [OPTIONS] link add link LOWER name NAME type {macvlan|macvtap} [ATTRS...]
    pymacvtap [OPTIONS] link set NAME [up|down] [address MAC] [mtu N] [mode MODE]
                                      [spoofchk {on|off}] [macnat {on|off}] [announce]
                                      [macaddr {add|del|set|flush} [MAC...]]
    pymacvtap [OPTIONS] link del NAME
    pymacvtap [OPTIONS] lower show [LOWER]
    pymacvtap [OPTIONS] monitor
    pymacvtap [OPTIONS] exec NAME [queues N] -- COMMAND [ARG...]
    pymacvtap [OPTIONS] capture NAME [-w FILE.pcap] [-c COUNT]
    pymacvtap [OPTIONS] version
    pymacvtap daemon [--socket PATH] [--state-dir DIR] [--admin-group GROUP]
                     [--metrics ADDR:PORT] [--datapath {auto|ebpf|python}]

DESCRIPTION
    pymacvtap gives a lower Ethernet device macvlan endpoints (network devices for
    containers and the host) and macvtap endpoints (ports for virtual machines), with the
    kernel's modes: private, vepa, bridge, passthru and source.  The forwarding runs in the
    `pymacvtap daemon` process; every other command talks to it over its control socket.

    A command may be abbreviated to any unique prefix (`mon` is `monitor`, `cap` is
    `capture`, `lo` is `lower`), `l` is `link` as in `ip`, and link's subcommands are
    abbreviated as `ip` allows (`pymacvtap l sh` is `link show`).

OPTIONS (before the command)
    -j, --json         print JSON (link show: a list of objects; monitor: one object
                       per line; link add and link set: the endpoint as it now is)
    -p, --pretty       indent JSON output
    -s, --stats        link show, lower show: include RX/TX statistics
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
    lower show     list the lowers in use, their own counters (pymacvtap lower --help)
    monitor        print events as they happen               (pymacvtap monitor --help)
    exec           run a VM with the endpoint's tap queues   (pymacvtap exec --help)
    capture        record an endpoint's frames               (pymacvtap capture --help)
    version        print the client's and daemon's versions  (pymacvtap version --help)
    daemon         run the daemon                            (pymacvtap daemon --help)
    help           this text, or a command's: `pymacvtap help link add`

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

    The state is UP, DOWN (set down) or LOWERLAYERDOWN (up, but its lower is down), or
    WAITING and the reason (`state WAITING lower eth0 missing`): configured, but not
    created yet, because at start its lower or namespace was missing or its netdev's name
    was taken; it is created when that changes, and only `link del` forgets it.

OPTIONS
    NAME, dev NAME   the endpoint to show
    -s               add RX and TX counters (bytes, packets, errors, dropped; RX
                     multicast), like `ip -s link`, and the frames dropped or refused
                     by reason (spoofed, oversize_from_endpoint, rx_queue_full, ...)
{json_option}
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
                       [spoofchk {on|off}] [macnat {on|off}] [nopromisc]
                       [dhcp {on|off} [hostname NAME]]

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
    bcqueuelen N       length of the broadcast queue (default {bcqueuelen})
    spoofchk on|off    drop frames the endpoint sends with a source MAC not its own
                       (default off)
    macnat on|off      for lowers whose next hop accepts only the lower's own MAC
                       (a Wi-Fi station, MAC-filtering switches): frames to the wire
                       carry the lower's MAC, replies are given back by IP address
                       (modes bridge, vepa and private; default off)
    nopromisc          passthru only: do not make the lower promiscuous
    dhcp on|off        macvlan: the daemon gets the netdev's address from the LAN's
                       DHCP server, puts it (and the default route) on the netdev,
                       renews it, keeps it across restarts and releases it at link del
    hostname NAME      with dhcp: the host name sent to the server (default NAME)

EXAMPLES
    pymacvtap link add link eth0 name c1 type macvlan mode bridge netns c1
    pymacvtap link add link eth0 name vm0 type macvtap owner alice queues 4
    pymacvtap link add link eth0 name vm1 type macvtap frontend vhost-user \\
              path /run/vm1/net.sock owner qemu group kvm
    pymacvtap link add link eth0 name mon type macvtap mode source frontend stream
    pymacvtap link add link wlan0 name c2 type macvlan mode bridge netns c2 macnat on
"""

HELP_SET = """\
pymacvtap link set - change an endpoint

SYNOPSIS
    pymacvtap link set [dev] NAME [up|down] [address MAC] [mtu N] [mode MODE]
                       [spoofchk {on|off}] [macnat {on|off}] [announce]
                       [macaddr {add|del|set|flush} [MAC...]]

DESCRIPTION
    Changes the named endpoint; several changes may be given at once.

OPTIONS
    up, down           bring the endpoint up or down (a down endpoint receives and
                       sends nothing)
    address MAC        change its MAC (refused if another endpoint on the lower has it)
    mtu N              change its MTU (68-65535)
    mode MODE          private, vepa, bridge, passthru or source
    spoofchk on|off    drop frames sent with a source MAC not the endpoint's own
    macnat on|off      translate its MAC to the lower's on the wire (see link add)
    announce           tell the network where the endpoint is: a gratuitous ARP per
                       IPv4 address, an unsolicited NA per IPv6 address (a RARP when
                       none is known), five times over about 1.5 s
    macaddr add MAC... mode source: add MACs to the list of watched sources
    macaddr del MAC... remove them
    macaddr set MAC... replace the list
    macaddr flush      empty the list

EXAMPLES
    pymacvtap link set c1 up
    pymacvtap link set dev vm0 address 02:00:00:00:00:10 mtu 9000
    pymacvtap link set mon macaddr add 52:54:00:00:00:01 52:54:00:00:00:02
    pymacvtap link set vm0 announce
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

HELP_VERSION = """\
pymacvtap version - print the versions of this program and of the daemon

SYNOPSIS
    pymacvtap [--socket PATH] version

DESCRIPTION
    Prints this program's version, then asks the daemon for its own and for the version
    of the control protocol it speaks:

        pymacvtap 0.1.0
        daemon 0.1.0 (protocol 1)

    When the daemon cannot be reached, the second line is an error on stderr and the exit
    status is 1.  `pymacvtap -V` prints this program's version only, asking nobody.

EXAMPLES
    pymacvtap version
    pymacvtap --socket /tmp/p.sock version
"""

HELP_LOWER = """\
pymacvtap lower show - the lower devices in use, and their own counters

SYNOPSIS
    pymacvtap [-j [-p]] [-s] lower show [[dev] LOWER]

DESCRIPTION
    Without LOWER, every lower device an endpoint uses; with LOWER, that one.  A lower's
    counters are its own: frames the daemon read from it and wrote to it, for all of its
    endpoints together, and the frames it left to the host.  Needs root or the admin group.

        eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP
            link/ether 02:00:00:00:0c:01
            endpoints c1 c2 vm0

    The state is UP, or LOWERLAYERDOWN when the lower has no carrier.

OPTIONS
    LOWER, dev LOWER the lower to show
    -s               add RX and TX counters: bytes, packets, errors, dropped, not_ours
                     (frames for none of the endpoints, left to the host) and the frames
                     the broadcast queue dropped (bcqueue_dropped)
    -j               print a JSON list of objects with ifname, address, mtu, operstate,
                     endpoints; with -s also stats: {rx_packets, rx_bytes, rx_errors,
                     rx_dropped, rx_not_ours, bcqueue_dropped, tx_packets, tx_bytes,
                     tx_errors} and bcqueue_len (schema:
                     pymacvtap/schemas/lower-show.schema.json)
    -p               indent the JSON

EXAMPLES
    pymacvtap -s lower show eth0
    pymacvtap -j -s lower show | jq '.[].stats.rx_not_ours'
"""

HELP_DAEMON = """\
pymacvtap daemon - run the daemon

SYNOPSIS
    pymacvtap daemon [--socket PATH] [--state-dir DIR] [--admin-group GROUP]
                     [--metrics ADDR:PORT] [--announce-rounds N]
                     [--datapath {auto|ebpf|python}]

DESCRIPTION
    Runs in the foreground in the network namespace of the lower devices, until SIGTERM
    or SIGINT.  Endpoints saved in the state directory are restored at start.  Logs go
    to stderr.  Notifies systemd (Type=notify) when ready.

OPTIONS
    --socket PATH        the control socket (default $PYMACVTAP_SOCKET, else
                         {default}); created mode 0666, its directory 0755
    --state-dir DIR      where the configuration is saved (default {state_dir}); one
                         daemon per state dir: a second one exits at once, naming the first
    --admin-group GROUP  members of GROUP (name or number) may do everything root may
    --metrics ADDR:PORT  serve counters for Prometheus on ADDR:PORT
    --announce-rounds N  gratuitous ARP/NA rounds sent for an endpoint that comes up,
                         after a restart, when a VM attaches and on `link set NAME
                         announce` (default 5, as QEMU's announce-self; 0: none)
    --datapath {auto|ebpf|python}
                         who forwards: ebpf, pymacvtap's eBPF programs in the kernel for
                         the unicast of container netdevs and VM taps, the daemon for the
                         rest (needs root, or CAP_BPF and CAP_NET_ADMIN, and the compiled
                         programs); python, every frame through the daemon; auto (the
                         default), ebpf where it loads, else python, saying why in the log

EXAMPLES
    pymacvtap daemon --admin-group netadm
    PYMACVTAP_SOCKET=/tmp/p.sock pymacvtap daemon --state-dir /tmp/p-state
"""


def fill(text: str) -> str:
    """The text with ``{default}``, ``{state_dir}`` and ``{bcqueuelen}`` replaced by the defaults,
    and ``{json_option}`` by the ``-j`` paragraph written from the JSON schema (read only for
    the help that shows it).
    """
    if "{json_option}" in text:
        text = text.replace("{json_option}", json_option_help())
    for word, value in (
        ("{default}", CONTROL_SOCKET),
        ("{state_dir}", STATE_DIR),
        ("{bcqueuelen}", str(BCQUEUELEN)),
    ):
        text = text.replace(word, value)
    return text
