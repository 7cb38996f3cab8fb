"""What one guest NIC is told: the ``Lease``, and the answer it gives to each client message.

Stateless by design: the lease is the CNI result, so any REQUEST for its address is ACKed, a REQUEST
for another address NAKed, and a restart of qmprt answers exactly as before. Everything here is pure;
``answer_frame`` takes a received frame to the reply frame (or None) and never raises on bad input.

Option 121 (RFC 3442) is sent whenever the lease has routes or a gateway outside its subnet, and then
also carries the default route, because clients that take 121 ignore option 3. A gateway outside the
subnet (a /32 pod address, Calico style) first gets an on-link host route (router 0.0.0.0), so the
client can install the routes through it.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qmprt.errors import InvalidArgument
from qmprt.net.dhcp_codec import (
    BOOTREPLY, BOOTREQUEST, BROADCAST_FLAG, BROADCAST_IP, CLIENT_PORT, OPT_CLASSLESS_ROUTES, OPT_DNS, OPT_DOMAIN,
    OPT_DOMAIN_SEARCH, OPT_HOSTNAME, OPT_LEASE_TIME, OPT_MESSAGE, OPT_MESSAGE_TYPE, OPT_MTU, OPT_REBINDING_TIME,
    OPT_RENEWAL_TIME, OPT_REQUESTED_IP, OPT_ROUTER, OPT_SERVER_ID, OPT_SUBNET_MASK, SERVER_PORT, UNSPECIFIED,
    MalformedPacket, Message, MessageType, decode_frame, decode_message, dns_name, encode_classless_routes,
    encode_domain_search, encode_frame, encode_message,
)

log = logging.getLogger(__name__)

INFINITE_LEASE = 0xFFFFFFFF
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_KEYS = {
    "client_mac", "address", "gateway", "routes", "dns_servers", "search", "domain", "mtu", "hostname",
    "lease_seconds", "server_ip",
}


class LeaseError(InvalidArgument, ValueError):
    """A lease that cannot be handed out; both a ValueError and qmprt's InvalidArgument."""


