"""The defaults the daemon, its client and the CLI share, each written once.

A leaf module: it imports nothing, so every layer (the engine included) may use it.
"""

CONTROL_SOCKET = "/run/pymacvtap/control.sock"
SOCKET_ENV = "PYMACVTAP_SOCKET"  # overrides CONTROL_SOCKET for the daemon and its clients
SOCKET_DIR = "/run/pymacvtap"  # where a socket frontend listens when given no path
STATE_DIR = "/var/lib/pymacvtap"
BCQUEUELEN = 1000  # the kernel's MACVLAN_DEFAULT_BC_QUEUE_LEN
