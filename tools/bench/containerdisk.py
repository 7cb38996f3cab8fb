"""Benchmark of containerDisk pulls from a real registry on loopback, and a pod booted from a cold store.

The registry is Debian's docker-registry with TLS and htpasswd auth, as the tests run it
(tests/integration/registry.py); images are OCI layouts pushed with skopeo.

1. Pull: a containerDisk holding a qcow2 of --size-mib MiB of random data (nothing compresses, no holes),
   once with an uncompressed tar layer and once gzipped (level 1, as the containerdisks project's
   images are gzip). ``ImageStore.pull`` end to end, into an empty store each of --runs times: token-less
   Basic auth, manifest, blob download with its digest checked, the one /disk/ file copied out of the
   tar (sha256 on the way), fsync, ``qemu-img info`` + ``check``, publish. Beside it ``skopeo copy
   docker://… dir:…`` of the same image (download and digest check only: no unpacking, no disk
   verification), which is what a container runtime's pull costs before it unpacks.
2. Cold pod: through a private ``qmprt serve`` (TCG when KVM is unusable), the tiny guest as a
   containerDisk: PullImage into a store without it, then RunPodSandbox + CreateContainer +
   StartContainer until the guest's ready marker is in the CRI log; then the same pod start again with
   the image stored (warm). Each of --pods runs removes the image first.

Output: a table, and JSON with --json FILE. Everything lives in one temporary directory, removed at the
end; the registry and the server are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import environment, format_table, headline, summaries
from cri_api.v1 import api_pb2 as cri
from cri import Client, PodTemplate, qmprt_server
from images import MB, make_image

from qmprt.image import ImageConfig, ImageStore
from qmprt.image.fetch import PullAuth
from qmprt.image.fetch_settings import FetchSettings
from qmprt.image.registryconfig import RegistryHost
from tests.integration.guests import tiny_guest
from tests.integration.registry import PASSWORD, USER, Registry, missing_tools, oci_layout, tar_layer

AUTH = PullAuth(username=USER, password=PASSWORD)


def push(registry: Registry, work: Path, reference: str, layer: bytes) -> None:
    tag = reference.rpartition(":")[2]
    layout = work / f"layout-{reference.replace('/', '-').replace(':', '-')}"
    oci_layout(layout, tag, [layer])
    registry.push_layout(layout, tag, reference)
    shutil.rmtree(layout)


async def store_pull(registry: Registry, root: Path, name: str) -> float:
    trusting = RegistryHost(FetchSettings(ca_file=str(registry.ca), proxy="", timeout_s=30))
    store = ImageStore(root, ImageConfig(registries={registry.host: trusting}, max_virtual_size_bytes=64 << 30))
    try:
        started = time.perf_counter()
        await store.pull(name, AUTH)
        return time.perf_counter() - started
    finally:
        store.close()
        shutil.rmtree(root)


def skopeo_copy(registry: Registry, dest: Path, name: str) -> float:
    command = ["skopeo", "copy", "--quiet", "--src-cert-dir", str(registry.cert_dir), "--src-creds", f"{USER}:{PASSWORD}",
               f"docker://{name}", f"dir:{dest}"]
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    seconds = time.perf_counter() - started
    shutil.rmtree(dest)
    return seconds


def pulls(registry: Registry, work: Path, size_mib: int, runs: int) -> dict[str, Any]:
    disk = make_image(work, size_mib)
    data = disk.read_bytes()
    disk.unlink()
    plain = tar_layer({"disk/random.qcow2": data})
    layers = {"tar": plain, "tar+gzip": gzip.compress(plain, compresslevel=1)}
    del data, plain
    figures: dict[str, Any] = {"disk_bytes": len(layers["tar"])}
    for kind, layer in layers.items():
        name = f"{registry.host}/bench/random-{kind.replace('+', '-')}:1"
        push(registry, work, name.split("/", 1)[1], layer)
        ours = [asyncio.run(store_pull(registry, work / f"store-{i}", name)) for i in range(runs)]
        theirs = [skopeo_copy(registry, work / f"skopeo-{i}", name) for i in range(runs)]
        figures[kind] = {
            "layer_bytes": len(layer),
            "qmprt_s": ours, "skopeo_s": theirs,
            "qmprt_mb_s": figures["disk_bytes"] / MB / statistics.median(ours),
            "skopeo_mb_s": figures["disk_bytes"] / MB / statistics.median(theirs),
        }
    return figures


def cold_pods(registry: Registry, work: Path, pods: int) -> dict[str, Any]:
    """Pull + pod start from a store without the image, then a warm start, ``pods`` times."""
    guest = tiny_guest()
    name = f"{registry.host}/vm/tiny:1"
    push(registry, work, "vm/tiny:1", gzip.compress(tar_layer({"disk/tiny.qcow2": guest.disk.read_bytes()}), compresslevel=1))
    trust = f'[image.registry."{registry.host}"]\nca_file = "{registry.ca}"\n'
    template = PodTemplate(image=name)
    cold, warm = [], []
    with qmprt_server(extra_config=trust) as qmprt:
        client: Client = qmprt.client
        auth = cri.AuthConfig(username=USER, password=PASSWORD)
        for index in range(pods):
            spec = cri.ImageSpec(image=name)
            client.images.RemoveImage(cri.RemoveImageRequest(image=spec), timeout=60)
            started = time.monotonic()
            client.images.PullImage(cri.PullImageRequest(image=spec, auth=auth), timeout=300)
            pulled_ms = (time.monotonic() - started) * 1000
            pod = client.start_pod(2 * index, qmprt.work / "logs" / f"cold-{index}", guest.ready_marker, template)
            client.remove_pod(pod.pod_id)
            cold.append({"pull_ms": pulled_ms, **pod.timings, "cold_total_ms": pulled_ms + pod.timings["total_ms"]})
            pod = client.start_pod(2 * index + 1, qmprt.work / "logs" / f"warm-{index}", guest.ready_marker, template)
            client.remove_pod(pod.pod_id)
            warm.append(pod.timings)
    return {"image_bytes": guest.disk.stat().st_size, "pods": pods, "cold": summaries(cold), "warm": summaries(warm)}


def run(size_mib: int, runs: int, pods: int) -> dict[str, Any]:
    report: dict[str, Any] = environment()
    work = Path(tempfile.mkdtemp(prefix="qmprt-bench-cd-", dir="/var/tmp"))
    registry = Registry(work / "registry")
    try:
        registry.start()
        report["pull"] = pulls(registry, work, size_mib, runs)
        report["pull"]["runs"] = runs
        report["pod"] = cold_pods(registry, work, pods)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    report["skopeo"] = subprocess.run(["skopeo", "--version"], capture_output=True, text=True).stdout.strip()
    return report


def table(report: dict[str, Any]) -> str:
    pull, pod = report["pull"], report["pod"]
    rows = []
    for kind in ("tar", "tar+gzip"):
        figures = pull[kind]
        for who, label in (("qmprt", "ImageStore.pull"), ("skopeo", "skopeo copy to dir:")):
            rows.append((f"{label} ({kind})", f"{statistics.median(figures[who + '_s']):.2f}", figures[who + "_mb_s"]))
    phases = [("pull (cold store)", pod["cold"]["pull_ms"]), ("runp+create+start+boot", pod["cold"]["total_ms"]),
              ("cold: pull + booted pod", pod["cold"]["cold_total_ms"]), ("warm: booted pod", pod["warm"]["total_ms"])]
    return "\n".join([
        f"containerDisk benchmark: {headline(report)}; {report['skopeo']}",
        f"pull of a {pull['disk_bytes'] / MB:.0f} MB disk from docker-registry on 127.0.0.1 (TLS, Basic auth), "
        f"median of {pull['runs']}; MB/s of the disk:",
        format_table(("", "seconds", "MB/s"), rows),
        f"tiny guest ({pod['image_bytes'] / MB:.0f} MB qcow2, gzip layer) through qmprt serve, {pod['pods']} runs:",
        format_table(("phase", "median ms", "p95 ms"), [(label, s["median"], s["p95"]) for label, s in phases]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256, help="size of the pulled disk (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="pulls of each kind to take the median of (default 3)")
    parser.add_argument("--pods", type=int, default=5, help="cold and warm pod starts (default 5)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if missing := missing_tools():
        sys.exit(f"containerdisk.py needs {', '.join(missing)} (tools/install.sh installs them)")
    report = run(args.size_mib, args.runs, args.pods)
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
