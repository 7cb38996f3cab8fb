"""What the pod network costs a VM pod, in each wiring mode, on a private node.

The node is a network namespace made by the benchmark (``qmprt-bn<hex>``: lo up, IPv4 forwarding on)
with a private ``qmprt serve`` inside it (``nsenter --net=``, so state and mounts stay in the machine's
mount namespace) and Debian's CNI plugins laid out like Flannel: ``bridge`` ``cni0`` (gateway, MTU
1450) + ``host-local`` in 10.97.0.0/24 (its dataDir in a temp dir) + ``portmap``. The benchmark makes
``cni0`` itself before the first pod, as a node that has run pods already has it, so that its ARP
retransmit time can be set to 50 ms: the ping figure below is then good to ~50 ms instead of the
default 1 s between ARP requests.

1. Start cost. Round by round (so load on a shared machine falls on all alike), one pod of each of:
   no network (the CNI config directory is empty: RunPodSandbox makes the netns, the VM has no NIC),
   ``qmprt.io/network-wiring: tc-redirect`` and ``macvtap`` (the conflist is in place: RunPodSandbox
   runs CNI ADD and the wiring, the VM gets a virtio-net NIC with the pod IP). Each pod goes through
   the CRI socket (RunPodSandbox + CreateContainer + StartContainer until the tiny guest's ready
   marker is in its CRI log) and is removed before the next starts. "Network adds" is the median of a
   mode minus the median without network, for the three RPCs and for the total to the marker. For
   the two network modes, a thread in the node sends an ICMP echo request to the pod IP every 20 ms
   from just before StartContainer: "StartContainer -> ping reply" is when the guest's network is
   really up (the guest configures eth0 before it prints the marker).
2. Throughput, node -> guest, in the last round: the guest runs busybox ``nc -l -p 5001 > /dev/null``
   in a loop (the container's command); a TCP socket opened in the node namespace sends
   --transfer-mib MiB of zeros, shuts down its sending side and waits for the guest's nc to close;
   MiB/s over that, median of 3 transfers.

Every wait is bounded. On the way out, whatever happened: every pod is removed through the CRI, the
server stopped by its PID (any QEMU of its left killed), the namespaces of the pods it started removed
if the server could not, then the node namespace and the temp directories.

Standalone: ``.venv/bin/python tools/bench/network.py --pods 3 [--json FILE]`` (root); ``tools/bench/run``
runs it after density (``--skip network`` leaves it out).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import environment, error_text, format_table, headline, summaries, summary
from cri import Client, PodTemplate, QmprtUnderTest, qmprt_server
from cri_api.v1 import api_pb2 as cri

from qmprt.net import netns

MODES = ("none", "tc-redirect", "macvtap")
NETWORK_MODES = MODES[1:]
MODE_LABELS = {"none": "no network", "tc-redirect": "tc-redirect", "macvtap": "macvtap"}
PLUGIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))
PLUGINS = ("bridge", "host-local", "portmap")
SUBNET = "10.97.0.0/24"
MTU = 1450
ARP_RETRANSMIT_MS = 50
GUEST_PORT = 5001
TRANSFERS = 3
START_TIMEOUT_S = 180.0
PING_INTERVAL_S = 0.02
PING_AFTER_READY_S = 30.0  # the guest configures eth0 before its marker: a reply is due well before this
TRANSFER_TIMEOUT_S = 300.0
CHUNK = bytes(1 << 20)
# The same command for every pod, so that the network is the only difference between the modes; it
# runs after the ready marker (the guest's runcmd), so it does not delay it.
GUEST_COMMAND = ("/bin/sh", "-c", f"while :; do nc -l -p {GUEST_PORT} > /dev/null || sleep 1; done")


def template(mode: str) -> PodTemplate:
    wiring = () if mode == "none" else (("qmprt.io/network-wiring", mode),)
    return PodTemplate(command=GUEST_COMMAND, sandbox_annotations=wiring)


# -- the node -----------------------------------------------------------------------------------------
def plugin_dir() -> Path:
    for directory in PLUGIN_DIRS:
        if all((directory / plugin).exists() for plugin in PLUGINS):
            return directory
    raise RuntimeError(f"no directory of {', '.join(map(str, PLUGIN_DIRS))} has the CNI plugins {', '.join(PLUGINS)} "
                       "(Debian: containernetworking-plugins)")


@dataclass
class Node:
    name: str
    path: Path
    ipam_dir: Path

    def run(self, *argv: str, timeout: float = 20) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in the node: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def conflist(self) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": "bench",
            "disableCheck": True,  # Debian's portmap fails CHECK for IPv4-only pods (plugins#819)
            "plugins": [
                {
                    "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True, "mtu": MTU,
                    "ipam": {
                        "type": "host-local", "dataDir": str(self.ipam_dir),
                        "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": True}, "snat": False},
            ],
        }

    def configure(self, conf_dir: Path, networked: bool) -> None:
        """The conflist in ``conf_dir`` for a network pod, nothing for one without (qmprt reads the
        directory at each RunPodSandbox)."""
        conflist = conf_dir / "10-bench.conflist"
        if networked:
            conflist.write_text(json.dumps(self.conflist()))
        else:
            conflist.unlink(missing_ok=True)


@contextlib.contextmanager
def private_node() -> Iterator[Node]:
    """A node namespace with ``cni0`` made and tuned; removed with its temp directory on the way out."""
    name = f"qmprt-bn{os.urandom(4).hex()}"
    work = Path(tempfile.mkdtemp(prefix="qmprt-bench-net-"))
    created = False
    try:
        path = netns.create(name)
        created = True
        node = Node(name, path, work / "ipam")
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
            ["ip", "link", "add", "cni0", "mtu", str(MTU), "type", "bridge"],
            ["sysctl", "-qw", f"net.ipv4.neigh.cni0.retrans_time_ms={ARP_RETRANSMIT_MS}"],
        ):
            node.run(*argv)
        yield node
    finally:
        if created:
            netns.remove(name)
        shutil.rmtree(work, ignore_errors=True)


# -- ping: when the guest's network is up -------------------------------------------------------------
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, sequence: int) -> bytes:
    payload = b"qmprt-bench"
    header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
    return struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, sequence) + payload


def is_echo_reply(packet: bytes, ident: int) -> bool:
    """``packet`` as a raw IPv4 ICMP socket returns it (IP header first): an echo reply of ours?"""
    header_length = (packet[0] & 0x0F) * 4 if packet else 0
    icmp = packet[header_length:header_length + 8]
    return len(icmp) == 8 and icmp[0] == 0 and struct.unpack("!H", icmp[4:6])[0] == ident


def pod_ip(client: Client, pod_id: str) -> str:
    status = client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10).status
    if not status.network.ip:
        raise RuntimeError(f"pod {pod_id[:12]} has no IP in PodSandboxStatus")
    return str(status.network.ip)


class Pinger:
    """From the node namespace, an ICMP echo request to a pod's IP every 20 ms, in a thread, until the
    first reply (its monotonic time is ``reply_at``), ``stop()`` or ``limit_s``."""

    def __init__(self, node: Node, client: Client, pod_id: str, limit_s: float) -> None:
        self.node = node
        self.client = client
        self.pod_id = pod_id
        self.limit_s = limit_s
        self.address = ""
        self.reply_at: float | None = None
        self.error: BaseException | None = None
        self.ident = int.from_bytes(os.urandom(2), "big")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ping {pod_id[:12]}", daemon=True)

    def start(self) -> Pinger:
        self._thread.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s
        try:
            self.address = pod_ip(self.client, self.pod_id)
            icmp = netns.run_in(self.node.path, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
            with icmp:
                sequence, next_send = 0, 0.0
                while not self._stop.is_set() and time.monotonic() < deadline:
                    if time.monotonic() >= next_send:
                        sequence = (sequence + 1) & 0xFFFF
                        with contextlib.suppress(OSError):  # unreachable until the guest answers ARP
                            icmp.sendto(echo_request(self.ident, sequence), (self.address, 0))
                        next_send = time.monotonic() + PING_INTERVAL_S
                    readable, _, _ = select.select([icmp], [], [], max(0.0, next_send - time.monotonic()))
                    if readable:
                        packet, (source, _) = icmp.recvfrom(2048)
                        if source == self.address and is_echo_reply(packet, self.ident):
                            self.reply_at = time.monotonic()
                            return
        except BaseException as err:  # noqa: BLE001 - reported by wait()
            self.error = err

    def wait(self, timeout: float) -> float:
        self._thread.join(timeout)
        if self.reply_at is None:
            self.stop()
            cause = f": {error_text(self.error)}" if self.error is not None else ""
            raise TimeoutError(f"no ping reply from {self.address or 'the pod'} within {timeout:.0f} s of its ready marker{cause}")
        return self.reply_at

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)


# -- throughput ---------------------------------------------------------------------------------------
def send_to_guest(node: Node, address: str, size_mib: int, timeout: float = TRANSFER_TIMEOUT_S) -> float:
    """MiB/s of ``size_mib`` MiB sent from the node namespace to the guest's nc, until it closes."""
    deadline = time.monotonic() + timeout

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"transfer of {size_mib} MiB to {address}:{GUEST_PORT} not done within {timeout:.0f} s")
        return remaining

    while True:  # the guest's loop restarts nc between transfers: refused until it listens again
        connection = netns.run_in(node.path, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        connection.settimeout(min(left(), 10))
        try:
            connection.connect((address, GUEST_PORT))
            break
        except (ConnectionRefusedError, socket.timeout):
            connection.close()
            time.sleep(0.1)
        except BaseException:
            connection.close()
            raise
    with connection:
        began = time.monotonic()
        for _ in range(size_mib):
            connection.settimeout(left())
            connection.sendall(CHUNK)
        connection.shutdown(socket.SHUT_WR)
        while True:
            connection.settimeout(left())
            if not connection.recv(65536):
                break
        seconds = time.monotonic() - began
    return size_mib / seconds


# -- the measurement ----------------------------------------------------------------------------------
def one_pod(
    qmprt: QmprtUnderTest, node: Node, mode: str, index: int, started_ids: list[str],
    keep: Callable[[str], None] | None = None,
) -> tuple[dict[str, float], float | None, str]:
    """One pod of ``mode``, removed before returning: its timings, StartContainer -> ping reply (ms;
    None and the error text when there was none). ``keep(pod_ip)`` runs while it is up."""
    networked = mode != "none"
    node.configure(qmprt.server.cni_dir, networked)
    pingers: list[Pinger] = []

    def on_created(pod_id: str, container_id: str) -> None:
        started_ids.append(pod_id)
        if networked:
            pingers.append(Pinger(node, qmprt.client, pod_id, START_TIMEOUT_S + PING_AFTER_READY_S).start())

    ping_ms: float | None = None
    ping_error = ""
    first_id = len(started_ids)
    try:
        try:
            started = qmprt.client.start_pod(
                index, qmprt.work / "logs" / f"{mode}-{index}", qmprt.guest.ready_marker,
                template=template(mode), on_created=on_created, timeout=START_TIMEOUT_S,
            )
        except BaseException:
            for pod_id in started_ids[first_id:]:  # a pod that never got ready must not run on beside the next
                with contextlib.suppress(Exception):
                    qmprt.client.remove_pod(pod_id)
            raise
        try:
            if pingers:
                try:
                    start_returned = started.ready_at - started.timings["ready_ms"] / 1000
                    ping_ms = (pingers[0].wait(PING_AFTER_READY_S) - start_returned) * 1000
                except TimeoutError as err:
                    ping_error = error_text(err)
            if keep is not None:
                keep(pingers[0].address if pingers else "")
        finally:
            qmprt.client.remove_pod(started.pod_id)
    finally:
        for pinger in pingers:
            pinger.stop()
    timings = started.timings
    return {**timings, "rpc_ms": timings["runp_ms"] + timings["create_ms"] + timings["start_ms"]}, ping_ms, ping_error


def remove_namespaces(started_ids: list[str]) -> None:
    """Namespaces of our pods the server could not remove (it died): only the pods this run started."""
    for pod_id in started_ids:
        name = netns.netns_name(pod_id)
        if netns.exists(name):
            print(f"bench: network: removing pod namespace {name} left behind", flush=True)
            netns.remove(name)


def measure(pods: int, transfer_mib: int) -> dict[str, Any]:
    """The network section: start cost per mode, ping after StartContainer, node -> guest MiB/s."""
    bin_dir = plugin_dir()
    samples: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    pings: dict[str, list[float]] = {mode: [] for mode in NETWORK_MODES}
    throughput: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    started_ids: list[str] = []
    report: dict[str, Any] = {
        "pods": pods, "transfer_mib": transfer_mib, "transfers": TRANSFERS,
        "node": {"cni": "bridge cni0 + host-local + portmap", "subnet": SUBNET, "mtu": MTU, "arp_retransmit_ms": ARP_RETRANSMIT_MS},
    }
    with contextlib.ExitStack() as cleanup:
        node = cleanup.enter_context(private_node())
        cleanup.callback(remove_namespaces, started_ids)  # after the server's own cleanup, before the node goes
        qmprt = cleanup.enter_context(qmprt_server(
            cni_settings=f'bin_dirs = ["{bin_dir}"]\nplugin_timeout_seconds = 30',
            exec_prefix=["nsenter", f"--net={node.path}", "--"],
        ))
        # Not counted: the first network pod (cold page cache for the plugins, the image, QEMU).
        try:
            report["first_pod_ms"] = one_pod(qmprt, node, "tc-redirect", 5000, started_ids)[0]["total_ms"]
        except Exception as err:  # noqa: BLE001 - the rounds say which modes work
            errors["first pod"] = error_text(err)

        def measure_throughput(mode: str, address: str) -> None:
            try:
                throughput[mode] = [send_to_guest(node, address, transfer_mib) for _ in range(TRANSFERS)]
            except Exception as err:  # noqa: BLE001 - reported as that mode's throughput
                errors[f"{mode} throughput"] = error_text(err)

        active = list(MODES)
        for index in range(pods):
            print(f"bench: network round {index + 1}/{pods}", flush=True)
            last = index == pods - 1
            for offset, mode in enumerate(list(active)):
                keep = functools.partial(measure_throughput, mode) if last and mode != "none" else None
                try:
                    row, ping_ms, ping_error = one_pod(qmprt, node, mode, 5100 + 10 * index + offset, started_ids, keep)
                except Exception as err:  # noqa: BLE001 - reported as that mode's result
                    errors[mode] = error_text(err)
                    active.remove(mode)
                    print(f"bench: network {mode}: {errors[mode]}", flush=True)
                    continue
                samples[mode].append(row)
                if ping_ms is not None:
                    pings[mode].append(ping_ms)
                elif ping_error:
                    errors.setdefault(f"{mode} ping", ping_error)
    report["start"] = {mode: summaries(rows) for mode, rows in samples.items() if rows}
    report["start_to_ping_ms"] = {mode: summary(values) for mode, values in pings.items() if values}
    report["throughput_mib_s"] = {mode: summary(values) for mode, values in throughput.items() if values}
    report["network_adds_ms"] = network_adds(report["start"])
    report["errors"] = errors
    return report


def network_adds(start: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Median of each network mode minus the median without network: the RPCs, and the total to ready."""
    if "none" not in start:
        return {}
    base = start["none"]
    return {
        mode: {key: start[mode][key]["median"] - base[key]["median"] for key in ("rpc_ms", "total_ms")}
        for mode in NETWORK_MODES if mode in start
    }


def table_lines(section: dict[str, Any]) -> list[str]:
    """The network section of the benchmark's table."""
    start, adds, pings, rates = section["start"], section["network_adds_ms"], section["start_to_ping_ms"], section["throughput_mib_s"]
    node = section["node"]
    lines = [
        f"Pod network: private node netns, {node['cni']} ({node['subnet']}, MTU {node['mtu']}); "
        f"{section['pods']} pods per mode, interleaved; median / p95 ms:",
    ]

    def number(value: float) -> str:
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"

    def cell(figures: dict[str, Any] | None, key: str = "") -> str:
        if figures is None or (key and key not in figures):
            return "-"
        figure = figures[key] if key else figures
        return f"{number(figure['median'])} / {number(figure['p95'])}"

    rows: list[tuple[object, ...]] = []
    for key, label in (
        ("runp_ms", "RunPodSandbox (netns; CNI ADD + wiring)"),
        ("create_ms", "CreateContainer"),
        ("start_ms", "StartContainer"),
        ("ready_ms", "StartContainer -> ready marker in CRI log"),
        ("total_ms", "total to ready"),
    ):
        rows.append((label, *(cell(start.get(mode), key) for mode in MODES)))
    rows.append(("StartContainer -> first ping reply from the node", "", *(cell(pings.get(mode)) for mode in NETWORK_MODES)))
    for key, label in (("rpc_ms", "network adds: the 3 RPCs (median)"), ("total_ms", "network adds: total to ready (median)")):
        rows.append((label, "", *(f"{adds[mode][key]:+.1f}" if mode in adds else "-" for mode in NETWORK_MODES)))
    rows.append((
        f"node -> guest TCP, {section['transfer_mib']} MiB: MiB/s (median of {section['transfers']})", "",
        *(number(rates[mode]["median"]) if mode in rates else "-" for mode in NETWORK_MODES),
    ))
    lines.append(format_table(("", *(MODE_LABELS[mode] for mode in MODES)), rows))
    lines.append("  ping: ICMP echo every 20 ms from the node from just before StartContainer; TCP: a socket in the node")
    lines.append("  netns -> busybox nc in the guest, timed until the guest closes after the last byte.")
    if "first_pod_ms" in section:
        lines.append(f"  first network pod (not counted): {number(section['first_pod_ms'])} ms to ready")
    for name, text in section["errors"].items():
        lines.append(f"  not measured: {name}: {text}")
    return lines


# -- standalone ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=10, help="pods of each mode (default 10)")
    parser.add_argument("--transfer-mib", type=int, default=64, help="MiB sent node -> guest per transfer (default 64)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("tools/bench/network.py needs root (network namespaces, cgroups)")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # unwinds like Ctrl-C: everything is cleaned up
    report = {**environment(), "network": measure(args.pods, args.transfer_mib), "load_average_end": list(os.getloadavg())}
    print("\n".join([f"qmprt network benchmark: {headline(report)}", *table_lines(report["network"])]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
