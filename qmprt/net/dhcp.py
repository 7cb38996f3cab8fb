"""A DHCPv4 responder for one guest NIC: it hands the CNI-assigned lease to that NIC's MAC and nobody else.

Guests whose images ignore cloud-init network-config still learn their pod address this way. The
responder runs in qmprt's event loop with a packet socket in the pod's network namespace, on the
interface that faces the VM, and serves exactly one ``Lease`` without state (see
:mod:`qmprt.net.dhcp_lease` for the answers, :mod:`qmprt.net.dhcp_codec` for the wire format).

Assumptions and choices:

- The socket is ``AF_PACKET``/``SOCK_RAW`` bound with ``ETH_P_ALL``, not ``ETH_P_IP``: with the tap
  wired to the CNI interface by a tc ingress mirred redirect, a frame the guest sends is redirected
  before protocol-specific packet sockets see it (they run after tc ingress; ``ETH_P_ALL`` ones before).
  A classic BPF filter, attached before ``bind`` so nothing unfiltered queues up, keeps everything
  but IPv4 UDP to port 67 that was not sent by this host in the kernel. With tc-redirect wiring the
  guest's requests go no further: a filter on the tap's ingress drops them after packet sockets saw
  them (:mod:`qmprt.net.wiring_tc`); with macvtap wiring they also reach the pod network, harmlessly.
- Frames this host sent (``PACKET_OUTGOING``) are never answered. So for macvtap wiring the responder
  belongs on a bridge-mode macvlan sibling of the macvtap, not on the macvtap itself: the guest's
  frames are outgoing on the macvtap, but arrive on a sibling, and a reply sent there reaches the guest.
- Replies are Ethernet unicast to the client's MAC, from the interface's own MAC.
- The interface going down (or being down at ``start``) is reported once as ENETDOWN and logged; the
  kernel re-arms the socket when it comes up again, so the responder keeps its socket. An interface
  that is deleted leaves a socket that never fires again: its owner closes the responder, and
  ``start`` after ``close`` (on a new interface of the same name) serves the same lease again.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import re
import socket
import struct

from qmprt.errors import FailedPrecondition, InternalError, InvalidArgument, NotFound
from qmprt.net import netns
from qmprt.net.dhcp_codec import (
    MalformedPacket, Message, MessageType, decode_classless_routes, decode_domain_search, decode_frame,
    decode_message, decode_options, encode_classless_routes, encode_domain_search, encode_frame, encode_message,
    encode_options, ipv4_checksum, mac_text,
)
from qmprt.net.dhcp_lease import Lease, LeaseError, answer_frame, lease_options, reply_destination, reply_for

__all__ = [
    "DHCPResponder", "Lease", "LeaseError", "MalformedPacket", "Message", "MessageType", "answer_frame",
    "decode_classless_routes", "decode_domain_search", "decode_frame", "decode_message", "decode_options",
    "encode_classless_routes", "encode_domain_search", "encode_frame", "encode_message", "encode_options",
    "ipv4_checksum", "lease_options", "reply_destination", "reply_for",
]

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")
_BATCH = 64  # frames handled per wake-up before the loop gets to run other work


def _dhcp_filter() -> bytes:
    """Classic BPF: accept unfragmented IPv4 UDP to port 67 not sent by this host, drop the rest."""
    program = [
        (0x20, 0, 0, (-0x1000 + 4) & 0xFFFFFFFF),  # ld [SKF_AD_OFF + SKF_AD_PKTTYPE]
        (0x15, 10, 0, socket.PACKET_OUTGOING),  # jeq -> drop
        (0x28, 0, 0, 12),  # ldh [12]: ethertype
        (0x15, 0, 8, 0x0800),  # jne IPv4 -> drop
        (0x30, 0, 0, 23),  # ldb [23]: IP protocol
        (0x15, 0, 6, socket.IPPROTO_UDP),  # jne UDP -> drop
        (0x28, 0, 0, 20),  # ldh [20]: flags and fragment offset
        (0x45, 4, 0, 0x3FFF),  # jset "more fragments" or an offset -> drop
        (0xB1, 0, 0, 14),  # ldx 4*([14]&0xf): IP header length
        (0x48, 0, 0, 16),  # ldh [x + 16]: UDP destination port
        (0x15, 0, 1, 67),  # jne 67 -> drop
        (0x06, 0, 0, 0x40000),  # ret: accept
        (0x06, 0, 0, 0),  # ret: drop
    ]
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


_FILTER = _dhcp_filter()


def _open_packet_socket(ifname: str) -> socket.socket:
    """Called inside the pod's namespace. Protocol 0 until bind, so no frame arrives before the filter."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        program = ctypes.create_string_buffer(_FILTER, len(_FILTER))
        fprog = struct.pack("HL", len(_FILTER) // 8, ctypes.addressof(program))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        sock.bind((ifname, ETH_P_ALL))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class DHCPResponder:
    """Answers ``lease.client_mac`` on ``ifname`` in the namespace at ``netns_path``, from the running loop."""

    def __init__(self, netns_path: str, ifname: str, lease: Lease) -> None:
        if not _IFNAME.match(ifname):
            raise InvalidArgument(f"bad interface name {ifname!r}")
        self.netns_path = os.fspath(netns_path)
        self.ifname = ifname
        self.lease = lease
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server_mac = ""
        self._answered = 0

    @property
    def answered(self) -> int:
        """Replies sent (OFFER, ACK and NAK), over every start."""
        return self._answered

    @property
    def serving(self) -> bool:
        return self._socket is not None

    async def start(self) -> None:
        """Open the socket in the namespace and serve it; NotFound when the namespace or interface is missing."""
        if self._socket is not None:
            raise FailedPrecondition(f"the DHCP responder on {self.ifname} in {self.netns_path} is already serving")
        loop = asyncio.get_running_loop()
        try:
            sock = netns.run_in(self.netns_path, lambda: _open_packet_socket(self.ifname))
        except FileNotFoundError as err:
            raise NotFound(f"network namespace {self.netns_path} does not exist") from err
        except OSError as err:
            if err.errno == errno.ENODEV:
                raise NotFound(f"no interface {self.ifname} in network namespace {self.netns_path}") from err
            raise InternalError(f"cannot open a DHCP socket on {self.ifname} in {self.netns_path}: {err}") from err
        try:
            self._server_mac = mac_text(sock.getsockname()[4][:6])
            loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.close()
            raise
        self._socket, self._loop = sock, loop
        log.info(
            "DHCP responder on %s in %s serves %s to %s", self.ifname, self.netns_path, self.lease.address,
            self.lease.client_mac,
        )

    def close(self) -> None:
        """Stop serving and close the socket; idempotent."""
        sock, loop = self._socket, self._loop
        self._socket = self._loop = None
        if sock is None:
            return
        if loop is not None and not loop.is_closed():
            loop.remove_reader(sock.fileno())
        sock.close()

    def _on_readable(self) -> None:
        for _ in range(_BATCH):
            sock = self._socket
            if sock is None:
                return
            try:
                frame, address = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # reported once (ENETDOWN: the link went down); not a dead socket
                level = logging.INFO if err.errno == errno.ENETDOWN else logging.WARNING
                log.log(level, "DHCP responder on %s in %s: %s", self.ifname, self.netns_path, err)
                return
            answer = answer_frame(self.lease, frame, self._server_mac, address[2])
            if answer is not None:
                self._send(sock, *answer)

    def _send(self, sock: socket.socket, reply: Message, frame: bytes) -> None:
        kind = reply.message_type.name if reply.message_type is not None else "reply"
        try:
            sock.send(frame)
        except OSError as err:
            log.warning("DHCP %s to %s on %s not sent: %s", kind, self.lease.client_mac, self.ifname, err)
            return
        self._answered += 1
        offered = f" {self.lease.address}" if reply.yiaddr == self.lease.ip else ""
        log.info("DHCP %s%s to %s on %s", kind, offered, self.lease.client_mac, self.ifname)
