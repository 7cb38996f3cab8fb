"""Benchmark of the image store: pull throughput from a loopback HTTP server, beside curl, and overlays.

1. Pull: a qcow2 of --size-mib MiB full of random data (so neither the transfer nor qemu-img meets holes)
   served by Python's http.server on 127.0.0.1 (with sendfile, so the server is not what is measured).
   ``ImageStore.pull`` end to end: download with sha256 on the way, fsync, ``qemu-img info`` + ``check``,
   publish; each of --runs runs into an empty store, median reported. Beside it, ``curl -o`` of the same
   URL from the same server (download only: no hashing, no fsync, no verification), and the verification
   alone (``inspect_image`` on the file), which explain the difference.
2. Overlays: the median of 20 ``create_overlay`` calls on the pulled image, as is and grown by 1 GiB
   (with the image's virtual size given, as the pod layer does: one ``qemu-img create`` each).

Output: a table, and JSON with --json FILE. Everything is made in one temporary directory, removed at
the end. Figures are noisy on a shared machine: the table prints the load average at the start.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from common import summary

from qmprt.image import FetchSettings, ImageConfig, ImageStore, TranslationRule, create_overlay, inspect_image

MB = 1_000_000
MiB = 1 << 20
GiB = 1 << 30
NAME = "bench.qmprt.local/random:1"
OVERLAYS = 20


class SendfileHandler(SimpleHTTPRequestHandler):
    """http.server's file handler, sending the body with sendfile(2) and without a log line per request."""

    def copyfile(self, source: Any, outputfile: Any) -> None:
        self.wfile.flush()
        self.connection.sendfile(source)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def make_image(directory: Path, size_mib: int) -> Path:
    """A fully allocated qcow2 of random data: a raw file of random bytes, converted by qemu-img."""
    raw = directory / "random.raw"
    with open(raw, "wb") as handle:
        for _ in range(size_mib // 4):
            handle.write(os.urandom(4 * MiB))
    image = directory / "random.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
    raw.unlink()
    return image


def start_server(directory: Path) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SendfileHandler, directory=str(directory)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def timed(action: Any) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


async def pull_once(work: Path, index: int, url: str) -> tuple[float, ImageStore]:
    direct = FetchSettings(proxy="")
    config = ImageConfig(rules=(TranslationRule(url=url, name=NAME.rsplit(":", 1)[0], transport=direct),), default_transport=direct)
    store = ImageStore(work / f"store-{index}", config)
    started = time.perf_counter()
    await store.pull(NAME)
    return time.perf_counter() - started, store


def curl_once(url: str, dest: Path) -> float:
    seconds = timed(lambda: subprocess.run(["curl", "-sSf", "--noproxy", "*", "-o", str(dest), url], check=True))
    dest.unlink()
    return seconds


def overlay_ms(base: str, work: Path, grow_to: int | None, virtual_size: int) -> list[float]:
    samples = []
    for index in range(OVERLAYS):
        overlay = work / f"overlay-{index}.qcow2"
        seconds = timed(lambda: create_overlay(base, "qcow2", overlay, grow_to, base_virtual_size_bytes=virtual_size))
        overlay.unlink()
        samples.append(seconds * 1000)
    return samples


async def run(size_mib: int, runs: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="qmprt-bench-images-", dir="/var/tmp"))
    server: ThreadingHTTPServer | None = None
    stores: list[ImageStore] = []
    try:
        image = make_image(work, size_mib)
        size = image.stat().st_size
        server = start_server(work)
        url = f"http://127.0.0.1:{server.server_address[1]}/{image.name}"
        pulls = []
        for index in range(runs):
            seconds, store = await pull_once(work, index, url)
            pulls.append(seconds)
            stores.append(store)
            if index < runs - 1:
                store.close()
                shutil.rmtree(store.root)  # the next run starts from an empty store
        curl = [curl_once(url, work / "curl.out") for _ in range(runs)] if shutil.which("curl") else None
        record = stores[-1].resolve(NAME)
        assert record is not None
        verify = [timed(lambda: inspect_image(record.path, 256 * GiB)) for _ in range(runs)]
        plain = overlay_ms(record.path, work, None, record.virtual_size)
        grown = overlay_ms(record.path, work, record.virtual_size + GiB, record.virtual_size)
    finally:
        for store in stores:
            store.close()
        if server is not None:
            server.shutdown()
            server.server_close()
        shutil.rmtree(work, ignore_errors=True)
    qemu_img = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "machine": f"{os.cpu_count()} CPUs, load average {load:.2f} at the start",
        "qemu_img": qemu_img,
        "image_bytes": size,
        "runs": runs,
        "pull_s": {"median": statistics.median(pulls), "samples": pulls},
        "pull_mb_s": size / MB / statistics.median(pulls),
        "curl_s": None if curl is None else {"median": statistics.median(curl), "samples": curl},
        "curl_mb_s": None if curl is None else size / MB / statistics.median(curl),
        "verify_s": {"median": statistics.median(verify), "samples": verify},
        "overlay_ms": {"plain": summary(plain), "grown_1gib": summary(grown)},
    }


def table(report: dict[str, Any]) -> str:
    size_mb = report["image_bytes"] / MB
    pull, verify, overlays = report["pull_s"], report["verify_s"], report["overlay_ms"]
    lines = [
        f"Image store benchmark: {report['machine']}; {report['qemu_img']}",
        f"pull of a {size_mb:.0f} MB qcow2 of random data from http.server on 127.0.0.1, median of {report['runs']}:",
        f"  {'':<22}{'seconds':>9}{'MB/s':>9}",
        f"  {'ImageStore.pull':<22}{pull['median']:>9.3f}{report['pull_mb_s']:>9.0f}"
        "   download + sha256 + fsync + qemu-img info/check + publish",
    ]
    if report["curl_s"] is None:
        lines.append(f"  {'curl -o':<22}{'-':>9}{'-':>9}   curl is not installed: skipped")
    else:
        lines.append(
            f"  {'curl -o':<22}{report['curl_s']['median']:>9.3f}{report['curl_mb_s']:>9.0f}   download only (no fsync)"
        )
    lines += [
        f"  {'verification alone':<22}{verify['median']:>9.3f}{'':>9}   qemu-img info + check of the pulled file",
        f"overlay creation on the pulled image, {OVERLAYS} calls:",
        f"  {'':<22}{'median ms':>10}{'p95 ms':>9}",
        f"  {'create_overlay':<22}{overlays['plain']['median']:>10.1f}{overlays['plain']['p95']:>9.1f}",
        f"  {'grown by 1 GiB':<22}{overlays['grown_1gib']['median']:>10.1f}{overlays['grown_1gib']['p95']:>9.1f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256, help="size of the served image (default 256)")
    parser.add_argument("--runs", type=int, default=3, help="pulls (and curls) to take the median of (default 3)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if shutil.which("qemu-img") is None:
        sys.exit("images.py needs qemu-img")
    report = asyncio.run(run(args.size_mib, args.runs))
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
