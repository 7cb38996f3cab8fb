"""qmprt's comparative benchmark (``tools/bench/run``): one run, one machine, one table + a JSON file.

Start latency, --pods runs of each path, interleaved round by round so that load on a shared machine
falls on all of them alike:

- qmprt: a VM pod through the CRI socket (runp + create + start until the tiny guest's ready marker is
  in the container's CRI log), from its QCOW2 disk on q35 (the pod layer always boots that way), with
  the split: the three RPCs, QEMU spawn (ContainerStatus.started_at) to the first byte of the
  console file, first byte to the marker, console file to CRI log;
- qmprt-direct, qmprt-microvm: the same pod booting the kernel attached to its image
  (``qmprt.io/boot: direct`` on q35, ``microvm``), through the CRI socket;
- qmprt-template: the same pod as a clone of a template (``qmprt.io/boot: template``; the template is
  built once, from a first pod, before the rounds): restore + identity + the rest of the guest's boot;
- engine: direct kernel boot on q35 and microvm through ``VM.start`` alone (no CRI calls); its prepare
  step (overlay + seed ISO) is qmprt's per-pod disk work;
- floor: ``qemu-system-x86_64`` with the pod VM's own argv, from ``floor.sh`` (see floor.py);
- libvirt: a private libvirtd, ``virsh define`` + ``start`` of an equivalent domain (see libvirt.py);
- containerd: a private containerd, a busybox pod through its CRI socket to its first log line
  (see containerd.py).

Then parallel start and density: --density counts of VM pods started at once through the CRI socket
(a thread each); time until all are ready; with them running, qmprt serve's RSS, each QEMU's RSS minus
the guest RAM it touched, and the p50/p99 of kubelet's relist (ListPodSandbox + ListContainers + one
ContainerStatus per container) over --relists rounds.

Then streams (see streams.py): ExecSync and streaming Exec round trips, Exec stdout MiB/s and
PortForward MiB/s, beside containerd+runc and direct TCP.

Last, qmprt proxy (see proxy.py): what it adds to each RPC (p50/p99) and to a pod start, for a qmprt
VM pod and a containerd busybox pod behind it.

Then the pod network (see network.py): start cost without network and in each wiring mode on a private
node namespace, when the guest answers a ping, and node -> guest TCP throughput.

A path that cannot run here is reported with its exact error instead of a number. Every service the
benchmark starts listens on a unix socket in a temp dir (containerd's streaming server on 127.0.0.1)
and is stopped by PID; processes, mounts, network namespaces, cgroups and directories are removed
even on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import ROOT, OutputWatch, environment, error_text, format_table, headline, kill_processes_mentioning, summaries, summary
from containerd import Containerd
from cri import (
    DIRECT_POD,
    MICROVM_POD,
    TEMPLATE_POD,
    VM_POD,
    PodTemplate,
    QmprtUnderTest,
    StartedPod,
    qmprt_server,
    relist_summary,
    remove_many,
    start_many,
)
from engine import guest_ram_rss, one_boot, remove_cgroup_root
from floor import Floor
from libvirt import Libvirt
from network import measure as measure_network
from network import table_lines as network_table_lines
from streams import measure as measure_streams
from streams import table_lines as streams_table_lines
from proxy import measure as measure_proxy
from proxy import table_lines as proxy_table_lines

from qmprt import cgroups
from qmprt.cloudinit import SeedSpec, write_nocloud_iso
from tests.integration.guests import TinyGuest

ENGINE_MODES = ("q35-direct", "microvm-direct")


class Paths:
    """The start-latency paths: each a ``one(index) -> figures`` callable, its samples, or its error."""

    def __init__(self) -> None:
        self.runners: dict[str, Callable[[int], dict[str, float]]] = {}
        self.samples: dict[str, list[dict[str, float]]] = {}
        self.errors: dict[str, str] = {}

    def add(self, name: str, runner: Callable[[int], dict[str, float]]) -> None:
        self.runners[name] = runner
        self.samples[name] = []

    def fail(self, name: str, err: BaseException) -> None:
        self.errors[name] = error_text(err)
        self.runners.pop(name, None)
        print(f"bench: {name}: {self.errors[name]}", flush=True)

    def round(self, index: int) -> None:
        for name, runner in list(self.runners.items()):
            try:
                self.samples[name].append(runner(index))
            except Exception as err:  # noqa: BLE001 - reported as that path's result
                self.fail(name, err)


def warm_template(qmprt: QmprtUnderTest, timeout: float = 300) -> float:
    """The first template pod boots cold and has its template built in the background: seconds from
    its start until the template is ready (not counted as a start)."""
    began = time.monotonic()
    qmprt_pod(qmprt, 4999, template=TEMPLATE_POD)
    while not list((qmprt.server.state_dir / "templates").glob("*/ready")):
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"no template after {timeout:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - began


def qmprt_pod(
    qmprt: QmprtUnderTest, index: int, keep: Callable[[StartedPod], None] | None = None, template: PodTemplate = VM_POD
) -> dict[str, float]:
    """One VM pod through the CRI socket, with the console-file split; removed before returning."""
    watches: list[OutputWatch] = []

    def watch_console(pod_id: str, container_id: str) -> None:
        watches.append(OutputWatch(qmprt.container_dir(pod_id, container_id) / "console.raw", qmprt.guest.ready_marker).start())

    try:
        started = qmprt.client.start_pod(
            index, qmprt.work / "logs" / f"seq-{index}", qmprt.guest.ready_marker, template=template, on_created=watch_console
        )
        try:
            console = watches[0]
            console.wait(10)
            spawned_ns = qmprt.client.started_at_ns(started.container_id)
            if keep is not None:
                keep(started)
        finally:
            qmprt.client.remove_pod(started.pod_id)
    finally:
        for watch in watches:
            watch.stop()
    assert console.first_output_ns is not None and console.marker_seen_ns is not None and console.marker_seen is not None
    return {
        **started.timings,
        "spawn_to_output_ms": (console.first_output_ns - spawned_ns) / 1e6,
        "output_to_ready_ms": (console.marker_seen_ns - console.first_output_ns) / 1e6,
        "console_to_log_ms": (started.ready_at - console.marker_seen) * 1000,
    }


def engine_boot(
    loop: asyncio.AbstractEventLoop, mode: str, work: Path, driver: cgroups.CgroupDriver, accel_name: str, guest: TinyGuest, index: int
) -> dict[str, float]:
    return loop.run_until_complete(one_boot(mode, index, work / "engine", work / "run", driver, accel_name, guest, rss_settle_s=None))


def density(qmprt: QmprtUnderTest, count: int, relists: int, first_index: int, guest_mib: int) -> dict[str, Any]:
    seconds, pods = start_many(qmprt.client, count, first_index, qmprt.work / "logs" / f"density-{count}", qmprt.guest.ready_marker)
    try:
        time.sleep(1.0)  # let RSS settle after the ready marker, as engine.py does
        overheads, rss = [], []
        for process in qmprt.qemu_processes():
            process_rss = process.memory_info().rss
            rss.append(process_rss / (1 << 20))
            overheads.append((process_rss - guest_ram_rss(process.pid, guest_mib << 20)) / (1 << 20))
        relist = relist_summary(qmprt.client, relists)
        server_rss = qmprt.server_rss_bytes() / (1 << 20)
    finally:
        remove_many(qmprt.client, pods)
    return {
        "pods": count,
        "all_ready_s": seconds,
        "pod_total_ms": summary([pod.timings["total_ms"] for pod in pods], samples=False),
        "serve_rss_mib": server_rss,
        "qemu_rss_mib": summary(rss),
        "qemu_overhead_mib": summary(overheads),
        "relist_ms": relist,
    }


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Let the engine's leftover tasks (exit watchers of stopped VMs) finish, then close the loop."""
    pending = asyncio.all_tasks(loop)
    if pending:
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.wait(pending, timeout=5))
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    began = time.monotonic()
    env = environment()
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "environment": env,
        "sizes": {"pods": args.pods, "density": args.density, "relists": args.relists},
    }
    paths = Paths()
    work = Path(tempfile.mkdtemp(prefix="qmprt-bench-run-"))
    driver = cgroups.detect()
    loop = asyncio.new_event_loop()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, work, ignore_errors=True)
        cleanup.callback(close_loop, loop)
        cleanup.callback(remove_cgroup_root, driver)
        cleanup.callback(kill_processes_mentioning, str(work))  # engine and floor QEMUs left by an interrupt
        qmprt = cleanup.enter_context(qmprt_server())
        guest = qmprt.guest
        print(f"bench: {headline(env)}", flush=True)

        # The first pod gives the VM's argv (for the floor) and its size (for libvirt); not counted.
        first: dict[str, Any] = {}

        def keep_vm(started: StartedPod) -> None:
            document = json.loads((qmprt.container_dir(started.pod_id, started.container_id) / "vm.json").read_text())
            first.update(argv=document["argv"], config=document["config"])

        report["qmprt_first_pod_ms"] = qmprt_pod(qmprt, 0, keep=keep_vm)["total_ms"]
        memory_mib, cpus = int(first["config"]["memory_mib"]), int(first["config"]["cpus"])
        report["vm"] = {"machine": first["config"]["machine"], "memory_mib": memory_mib, "cpus": cpus}
        seed = work / "seed.iso"
        write_nocloud_iso(SeedSpec(instance_id="bench-baseline", hostname="bench-baseline"), seed)

        paths.add("qmprt", lambda index: qmprt_pod(qmprt, index + 1))
        paths.add("qmprt-direct", lambda index: qmprt_pod(qmprt, 2000 + index, template=DIRECT_POD))
        paths.add("qmprt-microvm", lambda index: qmprt_pod(qmprt, 3000 + index, template=MICROVM_POD))
        try:
            report["template_build_s"] = warm_template(qmprt)
            paths.add("qmprt-template", lambda index: qmprt_pod(qmprt, 4000 + index, template=TEMPLATE_POD))
        except Exception as err:  # noqa: BLE001
            paths.fail("qmprt-template", err)
        for mode in ENGINE_MODES:
            paths.add(mode, functools.partial(engine_boot, loop, mode, work, driver, env["accelerator"], guest))
        try:
            floor = Floor(work / "floor", first["argv"], guest.disk, seed, guest.ready_marker)
            paths.add("floor", lambda index: floor.one())
        except Exception as err:  # noqa: BLE001
            paths.fail("floor", err)
        if "libvirt" not in args.skip:
            libvirt = Libvirt(
                Path(tempfile.mkdtemp(prefix="qmprt-bench-libvirt-")), guest.disk, seed, guest.ready_marker,
                memory_mib, cpus, "kvm" if env["accelerator"] == "kvm" else "qemu",
            )
            cleanup.callback(libvirt.stop)
            try:
                libvirt.start()
                report["libvirt_cold_ms"] = libvirt.cold_ms
                report["libvirt_version"] = libvirt.version()
                paths.add("libvirt", libvirt.one)
            except Exception as err:  # noqa: BLE001
                paths.fail("libvirt", err)
        if "containerd" not in args.skip:
            containerd = Containerd(Path(tempfile.mkdtemp(prefix="qmprt-bench-containerd-")))
            cleanup.callback(containerd.stop)
            report["containerd_version"] = containerd.version
            report["containerd_snapshotter"] = containerd.snapshotter
            try:
                containerd.start()
                paths.add("containerd", containerd.one)
            except Exception as err:  # noqa: BLE001
                paths.fail("containerd", err)
                report["containerd_log"] = containerd.daemon.tail()
        if "libvirt" in args.skip:
            paths.errors["libvirt"] = "skipped (--skip)"
        if "containerd" in args.skip:
            paths.errors["containerd"] = "skipped (--skip)"

        for index in range(args.pods):
            print(f"bench: round {index + 1}/{args.pods}", flush=True)
            paths.round(index)
        # Idle daemons stay out of the density figures.
        if "libvirt" not in args.skip:
            libvirt.stop()
        if "containerd" not in args.skip:
            containerd.stop()

        report["start"] = {name: summaries(rows) for name, rows in paths.samples.items() if rows}
        report["errors"] = paths.errors
        report["density"] = []
        for count in args.density:
            print(f"bench: {count} pods at once", flush=True)
            try:
                report["density"].append(density(qmprt, count, args.relists, 10_000 + count * 100, memory_mib))
            except Exception as err:  # noqa: BLE001
                report["errors"][f"density {count}"] = error_text(err)
                print(f"bench: density {count}: {error_text(err)}", flush=True)
                with contextlib.suppress(Exception):
                    qmprt.client.remove_all()
    if "network" in args.skip:
        report["errors"]["network"] = "skipped (--skip)"
    else:
        print("bench: pod network", flush=True)
        try:
            report["network"] = measure_network(args.pods, args.transfer_mib)
        except Exception as err:  # noqa: BLE001
            report["errors"]["network"] = error_text(err)
            print(f"bench: network: {error_text(err)}", flush=True)
    if "streams" in args.skip:
        report["errors"]["streams"] = "skipped (--skip)"
    else:
        print("bench: streams", flush=True)
        try:
            report["streams"] = measure_streams(args.execs, args.transfer_mib)
        except Exception as err:  # noqa: BLE001
            report["errors"]["streams"] = error_text(err)
            print(f"bench: streams: {error_text(err)}", flush=True)
    if "proxy" in args.skip:
        report["errors"]["proxy"] = "skipped (--skip)"
    else:
        print("bench: proxy", flush=True)
        try:
            report["proxy"] = measure_proxy(args.proxy_calls, min(args.pods, 5))
        except Exception as err:  # noqa: BLE001
            report["errors"]["proxy"] = error_text(err)
            print(f"bench: proxy: {error_text(err)}", flush=True)
    report["ratios"] = ratios(report["start"])
    report["load_average_end"] = list(os.getloadavg())
    report["wall_s"] = time.monotonic() - began
    return report


