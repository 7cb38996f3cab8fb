"""What ``qmprt proxy`` adds: per RPC, and to a pod start, for both runtimes behind it.

A private ``qmprt serve`` (cri.py's, the tiny guest as its image) and a private containerd + runc
(containerd.py's, a busybox pod), and ``qmprt proxy`` in front of both (containerd the default, qmprt
for the handler ``qmprt``), as on a node that runs both. With one pod of each running:

1. Per RPC, --calls times each, direct to the runtime's socket and through the proxy's, alternating:
   Version, ListPodSandbox, PodSandboxStatus and ContainerStatus of that pod. p50/p99 in ms, and what
   the proxy adds (the difference of the two p50s and of the two p99s).
2. Pod start: runp + create + start until the ready line is in the CRI log (the VM's ready marker,
   the busybox container's first line), --pods times each, direct and through the proxy alternating,
   median.

Standalone: ``.venv/bin/python tools/bench/proxy.py [--calls 500] [--pods 3]`` (root);
``tools/bench/run`` runs it (``--skip proxy`` leaves it out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import environment, error_text, format_table, headline, percentile
from containerd import READY_LINE, Containerd
from cri import Client, PodTemplate, QmprtUnderTest, qmprt_server
from cri_api.v1 import api_pb2 as cri

from tests.integration.serverproc import ProxyProcess

VM_VIA_PROXY = PodTemplate(handler="qmprt")


def rpc_calls(client: Client, pod_id: str, container_id: str) -> dict[str, Callable[[], object]]:
    runtime = client.runtime
    return {
        "Version": lambda: runtime.Version(cri.VersionRequest(), timeout=10),
        "ListPodSandbox": lambda: runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10),
        "PodSandboxStatus": lambda: runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10),
        "ContainerStatus": lambda: runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=container_id), timeout=10),
    }


def time_rpcs(direct: Client, proxied: Client, pod_id: str, container_id: str, calls: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    direct_calls, proxy_calls = rpc_calls(direct, pod_id, container_id), rpc_calls(proxied, pod_id, container_id)
    for name in direct_calls:
        samples: dict[str, list[float]] = {"direct": [], "proxy": []}
        for _ in range(calls):
            for way, call in (("direct", direct_calls[name]), ("proxy", proxy_calls[name])):
                t0 = time.perf_counter()
                call()
                samples[way].append((time.perf_counter() - t0) * 1000)
        figures = {way: {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99)} for way, values in samples.items()}
        figures["added"] = {q: figures["proxy"][q] - figures["direct"][q] for q in ("p50", "p99")}
        results[name] = figures
    return results


def time_starts(
    direct: Client, proxied: Client, runs: int, log_root: Path, marker: str, templates: tuple[PodTemplate, PodTemplate]
) -> dict[str, Any]:
    totals: dict[str, list[float]] = {"direct": [], "proxy": []}
    for index in range(runs):
        for way, client, template in (("direct", direct, templates[0]), ("proxy", proxied, templates[1])):
            started = client.start_pod(900 + index * 2 + (way == "proxy"), log_root / f"{way}-{index}", marker, template)
            client.remove_pod(started.pod_id)
            totals[way].append(started.timings["total_ms"])
    medians = {way: statistics.median(values) for way, values in totals.items()}
    return {**medians, "added": medians["proxy"] - medians["direct"], "runs": runs}


def measure(calls: int, runs: int) -> dict[str, Any]:
    report: dict[str, Any] = {"calls": calls, "pods": runs, "errors": {}}
    with contextlib.ExitStack() as stack:
        qmprt: QmprtUnderTest = stack.enter_context(qmprt_server())
        containerd = Containerd(Path(tempfile.mkdtemp(prefix="qmprt-bench-pctrd-")))
        stack.callback(containerd.stop)
        containerd.start()
        assert containerd.client is not None
        proxy = ProxyProcess(qmprt.work, qmprt.server.socket.parent, {
            "containerd": (containerd.socket, ["runc"]), "qmprt": (qmprt.server.socket, ["qmprt"]),
        })
        proxy.start()
        stack.callback(proxy.stop)
        proxied = Client(proxy.address)
        stack.callback(proxied.close)
        for name, direct, templates, marker in (
            ("qmprt", qmprt.client, (VM_VIA_PROXY, VM_VIA_PROXY), qmprt.guest.ready_marker),
            ("containerd", containerd.client, (containerd.template, containerd.template), READY_LINE),
        ):
            print(f"bench: proxy, {name}", flush=True)
            try:
                kept = direct.start_pod(800, qmprt.work / "logs" / f"kept-{name}", marker, templates[0])
                report[name] = {"rpc_ms": time_rpcs(direct, proxied, kept.pod_id, kept.container_id, calls)}
                direct.remove_pod(kept.pod_id)
                report[name]["start_ms"] = time_starts(direct, proxied, runs, qmprt.work / "logs" / name, marker, templates)
            except Exception as err:  # noqa: BLE001 - reported instead of the figures
                report["errors"][name] = error_text(err)
        report["containerd_version"] = containerd.version
    return report


def table_lines(section: dict[str, Any]) -> list[str]:
    rows = []
    for runtime in ("qmprt", "containerd"):
        figures = section.get(runtime)
        if not figures:
            rows.append([runtime, section["errors"].get(runtime, "-")[:60], "", "", "", "", ""])
            continue
        for name, rpc in figures["rpc_ms"].items():
            rows.append([runtime, name, f"{rpc['direct']['p50']:.2f}", f"{rpc['proxy']['p50']:.2f}", f"{rpc['added']['p50']:+.2f}",
                         f"{rpc['direct']['p99']:.2f} / {rpc['proxy']['p99']:.2f}", f"{rpc['added']['p99']:+.2f}"])
        start = figures["start_ms"]
        rows.append([runtime, "pod start (to ready), median", f"{start['direct']:.0f}", f"{start['proxy']:.0f}", f"{start['added']:+.0f}", "", ""])
    return [
        f"qmprt proxy: {section['calls']} calls per RPC, {section['pods']} pod starts per way (ms)",
        format_table(["runtime", "call", "direct p50", "proxy p50", "added p50", "p99 direct / proxy", "added p99"], rows),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--pods", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    report = {**environment(), "proxy": measure(args.calls, args.pods), "load_average_end": list(os.getloadavg())}
    print(headline(report))
    print("\n".join(table_lines(report["proxy"])))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