def _ipv4(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError as err:
        raise LeaseError(f"{what} {text!r} is not an IPv4 address") from err


def _name(text: str, what: str) -> None:
    try:
        dns_name(text, what)
    except ValueError as err:
        raise LeaseError(str(err)) from None


@dataclass(frozen=True)
class Lease:
    """What one guest NIC gets; validated on construction (LeaseError, a ValueError).

    Route gateways: "" means the lease's gateway (as a CNI route without ``gw``), "0.0.0.0" on-link.
    ``client_mac`` is stored in lower case.
    """

    client_mac: str
    address: str  # IPv4 CIDR
    gateway: str = ""
    routes: tuple[tuple[str, str], ...] = ()
    dns_servers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    domain: str = ""
    mtu: int | None = None
    hostname: str = ""
    lease_seconds: int = 86400
    server_ip: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.client_mac, str) or not _MAC.match(self.client_mac.lower()):
            raise LeaseError(f"client_mac {self.client_mac!r} is not a MAC address like aa:bb:cc:dd:ee:ff")
        object.__setattr__(self, "client_mac", self.client_mac.lower())
        # Lists passed in become tuples, so the lease stays hashable and compares equal to its JSON twin.
        object.__setattr__(self, "routes", tuple(tuple(route) for route in self.routes))
        object.__setattr__(self, "dns_servers", tuple(self.dns_servers))
        object.__setattr__(self, "search", tuple(self.search))
        if not isinstance(self.address, str) or "/" not in self.address:
            raise LeaseError(f"address {self.address!r} needs a prefix length (CIDR)")
        try:
            interface = ipaddress.IPv4Interface(self.address)
        except ValueError as err:
            raise LeaseError(f"address {self.address!r} is not an IPv4 CIDR") from err
        ip, network = interface.ip, interface.network
        if ip.is_unspecified or ip.is_multicast or ip.is_loopback or ip == ipaddress.IPv4Address(BROADCAST_IP):
            raise LeaseError(f"address {self.address!r} cannot be handed out")
        if network.prefixlen <= 30 and ip in (network.network_address, network.broadcast_address):
            raise LeaseError(f"address {self.address!r} is the network or broadcast address of its subnet")
        for what, value in (("gateway", self.gateway), ("server_ip", self.server_ip)):
            if value and _ipv4(value, what) == ip:
                raise LeaseError(f"{what} {value} is the client's own address")
        for route in self.routes:
            if len(route) != 2:
                raise LeaseError(f"route {route!r} is not a (destination, gateway) pair")
            destination, via = route
            try:
                ipaddress.IPv4Network(destination)
            except ValueError as err:
                raise LeaseError(f"route destination {destination!r} is not an IPv4 network in CIDR") from err
            if via:
                _ipv4(via, "route gateway")
            elif not self.gateway:
                raise LeaseError(f"route to {destination} has no gateway and the lease has none either")
        for server in self.dns_servers:
            _ipv4(server, "DNS server")
        for domain in self.search:
            _name(domain, "search domain")
        if self.domain:
            _name(self.domain, "domain")
        if self.hostname:
            _name(self.hostname, "hostname")
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise LeaseError(f"mtu {self.mtu} is outside 68..65535")
        if not 1 <= self.lease_seconds <= INFINITE_LEASE:
            raise LeaseError(f"lease_seconds {self.lease_seconds} is outside 1..{INFINITE_LEASE}")

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.address)

    @property
    def ip(self) -> str:
        return str(self.interface.ip)

    @property
    def server_identifier(self) -> str:
        """Option 54 and the replies' source: ``server_ip``, else the gateway, else the subnet's first
        usable address that is not the client's (a /32: the neighbouring address)."""
        if self.server_ip:
            return self.server_ip
        if self.gateway:
            return self.gateway
        client = self.interface.ip
        for host in self.interface.network.hosts():
            if host != client:
                return str(host)
        return str(ipaddress.IPv4Address(int(client) ^ 1))

    def classless_routes(self) -> tuple[tuple[str, str], ...]:
        """Option 121's routes, empty when option 3 says it all: on-link ones, the given ones, the default."""
        network = self.interface.network
        routes = [(str(ipaddress.IPv4Network(destination)), via or self.gateway) for destination, via in self.routes]
        off_subnet = bool(self.gateway) and ipaddress.IPv4Address(self.gateway) not in network
        if not routes and not off_subnet:
            return ()
        if self.gateway and not any(destination.endswith("/0") for destination, _ in routes):
            routes.append(("0.0.0.0/0", self.gateway))
        on_link: list[tuple[str, str]] = []
        for _, via in routes:
            address = ipaddress.IPv4Address(via)
            host_route = (f"{via}/32", UNSPECIFIED)
            if not address.is_unspecified and address not in network and host_route not in on_link:
                on_link.append(host_route)
        return tuple(on_link + routes)

    def to_json(self) -> dict[str, Any]:
        return {
            "client_mac": self.client_mac,
            "address": self.address,
            "gateway": self.gateway,
            "routes": [{"destination": destination, "gateway": via} for destination, via in self.routes],
            "dns_servers": list(self.dns_servers),
            "search": list(self.search),
            "domain": self.domain,
            "mtu": self.mtu,
            "hostname": self.hostname,
            "lease_seconds": self.lease_seconds,
            "server_ip": self.server_ip,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Lease:
        """The lease ``to_json`` wrote (keys other than the two required ones may be left out)."""
        if not isinstance(document, Mapping):
            raise LeaseError("a lease is a JSON object")
        unknown = set(document) - _KEYS
        if unknown:
            raise LeaseError(f"unknown lease keys: {sorted(unknown)}")
        for key in ("client_mac", "address"):
            if key not in document:
                raise LeaseError(f"a lease needs {key}")

        def text(key: str) -> str:
            value = document.get(key, "")
            if not isinstance(value, str):
                raise LeaseError(f"{key} must be a string")
            return value

        def texts(key: str) -> tuple[str, ...]:
            value = document.get(key, [])
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise LeaseError(f"{key} must be a list of strings")
            return tuple(value)

        def integer(key: str, default: int | None) -> int | None:
            value = document.get(key, default)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise LeaseError(f"{key} must be an integer")
            return value

        routes = document.get("routes", [])
        if not isinstance(routes, list):
            raise LeaseError("routes must be a list")
        pairs = []
        for route in routes:
            if (
                not isinstance(route, Mapping)
                or set(route) - {"destination", "gateway"}
                or not isinstance(route.get("destination"), str)
                or not isinstance(route.get("gateway", ""), str)
            ):
                raise LeaseError(f"route {route!r} is not {{'destination': CIDR, 'gateway': address}}")
            pairs.append((route["destination"], route.get("gateway", "")))
        lease_seconds = integer("lease_seconds", 86400)
        if lease_seconds is None:
            raise LeaseError("lease_seconds must be an integer")
        return cls(
            client_mac=text("client_mac"), address=text("address"), gateway=text("gateway"), routes=tuple(pairs),
            dns_servers=texts("dns_servers"), search=texts("search"), domain=text("domain"),
            mtu=integer("mtu", None), hostname=text("hostname"), lease_seconds=lease_seconds,
            server_ip=text("server_ip"),
        )


# ---- the answers ----


def lease_options(lease: Lease, with_lease_time: bool) -> list[tuple[int, bytes]]:
    """The lease's parameters as options, in the order they are sent (after 53 and 54)."""
    options: list[tuple[int, bytes]] = []
    if with_lease_time:
        options.append((OPT_LEASE_TIME, struct.pack("!I", lease.lease_seconds)))
        if lease.lease_seconds != INFINITE_LEASE:
            options.append((OPT_RENEWAL_TIME, struct.pack("!I", lease.lease_seconds // 2)))
            options.append((OPT_REBINDING_TIME, struct.pack("!I", lease.lease_seconds * 7 // 8)))
    options.append((OPT_SUBNET_MASK, lease.interface.netmask.packed))
    if lease.gateway:
        options.append((OPT_ROUTER, ipaddress.IPv4Address(lease.gateway).packed))
    routes = lease.classless_routes()
    if routes:
        options.append((OPT_CLASSLESS_ROUTES, encode_classless_routes(routes)))
    if lease.dns_servers:
        options.append((OPT_DNS, b"".join(ipaddress.IPv4Address(server).packed for server in lease.dns_servers)))
    if lease.domain:
        options.append((OPT_DOMAIN, dns_name(lease.domain).encode("ascii")))
    if lease.search:
        options.append((OPT_DOMAIN_SEARCH, encode_domain_search(lease.search)))
    if lease.mtu is not None:
        options.append((OPT_MTU, struct.pack("!H", lease.mtu)))
    if lease.hostname:
        options.append((OPT_HOSTNAME, dns_name(lease.hostname).encode("ascii")))
    return options


def _reply(
    lease: Lease, request: Message, kind: MessageType, yiaddr: str, ciaddr: str, parameters: list[tuple[int, bytes]]
) -> Message:
    header = [(OPT_MESSAGE_TYPE, bytes((kind,))), (OPT_SERVER_ID, ipaddress.IPv4Address(lease.server_identifier).packed)]
    return Message(
        op=BOOTREPLY, xid=request.xid, chaddr=request.chaddr, flags=request.flags, ciaddr=ciaddr, yiaddr=yiaddr,
        giaddr=request.giaddr, options=dict(header + parameters),
    )


def reply_for(lease: Lease, request: Message) -> Message | None:
    """The answer to a client's message (RFC 2131 §4.3), or None when it gets none."""
    if request.op != BOOTREQUEST or request.chaddr != lease.client_mac:
        return None
    kind = request.message_type
    if kind == MessageType.DISCOVER:
        return _reply(lease, request, MessageType.OFFER, lease.ip, UNSPECIFIED, lease_options(lease, True))
    if kind == MessageType.REQUEST:
        server_id = request.address_option(OPT_SERVER_ID)
        if server_id is not None and server_id != lease.server_identifier:
            log.debug("DHCP REQUEST from %s is for server %s, not us", request.chaddr, server_id)
            return None
        requested = request.address_option(OPT_REQUESTED_IP) or request.ciaddr
        if requested != lease.ip:
            text = f"{requested} is not this client's address".encode()
            return _reply(lease, request, MessageType.NAK, UNSPECIFIED, UNSPECIFIED, [(OPT_MESSAGE, text)])
        return _reply(lease, request, MessageType.ACK, lease.ip, request.ciaddr, lease_options(lease, True))
    if kind == MessageType.INFORM:  # RFC 2131: no yiaddr and no lease time
        return _reply(lease, request, MessageType.ACK, UNSPECIFIED, request.ciaddr, lease_options(lease, False))
    if kind == MessageType.DECLINE:
        log.warning(
            "DHCP DECLINE of %s from %s: is the address in use on the guest's link?",
            request.address_option(OPT_REQUESTED_IP), request.chaddr,
        )
    elif kind == MessageType.RELEASE:
        log.info("DHCP RELEASE of %s from %s", request.ciaddr, request.chaddr)
    else:
        log.debug("DHCP message type %s from %s ignored", kind, request.chaddr)
    return None


def reply_destination(request: Message, reply: Message) -> str:
    """The reply's IP destination (RFC 2131 §4.1); the Ethernet destination is always the client's MAC."""
    if reply.message_type == MessageType.NAK or request.flags & BROADCAST_FLAG:
        return BROADCAST_IP
    for address in (request.ciaddr, reply.yiaddr):
        if address != UNSPECIFIED:
            return address
    return BROADCAST_IP


def answer_frame(
    lease: Lease, frame: bytes, server_mac: str, packet_type: int = socket.PACKET_HOST
) -> tuple[Message, bytes] | None:
    """The reply and its frame for one received frame, or None; never raises on bad input.

    ``packet_type`` is the sll_pkttype recvfrom reported: frames this host sent (our own replies among
    them) are never answered.
    """
    if packet_type == socket.PACKET_OUTGOING:
        return None
    try:
        datagram = decode_frame(frame)
        if datagram.destination_port != SERVER_PORT or datagram.source_port != CLIENT_PORT:
            return None
        request = decode_message(datagram.payload)
        reply = reply_for(lease, request)
        if reply is None:
            if request.chaddr != lease.client_mac:
                log.debug("DHCP from %s ignored: this responder serves %s", request.chaddr, lease.client_mac)
            return None
        destination = reply_destination(request, reply)
        payload = encode_message(reply)
        return reply, encode_frame(server_mac, lease.client_mac, lease.server_identifier, destination, payload)
    except (MalformedPacket, ValueError, struct.error, IndexError) as err:
        log.debug("malformed DHCP frame (%d bytes) dropped: %s", len(frame), err)
        return None
