"""qmprt's Prometheus metrics: what the runtime itself does (RPCs, VM starts and exits, pulls, CNI,
recovery), on an HTTP endpoint of ``qmprt serve`` (``[metrics] address``, loopback by default).

Every layer records here (this module sits at the bottom, beside config), into one registry of its
own rather than prometheus-client's global one. The endpoint is prometheus-client's HTTP server in a
daemon thread: scraping never touches the event loop. The pods' own cAdvisor-style metrics are
kubelet's business and go through the CRI (``qmprt.pod.metrics``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from qmprt.errors import InvalidArgument

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_BOOT = (0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7.5, 10, 15, 20, 30, 45, 60, 90, 120, 300)

RPC_SECONDS = Histogram(
    "qmprt_cri_request_duration_seconds", "CRI calls by method and status code", ("method", "code"),
    buckets=_FAST, registry=REGISTRY,
)
VM_STARTS = Counter("qmprt_vm_starts_total", "VM starts (StartContainer) by result", ("result",), registry=REGISTRY)
VM_START_SECONDS = Histogram(
    "qmprt_vm_start_duration_seconds", "StartContainer: until QEMU runs and its monitor answers",
    buckets=_FAST, registry=REGISTRY,
)
VM_BOOT_SECONDS = Histogram(
    "qmprt_vm_boot_duration_seconds",
    "StartContainer until the guest reports it is ready on its console (guests that print qmprt's marker)",
    buckets=_BOOT, registry=REGISTRY,
)
VM_EXITS = Counter("qmprt_vm_exits_total", "VM exits by CRI reason", ("reason",), registry=REGISTRY)
LIVE_VMS = Gauge("qmprt_vms_running", "VMs running now", registry=REGISTRY)
PULLS = Counter("qmprt_image_pulls_total", "PullImage calls by result", ("result",), registry=REGISTRY)
CNI_SECONDS = Histogram(
    "qmprt_cni_plugin_duration_seconds", "CNI plugin runs by command and plugin type", ("command", "plugin"),
    buckets=_FAST, registry=REGISTRY,
)
RECOVERIES = Counter(
    "qmprt_recovered_containers_total", "containers found at start-up, by what recovery did with them",
    ("outcome",), registry=REGISTRY,
)


def watch_live_vms(count: Callable[[], int]) -> None:
    LIVE_VMS.set_function(count)


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:port`` for IPv6); port 0 picks a free one."""
    host, separator, port = address.rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidArgument(f"metrics.address {address!r} must be host:port, e.g. 127.0.0.1:9437")
    return host, int(port)


class Endpoint:
    """The HTTP endpoint serving ``REGISTRY``; ``address`` is where it really listens."""

    def __init__(self, address: str) -> None:
        host, port = parse_address(address)
        server: Any
        server, self._thread = start_http_server(port, addr=host, registry=REGISTRY)
        self._server = server
        bound_host, bound_port = server.server_address[:2]
        self.address = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if isinstance(self._thread, threading.Thread):
            self._thread.join(5)