def ratios(start: dict[str, Any]) -> dict[str, float]:
    if "qmprt" not in start:
        return {}
    mine = start["qmprt"]["total_ms"]["median"]
    return {f"qmprt/{name}": mine / figures["total_ms"]["median"] for name, figures in start.items() if name != "qmprt"}


def table(report: dict[str, Any]) -> str:
    env, start, errors, ratio = report["environment"], report.get("start", {}), report.get("errors", {}), report.get("ratios", {})
    load_start = "/".join(f"{value:.2f}" for value in env["load_average"])
    load_end = "/".join(f"{value:.2f}" for value in report.get("load_average_end", []))
    lines = [
        f"qmprt comparative benchmark, {report['date']}",
        f"accelerator {env['accelerator']} ({env['accelerator_reason']})",
        f"{env['qemu']}",
        f"machine {env['machine']}; load average (1/5/15 min) {load_start} at start, {load_end} at end",
        "",
        f"Start to guest ready (the tiny guest's marker on its serial console), {report['sizes']['pods']} runs each, interleaved:",
    ]
    rows: list[tuple[object, ...]] = []

    def figure(name: str, key: str, label: str, ratio_key: str = "") -> None:
        if name in start and key in start[name]:
            value = start[name][key]
            rows.append((label, value["median"], value["p95"], f"{ratio[ratio_key]:.2f}" if ratio_key in ratio else ""))

    def failed(name: str, label: str) -> None:
        if name in errors:
            rows.append((label, None, None, "not measured (see below)"))

    vm = report.get("vm", {})
    figure("qmprt", "total_ms", f"qmprt VM pod via CRI ({vm.get('machine')}, QCOW2 disk, {vm.get('memory_mib')} MiB, {vm.get('cpus')} vCPU)")
    failed("qmprt", "qmprt VM pod via CRI")
    for key, label in (
        ("runp_ms", "  RunPodSandbox (netns; no CNI configured)"),
        ("create_ms", "  CreateContainer (overlay + seed ISO + records)"),
        ("start_ms", "  StartContainer (cgroup, spawn QEMU, QMP up)"),
        ("spawn_to_output_ms", "  QEMU spawn -> first console byte"),
        ("output_to_ready_ms", "  first console byte -> ready marker"),
        ("console_to_log_ms", "  marker in console file -> in CRI log"),
    ):
        figure("qmprt", key, label)
    figure("q35-direct", "prepare_ms", "  overlay + seed ISO alone (engine prepare)")
    for name, label in (("qmprt-direct", "q35, direct kernel boot"), ("qmprt-microvm", "microvm, direct kernel boot")):
        figure(name, "total_ms", f"qmprt VM pod via CRI ({label}, qmprt.io/boot)")
        failed(name, f"qmprt VM pod via CRI ({label})")
        figure(name, "spawn_to_output_ms", "  QEMU spawn -> first console byte")
    figure("qmprt-template", "total_ms", "qmprt VM pod via CRI, a clone of a template (qmprt.io/boot: template)",
           "qmprt/qmprt-template")
    failed("qmprt-template", "qmprt VM pod via CRI (template clone)")
    figure("qmprt-template", "start_ms", "  StartContainer (restore + identity)")
    figure("qmprt-template", "ready_ms", "  StartContainer returned -> ready marker in the CRI log")
    for mode in ENGINE_MODES:
        figure(mode, "total_ms", f"{mode} direct kernel boot, engine level (VM.start, no CRI)", f"qmprt/{mode}")
        failed(mode, f"{mode} (engine)")
    figure("floor", "total_ms", "floor: qemu-system-x86_64 from floor.sh, same argv", "qmprt/floor")
    failed("floor", "floor")
    figure("floor", "first_output_ms", "  QEMU spawn -> first console byte")
    lv = report.get("libvirt_version", "")
    figure("libvirt", "total_ms", f"libvirt {lv}: private libvirtd, virsh define+start", "qmprt/libvirt")
    failed("libvirt", "libvirt")
    figure("libvirt", "define_ms", "  virsh define")
    figure("libvirt", "start_ms", "  virsh start")
    figure("libvirt", "ready_ms", "  start returned -> ready marker")
    if report.get("libvirt_cold_ms") is not None:
        rows.append(("  first boot through the fresh daemon (with its QEMU probe)", report["libvirt_cold_ms"], None, ""))
    ctd = report.get("containerd_version", "")
    figure("containerd", "total_ms", f"containerd {ctd}: busybox pod via CRI", "qmprt/containerd")
    failed("containerd", "containerd busybox pod")
    for key, label in (("runp_ms", "  RunPodSandbox"), ("create_ms", "  CreateContainer"), ("start_ms", "  StartContainer"),
                       ("ready_ms", "  start returned -> first log line")):
        figure("containerd", key, label)
    lines.append(format_table(("path", "median ms", "p95 ms", "qmprt / path"), rows))
    if "qmprt" in start and start["qmprt"]["output_to_ready_ms"]["median"] < 1:
        lines.append("  the tiny guest boots `quiet`: its first console output is the ready marker itself, so the whole guest")
        lines.append("  boot (firmware, extlinux, kernel, init) falls in 'QEMU spawn -> first console byte'.")
    if report.get("density"):
        lines += ["", f"Parallel start and density: VM pods started at once through the CRI socket; relist over {report['sizes']['relists']} rounds:"]
        drows = []
        for entry in report["density"]:
            drows.append((
                entry["pods"], entry["all_ready_s"], entry["pod_total_ms"]["median"] / 1000, entry["serve_rss_mib"],
                entry["qemu_rss_mib"]["median"], entry["qemu_overhead_mib"]["median"], entry["qemu_overhead_mib"]["p99"],
                f"{entry['relist_ms']['p50']:.2f}", f"{entry['relist_ms']['p99']:.2f}",
            ))
        lines.append(format_table(
            ("pods", "all ready s", "per pod s", "serve RSS MiB", "QEMU RSS MiB", "overhead MiB", "max", "relist p50 ms", "p99 ms"), drows
        ))
        lines.append("  overhead = a QEMU's RSS minus the guest RAM it touched (smaps of the guest-RAM mapping); median and max over the VMs")
    if report.get("network"):
        lines += ["", *network_table_lines(report["network"])]
    if report.get("streams"):
        lines += ["", *streams_table_lines(report["streams"])]
    if report.get("proxy"):
        lines += ["", *proxy_table_lines(report["proxy"])]
    if errors:
        lines += ["", "Not measured:"]
        lines += [f"  {name}: {text}" for name, text in errors.items()]
    lines.append(f"\nwall time {report.get('wall_s', 0):.0f} s")
    return "\n".join(lines)


def interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="tools/bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=10, help="runs of each start path (default 10)")
    parser.add_argument("--density", default="1,5,10,20", help="VM pod counts started at once (default 1,5,10,20)")
    parser.add_argument("--relists", type=int, default=200, help="relist rounds per density step (default 200)")
    parser.add_argument("--skip", default="", help="comma-separated paths to leave out: libvirt, containerd, network, streams, proxy")
    parser.add_argument("--proxy-calls", type=int, default=500, help="calls per RPC, direct and through qmprt proxy (default 500)")
    parser.add_argument("--execs", type=int, default=50, help="exec round trips per runtime in the streams section (default 50)")
    parser.add_argument("--transfer-mib", type=int, default=64, help="MiB per node -> guest TCP transfer (default 64)")
    parser.add_argument("--json", help="where to write the figures (default bench-results/bench-<date>.json)")
    args = parser.parse_args()
    args.density = [int(count) for count in args.density.split(",") if count]
    args.skip = {name for name in args.skip.split(",") if name}
    if os.geteuid() != 0:
        raise SystemExit("tools/bench/run needs root (cgroups, network namespaces, libvirtd, containerd)")
    # SIGTERM unwinds like Ctrl-C, so every service and directory is cleaned up.
    signal.signal(signal.SIGTERM, interrupted)
    try:
        report = run(args)
    except KeyboardInterrupt:
        raise SystemExit("bench: interrupted; everything it started is stopped and removed") from None
    text = table(report)
    print(text)
    path = Path(args.json) if args.json else ROOT / "bench-results" / f"bench-{datetime.datetime.now():%Y-%m-%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "table": text}, indent=1))
    print(f"figures: {path}")


if __name__ == "__main__":
    main()
