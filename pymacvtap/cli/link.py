"""Parsing `link show|add|set|del`: the words after ``link`` → a :class:`Command`.

The grammar is ``ip link``'s: keywords followed by their values, in any order, with
iproute2's abbreviations and aliases (``del``/``delete``, ``ls``/``list``/``show``).
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Sequence
from typing import Any

from pymacvtap.cli.errors import Failure, suggest, usage
from pymacvtap.cli.help import HELP_ADD, HELP_DEL, HELP_LINK, HELP_SET, HELP_SHOW, fill
from pymacvtap.cli.parsed import Command, Help, Parsed
from pymacvtap.cli.words import (
    HELP_WORDS,
    enum,
    global_misplaced,
    integer,
    match,
    onoff,
    take_name,
    wants_help,
)
from pymacvtap.control.protocol import MACADDR_OPS
from pymacvtap.core.modes import MODE_BY_NAME
from pymacvtap.daemon.config import FRONTENDS, TYPES

MODES = tuple(MODE_BY_NAME)

_LINK_SUBCOMMANDS = ("add", "set", "delete", "show", "list", "lst", "ls", "help")


def link_sub(word: str) -> str | None:
    """The subcommand ``word`` abbreviates, aliases folded (``del`` → delete, ``ls`` → show)."""
    if word == "del":
        return "delete"
    name = match(word, _LINK_SUBCOMMANDS)
    if name in ("list", "lst", "ls"):
        return "show"
    return name


def link_help(word: str) -> Help | None:
    """The help of subcommand ``word``, if it names one that has help."""
    sub = link_sub(word)
    texts = {"add": HELP_ADD, "set": HELP_SET, "delete": HELP_DEL, "show": HELP_SHOW}
    return Help(fill(texts[sub])) if sub in texts else None


def parse_link(words: list[str]) -> Parsed:
    """The words after ``link``; none means ``link show``."""
    if not words:
        return _parse_show([])
    sub = link_sub(words[0])
    rest = words[1:]
    if sub is None:
        if words[0] in HELP_WORDS:
            return Help(HELP_LINK)
        usage(
            "link",
            f'unknown subcommand "{words[0]}"{suggest(words[0], ("add", "set", "del", "show"))}'
            " (add, set, del or show)",
            "link",
        )
    if sub == "help":
        return Help(HELP_LINK)
    if wants_help(rest):
        help_ = link_help(sub)
        assert help_ is not None
        return help_
    if sub == "show":
        return _parse_show(rest)
    if sub == "add":
        return _parse_add(rest)
    if sub == "set":
        return _parse_set(rest)
    return _parse_del(rest)


def _parse_show(words: list[str]) -> Command:
    name, rest = take_name("link show", words, "link show")
    if rest:
        global_misplaced("link show", rest, "link show")
        usage("link show", f'"{rest[0]}": unexpected word after NAME {name}', "link show")
    args: dict[str, Any] = {"name": name} if name is not None else {}
    return Command("link.show", args, f"link show {name}" if name else "link show")


def _parse_del(words: list[str]) -> Command:
    name, rest = take_name("link del", words, "link del")
    if name is None:
        usage("link del", "which endpoint? give its NAME", "link del")
    if rest:
        global_misplaced(f"link del {name}", rest, "link del")
        usage(f"link del {name}", f'"{rest[0]}": unexpected word', "link del")
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
    "macnat": "macnat",
    "dhcp": "dhcp",
    "hostname": "hostname",
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
    "macnat": "on|off",
    "dhcp": "on|off",
    "hostname": "NAME",
}
_INT_ATTRS = ("queues", "mtu", "bcqueuelen")


def _prescan(words: list[str], keywords: Sequence[str]) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word in keywords:
            return words[i + 1]
    return None


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
                usage(where, f'"{word}" needs a value ({_METAVAR[key]})', help_cmd)
            if key in values:
                usage(where, f'"{word}" given twice', help_cmd)
            values[key] = words[i + 1]
            i += 2
            continue
        if word in _ADD_FLAGS:
            flags.add(_ADD_FLAGS[word])
            i += 1
            continue
        global_misplaced(where, words[i:], help_cmd)
        hint = suggest(word, list(_ADD_VALUES) + list(_ADD_FLAGS))
        if "name" not in values and not hint:
            values["name"] = word  # `ip link add NAME ...`
            i += 1
            continue
        if "name" not in values:
            hint += f'; for an endpoint called {word}, write "name {word}"'
        usage(where, f'"{word}": unknown word{hint}', help_cmd)
    for key in ("link", "name", "type"):
        if key not in values:
            usage(where, f'"{key} {_METAVAR[key]}" is missing', help_cmd)
    name = values["name"]
    where = f"link add {name}"
    args: dict[str, Any] = {}
    for key, value in values.items():
        if key == "type":
            args[key] = enum(where, key, value, TYPES, help_cmd)
        elif key == "mode":
            args[key] = enum(where, key, value, MODES, help_cmd)
        elif key == "frontend":
            args[key] = enum(where, key, value, FRONTENDS, help_cmd)
        elif key in ("spoofchk", "macnat", "dhcp"):
            args[key] = onoff(where, key, value, help_cmd)
        elif key in _INT_ATTRS:
            args[key] = integer(where, key, value, help_cmd)
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
    """A group name or number → gid, looked up here (the caller's view of the names)."""
    if value.isdigit():
        return int(value)
    try:
        return grp.getgrnam(value).gr_gid
    except KeyError:
        raise Failure(f"{where}: group {value}: no such group") from None


_SET_KEYWORDS = (
    "up",
    "down",
    "address",
    "addr",
    "mtu",
    "mode",
    "spoofchk",
    "macnat",
    "macaddr",
    "announce",
)


def _parse_set(words: list[str]) -> Command:
    help_cmd = "link set"
    name, rest = take_name("link set", words, help_cmd)
    if name is None:
        usage("link set", "which endpoint? give its NAME", help_cmd)
    where = f"link set {name}"
    changes: dict[str, Any] = {}
    given: set[str] = set()

    def once(word: str, key: str) -> None:
        if key in given:
            usage(where, f'"{word}" given twice', help_cmd)
        given.add(key)

    i = 0
    while i < len(rest):
        word = rest[i]
        if word in ("up", "down"):
            if "up" in changes and changes["up"] != (word == "up"):
                usage(where, '"up" and "down" together', help_cmd)
            changes["up"] = word == "up"
            i += 1
            continue
        if word == "announce":
            once(word, word)
            changes["announce"] = True
            i += 1
            continue
        if word in ("address", "addr", "mtu", "mode", "spoofchk", "macnat"):
            key = "address" if word == "addr" else word
            once(word, key)
            if i + 1 >= len(rest):
                usage(where, f'"{word}" needs a value ({_METAVAR[key]})', help_cmd)
            value = rest[i + 1]
            i += 2
            if key == "mtu":
                changes[key] = integer(where, key, value, help_cmd)
            elif key == "mode":
                changes[key] = enum(where, key, value, MODES, help_cmd)
            elif key in ("spoofchk", "macnat"):
                changes[key] = onoff(where, key, value, help_cmd)
            else:
                changes[key] = value
            continue
        if word == "macaddr":
            once(word, word)
            if i + 1 >= len(rest):
                usage(where, '"macaddr" needs add, del, set or flush', help_cmd)
            op = enum(where, "macaddr", rest[i + 1], MACADDR_OPS, help_cmd)
            i += 2
            macs: list[str] = []
            # A MAC never begins with "-": such a word is a (misplaced) option, not a MAC.
            while i < len(rest) and rest[i] not in _SET_KEYWORDS and not rest[i].startswith("-"):
                macs.append(rest[i])
                i += 1
            if i < len(rest) and rest[i].startswith("-"):
                global_misplaced(where, rest[i:], help_cmd)
            if op in ("add", "del") and not macs:
                usage(where, f'"macaddr {op}" needs at least one MAC', help_cmd)
            if op == "flush" and macs:
                usage(where, f'"macaddr flush" takes no MAC, got "{macs[0]}"', help_cmd)
            changes["macaddr"] = {"op": op, "addresses": macs}
            continue
        global_misplaced(where, rest[i:], help_cmd)
        usage(where, f'"{word}": unknown word{suggest(word, _SET_KEYWORDS)}', help_cmd)
    if not changes:
        usage(
            where,
            "nothing to change (give up, down, address, mtu, mode, spoofchk, macnat, macaddr "
            "or announce)",
            help_cmd,
        )
    return Command("link.set", {"name": name, "changes": changes}, where)
