"""What Exec and PortForward cost, beside containerd+runc on the same machine.

On a private node (network.py's: a namespace with a Flannel-like bridge, ``qmprt serve`` inside it),
one tiny-guest VM pod (tc-redirect wiring) whose command is a TCP sink (busybox ``nc -l`` in a loop),
and a busybox container pod in a private containerd (containerd.py). For each:

1. Exec round trip of ``true``, --execs times: ExecSync (one gRPC call), and streaming Exec (the Exec
   call, then the SPDY/3.1 upgrade of its URL, the error/stdout/stderr streams, until the exit status
   arrives: what ``kubectl exec`` waits for). p50/p99 in ms.
2. stdout throughput: ``yes <64 bytes> | head -c <N MiB>`` through streaming Exec, read to the end;
   MiB/s, median of 3.
3. VM pod only: PortForward to the sink, N MiB sent through the forwarded connection until the guest's
   nc closed it, beside the same N MiB sent node -> guest directly over TCP (network.py); median of 3.

The SPDY client is the tests' (tests/spdy_client.py, behaving as Go's spdystream: no flow control).
qmprt's streaming server listens on the node namespace's loopback, so its client runs in a thread
inside that namespace (its own event loop); containerd's listens on the machine's.

Standalone: ``.venv/bin/python tools/bench/streams.py [--execs 50] [--transfer-mib 64]`` (root);
``tools/bench/run`` runs it last (``--skip streams`` leaves it out).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from common import environment, error_text, format_table, headline, summary
from containerd import READY_LINE, Containerd
from cri import Client, PodTemplate, qmprt_server
from cri_api.v1 import api_pb2 as cri
from network import GUEST_COMMAND, GUEST_PORT, plugin_dir, private_node, send_to_guest

from qmprt.net import netns
from tests.spdy_client import SpdyClient

T = TypeVar("T")
TRANSFERS = 3
LINE = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"


def exec_url(client: Client, container_id: str, argv: list[str]) -> str:
    request = cri.ExecRequest(container_id=container_id, cmd=argv, stdout=True, stderr=True)
    return str(client.runtime.Exec(request, timeout=30).url)


async def spdy_exec(url: str) -> tuple[int, bytes]:
    """(bytes of stdout, and whether the status was Success as 0/1), like kubectl exec."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    async with await SpdyClient.connect(parts.hostname, parts.port, parts.path, protocols=("v4.channel.k8s.io",),
                                        flow_control=False) as spdy:
        error = await spdy.open_stream({"streamType": "error"}, fin=True)
        stdout = await spdy.open_stream({"streamType": "stdout"}, fin=True)
        stderr = await spdy.open_stream({"streamType": "stderr"}, fin=True)
        out, _ = await asyncio.gather(spdy.read_all(stdout), spdy.read_all(stderr))
        raw = await spdy.read_all(error)
    # An empty error stream is success too (containerd writes nothing then; kubectl reads it so).
    return (0 if not raw or json.loads(raw).get("status") == "Success" else 1), out


async def spdy_forward(url: str, size_mib: int) -> float:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    chunk = bytes(1 << 20)
    async with await SpdyClient.connect(parts.hostname, parts.port, parts.path, protocols=("portforward.k8s.io",),
                                        flow_control=False) as spdy:
        await spdy.open_stream({"streamType": "error", "port": str(GUEST_PORT), "requestID": "0"}, fin=True)
        data = await spdy.open_stream({"streamType": "data", "port": str(GUEST_PORT), "requestID": "0"})
        began = time.monotonic()
        for _ in range(size_mib):
            await data.write(chunk)
        await data.close()
        await spdy.read_all(data)  # ends when the guest's nc closed the connection
        return size_mib / (time.monotonic() - began)


def timed(function: Callable[[], object]) -> float:
    began = time.perf_counter()
    function()
    return (time.perf_counter() - began) * 1000


def measure_runtime(
    client: Client, container_id: str, execs: int, transfer_mib: int, run: Callable[[Awaitable[T]], T],
) -> dict[str, Any]:
    """ExecSync and streaming Exec of ``true``, and stdout MiB/s, for one runtime's container."""
    sync = [timed(lambda: client.runtime.ExecSync(
        cri.ExecSyncRequest(container_id=container_id, cmd=["true"], timeout=30), timeout=60)) for _ in range(execs)]

    def streamed() -> None:
        code, _ = run(spdy_exec(exec_url(client, container_id, ["true"])))
        assert code == 0

    streaming = [timed(streamed) for _ in range(execs)]
    rates = []
    for _ in range(TRANSFERS):
        url = exec_url(client, container_id, ["sh", "-c", f"yes {LINE} | head -c {transfer_mib << 20}"])
        began = time.monotonic()
        _, out = run(spdy_exec(url))
        seconds = time.monotonic() - began
        if len(out) != transfer_mib << 20:
            raise RuntimeError(f"stdout: {len(out)} bytes, not {transfer_mib << 20}")
        rates.append(transfer_mib / seconds)
    return {"exec_sync_ms": summary(sync), "exec_stream_ms": summary(streaming), "stdout_mib_s": summary(rates)}


