"""Traffic counters of the interfaces in a pod's network namespace (what the pod sends and receives).

Read from ``/proc/thread-self/net/dev`` by a thread that entered the namespace (``netns.run_in``):
one small file, no netlink socket. Blocking: call it from a worker thread, never the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass

from qmprt.errors import FailedPrecondition
from qmprt.net import netns


@dataclass(frozen=True)
class InterfaceCounters:
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_net_dev(text: str) -> dict[str, InterfaceCounters]:
    """``/proc/net/dev``: two header lines, then ``name: rx(8 fields) tx(8 fields)`` per interface."""
    counters = {}
    for line in text.splitlines()[2:]:
        name, separator, values = line.partition(":")
        fields = values.split()
        if not separator or len(fields) < 16 or not all(field.isdigit() for field in fields[:16]):
            continue
        numbers = [int(field) for field in fields[:16]]
        counters[name.strip()] = InterfaceCounters(
            rx_bytes=numbers[0], rx_packets=numbers[1], rx_errors=numbers[2], rx_dropped=numbers[3],
            tx_bytes=numbers[8], tx_packets=numbers[9], tx_errors=numbers[10], tx_dropped=numbers[11],
        )
    return counters


def _read_net_dev() -> str:
    with open("/proc/thread-self/net/dev", encoding="ascii", errors="replace") as net_dev:
        return net_dev.read(1 << 20)


def interface_counters(netns_path: str, ifnames: Collection[str]) -> dict[str, InterfaceCounters]:
    """The counters of ``ifnames`` in the namespace at ``netns_path`` (missing ones are left out)."""
    if not os.path.exists(netns_path):
        raise FailedPrecondition(f"network namespace {netns_path} does not exist")
    found = parse_net_dev(netns.run_in(netns_path, _read_net_dev))
    return {name: found[name] for name in ifnames if name in found}
