"""The daemon's allocator tuning: freed frame memory stays mapped instead of being re-faulted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Frames of 60 KiB allocated and freed in bursts, as a TCP super-frame burst does;
# prints the minor page faults the bursts after the first cost.
CHURN = r"""
import json, resource, sys
from pymacvtap.io.allocator import keep_freed_frames_mapped
tuned = keep_freed_frames_mapped() if sys.argv[1] == "tuned" else None
src = bytes(60 << 10)
def burst():
    frames = [bytes(bytearray(src)) for _ in range(64)]
    del frames
burst()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    burst()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tuned": tuned, "faults": faults}))
"""


def churn(mode: str, **env: str) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", CHURN, mode],
        capture_output=True, text=True, check=True, env={**environ, **env},
    )  # fmt: skip
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_bursts_of_frames_no_longer_fault_their_pages_in_again() -> None:
    plain = churn("plain")
    tuned = churn("tuned")
    assert tuned["tuned"] is True
    # 50 bursts of 64 frames of 60 KiB: about 48,000 pages re-faulted untuned.
    assert isinstance(plain["faults"], int) and plain["faults"] > 10_000, plain
    assert isinstance(tuned["faults"], int) and tuned["faults"] < plain["faults"] // 10, tuned


def test_the_operators_own_setting_wins() -> None:
    assert churn("tuned", MALLOC_TRIM_THRESHOLD_="131072")["tuned"] is False
