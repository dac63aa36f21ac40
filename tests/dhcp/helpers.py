"""A scripted DHCP server for the client's table tests: it answers what the client sent."""

from __future__ import annotations

from ipaddress import IPv4Address

from pymacvtap.core.dhcp import Datagram, DhcpClient, Message, MessageType, Option, decode, encode
from pymacvtap.core.dhcp.message import BOOTREPLY
from pymacvtap.core.dhcp.packet import build_frame

MAC = bytes.fromhex("020000000001")
SERVER_MAC = bytes.fromhex("5254000000aa")
SERVER = IPv4Address("192.0.2.1")
OTHER_SERVER = IPv4Address("192.0.2.2")
OFFERED = IPv4Address("192.0.2.50")


def entropy(n: int) -> bytes:
    """xid 0x80000000 and a jitter of exactly 0: retransmission times are round numbers."""
    return b"\x80" + bytes(n - 1)


def make_client(**kwargs: object) -> DhcpClient:
    return DhcpClient(MAC, entropy, client_id=b"\xff\x01\x02\x03\x04id", hostname="c1", **kwargs)  # type: ignore[arg-type]


class Sent:
    """One datagram the client sent, decoded."""

    def __init__(self, dgram: Datagram) -> None:
        self.dgram = dgram
        msg = decode(dgram.payload)
        assert msg is not None, dgram
        self.msg: Message = msg
        assert msg.message_type is not None
        self.kind: MessageType = msg.message_type

    @property
    def broadcast(self) -> bool:
        return self.dgram.dst_ip == IPv4Address("255.255.255.255")

    def __repr__(self) -> str:
        return f"Sent({self.kind.name} to {self.dgram.dst_ip})"


def sent(client: DhcpClient) -> list[Sent]:
    return [Sent(d) for d in client.datagrams_to_send()]


def events(client: DhcpClient) -> list[object]:
    out = []
    while (event := client.next_event()) is not None:
        out.append(event)
    return out


def reply(
    to: Message,
    kind: MessageType,
    *,
    yiaddr: IPv4Address = OFFERED,
    server: IPv4Address | None = SERVER,
    lease_time: int | None = 600,
    t1: int | None = None,
    t2: int | None = None,
    mask: str = "255.255.255.0",
    xid: int | None = None,
    chaddr: bytes | None = None,
) -> bytes:
    options: dict[int, bytes] = {Option.MESSAGE_TYPE: bytes((kind,))}
    if server is not None:
        options[Option.SERVER_ID] = server.packed
    if kind is not MessageType.NAK:
        options[Option.SUBNET_MASK] = IPv4Address(mask).packed
        options[Option.ROUTER] = IPv4Address("192.0.2.254").packed
        options[Option.DNS] = IPv4Address("192.0.2.53").packed + IPv4Address("192.0.2.54").packed
        if lease_time is not None:
            options[Option.LEASE_TIME] = lease_time.to_bytes(4, "big")
        if t1 is not None:
            options[Option.RENEWAL_TIME] = t1.to_bytes(4, "big")
        if t2 is not None:
            options[Option.REBINDING_TIME] = t2.to_bytes(4, "big")
    answer = Message(
        op=BOOTREPLY,
        xid=to.xid if xid is None else xid,
        chaddr=to.chaddr if chaddr is None else chaddr,
        options=options,
        yiaddr=yiaddr if kind is not MessageType.NAK else IPv4Address(0),
    )
    return encode(answer)


def answer_frame(payload: bytes, dst: IPv4Address = OFFERED) -> bytes:
    """``payload`` as the server's frame to the client."""
    return build_frame(Datagram(payload, SERVER, dst, 67, 68, src_mac=SERVER_MAC, dst_mac=MAC))


def bind(client: DhcpClient, now: float = 0.0, **reply_args: object) -> None:
    """Take the client from nothing to BOUND (through frames, so it learns the server MAC)."""
    client.start(now)
    (discover,) = sent(client)
    client.receive_frame(answer_frame(reply(discover.msg, MessageType.OFFER)), now)
    (request,) = sent(client)
    client.receive_frame(answer_frame(reply(request.msg, MessageType.ACK, **reply_args)), now)  # type: ignore[arg-type]
    events(client)
