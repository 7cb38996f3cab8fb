"""Interface counters of a pod's namespace, parsed from /proc/net/dev."""

from __future__ import annotations

from qmprt.net.stats import parse_net_dev

NET_DEV = """Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     168       2    0    0    0     0          0         0      168       2    0    0    0     0       0          0
  eth0: 1234567    1000    3    4    0     0          0        12   765432     900    5    6    0     0       0          0
broken: 1 2 3
"""


def test_parse_net_dev_reads_each_interface() -> None:
    counters = parse_net_dev(NET_DEV)
    assert set(counters) == {"lo", "eth0"}
    eth0 = counters["eth0"]
    assert (eth0.rx_bytes, eth0.rx_packets, eth0.rx_errors, eth0.rx_dropped) == (1234567, 1000, 3, 4)
    assert (eth0.tx_bytes, eth0.tx_packets, eth0.tx_errors, eth0.tx_dropped) == (765432, 900, 5, 6)
