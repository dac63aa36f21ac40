"""The sans-I/O forwarding engine: the kernel's macvlan policy, frames in, decisions out.

Nothing in this package may import a module that does I/O (sockets, files,
clocks, selectors): ``tests/core/test_no_io.py`` checks it in a subprocess.
"""

from pymacvtap.core.engine import Engine
from pymacvtap.core.errors import EngineError
from pymacvtap.core.frame import Frame, VnetHeader
from pymacvtap.core.mac import MacError, format_mac, parse_mac
from pymacvtap.core.modes import Mode
from pymacvtap.core.port import Disposition, Endpoint, Outcome, Port
from pymacvtap.core.stats import DropReason

__all__ = [
    "Disposition",
    "DropReason",
    "Endpoint",
    "Engine",
    "EngineError",
    "Frame",
    "MacError",
    "Mode",
    "Outcome",
    "Port",
    "VnetHeader",
    "format_mac",
    "parse_mac",
]
