"""The C allocator's trimming, tuned for a process that churns 64 KiB frames.

Every super-frame the daemon reads becomes a ``bytes`` object of up to 64 KiB,
freed a few microseconds later once it is written out.  glibc serves these from
the top of its heap and, by default, gives the top back to the kernel as soon
as more than 128 KiB is free there (``M_TRIM_THRESHOLD``).  Under TCP load the
heap top moves up and down by that much thousands of times a second, and every
page given back is faulted in again (zero-filled) by the next frame's copy: in
a profile of four TCP streams, 2.7 % of the daemon's time was page faults
inside ``memmove``.  A higher threshold keeps that memory mapped; it is still
returned once more than ``TRIM_THRESHOLD`` is free at the top.

Python has no binding for ``mallopt``; ctypes is the only way to reach it.
Other C libraries (musl) have no such knob, and nothing is changed there.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1  # from glibc's <malloc.h>
# Free memory kept at the top of the heap: room for the frames in flight
# (hundreds of 64 KiB frames), small next to the RSS budget of SPEC 7.
TRIM_THRESHOLD = 16 << 20


def keep_freed_frames_mapped(threshold: int = TRIM_THRESHOLD) -> bool:
    """Raise glibc's trim threshold to ``threshold`` bytes; False where not possible.

    An operator's own ``MALLOC_TRIM_THRESHOLD_`` takes precedence and is left alone.
    """
    if "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        # The interpreter's own symbols: the C library it runs on, found without
        # ctypes.util.find_library (which runs ldconfig in a subprocess).
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, threshold))
