"""macvlan modes, with the kernel's bit values so masks read like macvlan.c."""

from __future__ import annotations

import enum


class Mode(enum.IntFlag):
    PRIVATE = 1
    VEPA = 2
    BRIDGE = 4
    PASSTHRU = 8
    SOURCE = 16

    @classmethod
    def parse(cls, text: str) -> Mode:
        try:
            return MODE_BY_NAME[text]
        except KeyError:
            names = ", ".join(MODE_BY_NAME)
            raise ValueError(f"mode {text}: unknown (one of {names})") from None

    @property
    def label(self) -> str:
        return NAME_BY_MODE[self]


MODE_BY_NAME = {
    "private": Mode.PRIVATE,
    "vepa": Mode.VEPA,
    "bridge": Mode.BRIDGE,
    "passthru": Mode.PASSTHRU,
    "source": Mode.SOURCE,
}
NAME_BY_MODE = {mode: name for name, mode in MODE_BY_NAME.items()}

# Who receives a flooded copy, by where the frame came from (macvlan_multicast_rx).
FLOOD_FROM_OUTSIDE = Mode.PRIVATE | Mode.VEPA | Mode.PASSTHRU | Mode.BRIDGE
FLOOD_FROM_VEPA = Mode.VEPA | Mode.BRIDGE
FLOOD_FROM_BRIDGE = Mode.VEPA  # bridge peers already had their copy on transmit
# Senders whose reflected multicast returns to themselves only.
REFLECT_TO_SENDER_ONLY = Mode.PRIVATE | Mode.PASSTHRU | Mode.SOURCE