def in_namespace(path: Path) -> Callable[[Awaitable[T]], T]:
    """Run a coroutine to completion in a thread inside the namespace at ``path``."""
    def run(coroutine: Awaitable[T]) -> T:
        return netns.run_in(path, lambda: asyncio.run(coroutine))  # type: ignore[arg-type]
    return run


def measure_qmprt(execs: int, transfer_mib: int) -> dict[str, Any]:
    bin_dir = plugin_dir()
    with contextlib.ExitStack() as cleanup:
        node = cleanup.enter_context(private_node())
        qmprt = cleanup.enter_context(qmprt_server(
            cni_settings=f'bin_dirs = ["{bin_dir}"]\nplugin_timeout_seconds = 30',
            exec_prefix=["nsenter", f"--net={node.path}", "--"],
        ))
        node.configure(qmprt.server.cni_dir, True)
        template = PodTemplate(command=GUEST_COMMAND, sandbox_annotations=(("qmprt.io/network-wiring", "tc-redirect"),))
        started = qmprt.client.start_pod(1, qmprt.work / "logs" / "streams", qmprt.guest.ready_marker, template=template)
        cleanup.callback(qmprt.client.remove_pod, started.pod_id)
        run = in_namespace(node.path)
        report = measure_runtime(qmprt.client, started.container_id, execs, transfer_mib, run)
        address = qmprt.client.runtime.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=started.pod_id), timeout=10).status.network.ip
        report["direct_tcp_mib_s"] = summary([send_to_guest(node, address, transfer_mib) for _ in range(TRANSFERS)])
        forwards = []
        for _ in range(TRANSFERS):
            url = str(qmprt.client.runtime.PortForward(
                cri.PortForwardRequest(pod_sandbox_id=started.pod_id, port=[GUEST_PORT]), timeout=30).url)
            forwards.append(run(spdy_forward(url, transfer_mib)))
            time.sleep(0.5)  # the guest's loop starts its next nc
        report["port_forward_mib_s"] = summary(forwards)
        return report


def measure_containerd(execs: int, transfer_mib: int) -> dict[str, Any]:
    containerd = Containerd(Path(tempfile.mkdtemp(prefix="qmprt-bench-ctrd-")))
    try:
        containerd.start()
        assert containerd.client is not None
        started = containerd.client.start_pod(1, containerd.directory / "logs" / "streams", READY_LINE, containerd.template)
        report = measure_runtime(containerd.client, started.container_id, execs, transfer_mib, asyncio.run)
        report["version"] = containerd.version
        return report
    finally:
        containerd.stop()


def measure(execs: int, transfer_mib: int) -> dict[str, Any]:
    report: dict[str, Any] = {"execs": execs, "transfer_mib": transfer_mib, "transfers": TRANSFERS, "errors": {}}
    for name, function in (("qmprt", measure_qmprt), ("containerd", measure_containerd)):
        print(f"bench: streams, {name}", flush=True)
        try:
            report[name] = function(execs, transfer_mib)
        except Exception as err:  # noqa: BLE001 - reported instead of the figures
            report["errors"][name] = error_text(err)
    return report


def table_lines(section: dict[str, Any]) -> list[str]:
    def cell(runtime: str, key: str, field: str) -> str:
        value = section.get(runtime, {}).get(key)
        return f"{value[field]:.1f}" if value else section["errors"].get(runtime, "-")[:40]

    rows = [
        ["ExecSync `true`, ms median", cell("qmprt", "exec_sync_ms", "median"), cell("containerd", "exec_sync_ms", "median")],
        ["ExecSync `true`, ms p99", cell("qmprt", "exec_sync_ms", "p99"), cell("containerd", "exec_sync_ms", "p99")],
        ["streaming Exec `true`, ms median", cell("qmprt", "exec_stream_ms", "median"), cell("containerd", "exec_stream_ms", "median")],
        ["streaming Exec `true`, ms p99", cell("qmprt", "exec_stream_ms", "p99"), cell("containerd", "exec_stream_ms", "p99")],
        [f"Exec stdout, {section['transfer_mib']} MiB: MiB/s", cell("qmprt", "stdout_mib_s", "median"),
         cell("containerd", "stdout_mib_s", "median")],
        [f"PortForward, {section['transfer_mib']} MiB: MiB/s", cell("qmprt", "port_forward_mib_s", "median"), "-"],
        [f"node -> guest TCP, {section['transfer_mib']} MiB: MiB/s", cell("qmprt", "direct_tcp_mib_s", "median"), "-"],
    ]
    lines = [f"Streams ({section['execs']} execs each; throughput: median of {section['transfers']})",
             format_table(["", "qmprt (VM pod)", "containerd+runc"], rows)]
    lines += [f"  {name}: {text}" for name, text in section["errors"].items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execs", type=int, default=50)
    parser.add_argument("--transfer-mib", type=int, default=64)
    parser.add_argument("--json")
    args = parser.parse_args()
    report = {**environment(), "streams": measure(args.execs, args.transfer_mib), "load_average_end": list(os.getloadavg())}
    print(headline(report))
    print("\n".join(table_lines(report["streams"])))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
