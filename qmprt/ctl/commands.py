"""The ``qmprt ctl`` commands: each takes a client and plain arguments, prints, returns an exit code."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, TextIO

from cri_api.v1 import api_pb2 as cri

from qmprt.ctl import configs, logs, output
from qmprt.ctl.client import CRIClient
from qmprt.errors import InvalidArgument, NotFound, QmprtError

EXEC_DEADLINE_MARGIN_S = 120  # kubelet's ExecSync deadline is the command's timeout + 2 min


def _state_name(value: int, enum: Any, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix)


def labels_from(pairs: Sequence[str]) -> dict[str, str]:
    """``["k=v", …]`` → a label selector."""
    selector = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--label {pair!r} must be key=value")
        selector[key] = value
    return selector


def version(client: CRIClient, out: TextIO) -> int:
    response = client.runtime("Version", cri.VersionRequest(version="v1"))
    out.write(
        f"Version:  {response.version}\nRuntimeName:  {response.runtime_name}\n"
        f"RuntimeVersion:  {response.runtime_version}\nRuntimeApiVersion:  {response.runtime_api_version}\n"
    )
    return 0


def info(client: CRIClient, out: TextIO, format: str = "json") -> int:
    response = client.runtime("Status", cri.StatusRequest(verbose=True))
    document = output.inspect_document(response.status, response.info)
    document["runtimeHandlers"] = [output.message_dict(handler) for handler in response.runtime_handlers]
    output.write_document(out, document, format)
    return 0


def run_pod(client: CRIClient, pod_file: str, runtime_handler: str, out: TextIO) -> int:
    request = cri.RunPodSandboxRequest(config=configs.pod_config(pod_file), runtime_handler=runtime_handler)
    response = client.runtime("RunPodSandbox", request, timeout=240)
    out.write(f"{response.pod_sandbox_id}\n")
    return 0


def create(client: CRIClient, pod_id: str, container_file: str, pod_file: str, out: TextIO) -> int:
    request = cri.CreateContainerRequest(
        pod_sandbox_id=pod_id,
        config=configs.container_config(container_file),
        sandbox_config=configs.pod_config(pod_file),
    )
    response = client.runtime("CreateContainer", request)
    out.write(f"{response.container_id}\n")
    return 0


def _each(ids: Sequence[str], out: TextIO, action: Any) -> int:
    for object_id in ids:
        action(object_id)
        out.write(f"{object_id}\n")
    return 0


def start(client: CRIClient, ids: Sequence[str], out: TextIO) -> int:
    return _each(ids, out, lambda i: client.runtime("StartContainer", cri.StartContainerRequest(container_id=i)))


def stop(client: CRIClient, ids: Sequence[str], timeout_s: int, out: TextIO) -> int:
    def stop_one(container_id: str) -> None:
        request = cri.StopContainerRequest(container_id=container_id, timeout=timeout_s)
        client.runtime("StopContainer", request, timeout=timeout_s + client.timeout)

    return _each(ids, out, stop_one)


def stop_pods(client: CRIClient, ids: Sequence[str], out: TextIO) -> int:
    return _each(ids, out, lambda i: client.runtime("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=i)))


def remove(client: CRIClient, ids: Sequence[str], out: TextIO) -> int:
    return _each(ids, out, lambda i: client.runtime("RemoveContainer", cri.RemoveContainerRequest(container_id=i)))


def remove_pods(client: CRIClient, ids: Sequence[str], out: TextIO) -> int:
    return _each(
        ids, out, lambda i: client.runtime("RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=i))
    )


def containers(
    client: CRIClient,
    out: TextIO,
    *,
    all: bool = False,
    pod: str = "",
    state: str = "",
    labels: Mapping[str, str] | None = None,
    quiet: bool = False,
    format: str = "table",
) -> int:
    wanted = cri.ContainerFilter(pod_sandbox_id=pod, label_selector=dict(labels or {}))
    if state:
        wanted.state.state = cri.ContainerState.Value(f"CONTAINER_{state.upper()}")
    elif not all:
        wanted.state.state = cri.CONTAINER_RUNNING
    found = client.runtime("ListContainers", cri.ListContainersRequest(filter=wanted)).containers
    found = sorted(found, key=lambda c: c.created_at, reverse=True)
    if format != "table":
        output.write_document(out, {"containers": [output.message_dict(c) for c in found]}, format)
        return 0
    if quiet:
        out.writelines(f"{c.id}\n" for c in found)
        return 0
    pods = {p.id: p for p in client.runtime("ListPodSandbox", cri.ListPodSandboxRequest()).items}
    rows = [
        [
            output.short_id(c.id),
            c.image.image,
            output.age(c.created_at),
            _state_name(c.state, cri.ContainerState, "CONTAINER_"),
            c.metadata.name,
            str(c.metadata.attempt),
            output.short_id(c.pod_sandbox_id),
            pods[c.pod_sandbox_id].metadata.name if c.pod_sandbox_id in pods else "unknown",
        ]
        for c in found
    ]
    output.table(out, ["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD"], rows)
    return 0


def pods(
    client: CRIClient,
    out: TextIO,
    *,
    name: str = "",
    state: str = "",
    labels: Mapping[str, str] | None = None,
    quiet: bool = False,
    format: str = "table",
) -> int:
    wanted = cri.PodSandboxFilter(label_selector=dict(labels or {}))
    if state:
        wanted.state.state = cri.PodSandboxState.Value(f"SANDBOX_{state.upper()}")
    found = client.runtime("ListPodSandbox", cri.ListPodSandboxRequest(filter=wanted)).items
    found = sorted((p for p in found if name in p.metadata.name), key=lambda p: p.created_at, reverse=True)
    if format != "table":
        output.write_document(out, {"items": [output.message_dict(p) for p in found]}, format)
        return 0
    if quiet:
        out.writelines(f"{p.id}\n" for p in found)
        return 0
    rows = [
        [
            output.short_id(p.id),
            output.age(p.created_at),
            _state_name(p.state, cri.PodSandboxState, "SANDBOX_"),
            p.metadata.name,
            p.metadata.namespace,
            str(p.metadata.attempt),
            p.runtime_handler or "(default)",
        ]
        for p in found
    ]
    output.table(out, ["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"], rows)
    return 0


def inspect(client: CRIClient, container_id: str, out: TextIO, format: str = "json") -> int:
    request = cri.ContainerStatusRequest(container_id=container_id, verbose=True)
    response = client.runtime("ContainerStatus", request)
    output.write_document(out, output.inspect_document(response.status, response.info), format)
    return 0


def inspect_pod(client: CRIClient, pod_id: str, out: TextIO, format: str = "json") -> int:
    response = client.runtime("PodSandboxStatus", cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True))
    output.write_document(out, output.inspect_document(response.status, response.info), format)
    return 0


def container_logs(
    client: CRIClient, container_id: str, stdout: BinaryIO, stderr: BinaryIO, *, follow: bool = False, tail: int = -1
) -> int:
    status = client.runtime("ContainerStatus", cri.ContainerStatusRequest(container_id=container_id)).status
    if not status.log_path:
        raise InvalidArgument(f"container {status.id[:13]} has no log file (its config sets no log_path)")

    def write(line: logs.LogLine) -> None:
        stream = stderr if line.stream == "stderr" else stdout
        stream.write(logs.render(line))
        stream.flush()

    try:
        lines, offset = logs.read(status.log_path, tail)
    except FileNotFoundError as err:
        raise InvalidArgument(f"the log file {status.log_path} does not exist (yet)") from err
    for line in lines:
        write(line)
    if follow:

        def running() -> bool:
            request = cri.ContainerStatusRequest(container_id=status.id)
            return bool(client.runtime("ContainerStatus", request).status.state == cri.CONTAINER_RUNNING)

        for line in logs.follow(status.log_path, offset, running):
            write(line)
    return 0


def exec_sync(
    client: CRIClient, container_id: str, argv: Sequence[str], timeout_s: int, stdout: BinaryIO, stderr: BinaryIO
) -> int:
    if not argv:
        raise InvalidArgument("exec needs a command after the container id")
    request = cri.ExecSyncRequest(container_id=container_id, cmd=list(argv), timeout=timeout_s)
    deadline = timeout_s + EXEC_DEADLINE_MARGIN_S if timeout_s else None
    response = client.runtime("ExecSync", request, timeout=deadline)
    stdout.write(response.stdout)
    stdout.flush()
    stderr.write(response.stderr)
    stderr.flush()
    return int(response.exit_code)


def images(client: CRIClient, out: TextIO, *, quiet: bool = False, format: str = "table") -> int:
    found = client.images("ListImages", cri.ListImagesRequest()).images
    if format != "table":
        output.write_document(out, {"images": [output.message_dict(image) for image in found]}, format)
        return 0
    if quiet:
        out.writelines(f"{image.id}\n" for image in found)
        return 0
    rows = []
    for image in found:
        for name in image.repo_tags or ["<none>"]:
            repository, tag = _split_tag(name)
            rows.append([repository, tag, output.short_id(image.id), output.size(image.size)])
    output.table(out, ["IMAGE", "TAG", "IMAGE ID", "SIZE"], rows)
    return 0


def _split_tag(name: str) -> tuple[str, str]:
    head, _, tail = name.rpartition("/")
    if ":" in tail and "://" not in name:
        repo, tag = tail.rsplit(":", 1)
        return (f"{head}/{repo}" if head else repo), tag
    return name, "<none>"


def pull(
    client: CRIClient,
    name: str,
    out: TextIO,
    *,
    progress: TextIO,
    username: str = "",
    password: str = "",
    timeout_s: float | None = None,
) -> int:
    request = cri.PullImageRequest(image=cri.ImageSpec(image=name))
    if username or password:
        request.auth.CopyFrom(cri.AuthConfig(username=username, password=password))
    future = client.images_future("PullImage", request, timeout=timeout_s)
    done = threading.Event()
    future.add_done_callback(lambda _: done.set())
    started = time.monotonic()
    interactive = progress.isatty()
    while not done.wait(0.25 if interactive else 5.0):
        line = f"pulling {name}: {_pull_bytes(client, name, time.monotonic() - started)}"
        progress.write(f"\r\033[K{line}" if interactive else f"{line}\n")
        progress.flush()
    if interactive:
        progress.write("\r\033[K")
    response = client.result(future, "PullImage")
    out.write(f"Image is up to date for {response.image_ref}\n")
    return 0


def _pull_bytes(client: CRIClient, name: str, elapsed: float) -> str:
    """How far the runtime's pull of ``name`` got (ImageStatus verbose "pull"), as one line."""
    try:
        status = client.images("ImageStatus", cri.ImageStatusRequest(image=cri.ImageSpec(image=name), verbose=True))
        state = json.loads(status.info.get("pull", "null")) or {}
        done, total = int(state.get("done", 0)), state.get("total")
    except (QmprtError, ValueError, TypeError, AttributeError):
        return f"{elapsed:.0f}s"
    of = f" of {output.size(int(total))}" if isinstance(total, int) and total > 0 else ""
    rate = done / max(elapsed, 1e-3) / 1e6
    return f"{output.size(done)}{of} ({rate:.1f} MB/s, {elapsed:.0f}s)"


def remove_images(client: CRIClient, names: Sequence[str], out: TextIO) -> int:
    """Removes each image that exists, with all its names (printed, as crictl does: its tags, else its
    digests); one that does not is an error (RemoveImage itself is idempotent, so ask ImageStatus
    first, as crictl does), after the others are removed."""
    missing = []
    for name in names:
        status = client.images("ImageStatus", cri.ImageStatusRequest(image=cri.ImageSpec(image=name)))
        if not status.HasField("image"):
            missing.append(name)
            continue
        client.images("RemoveImage", cri.RemoveImageRequest(image=cri.ImageSpec(image=name)))
        for removed in list(status.image.repo_tags) or list(status.image.repo_digests) or [name]:
            out.write(f"Deleted: {removed}\n")
    if missing:
        raise NotFound(f"no such image: {', '.join(missing)}")
    return 0


def image_fs_info(client: CRIClient, out: TextIO, format: str = "json") -> int:
    response = client.images("ImageFsInfo", cri.ImageFsInfoRequest())
    output.write_document(out, output.message_dict(response), format)
    return 0


def stats(
    client: CRIClient,
    out: TextIO,
    *,
    pod: str = "",
    labels: Mapping[str, str] | None = None,
    sample_s: float = 1.0,
    format: str = "table",
) -> int:
    request = cri.ListContainerStatsRequest(
        filter=cri.ContainerStatsFilter(pod_sandbox_id=pod, label_selector=dict(labels or {}))
    )
    first = {s.attributes.id: s for s in client.runtime("ListContainerStats", request).stats}
    if format != "table":
        output.write_document(out, {"stats": [output.message_dict(s) for s in first.values()]}, format)
        return 0
    time.sleep(sample_s)
    rows = []
    for current in client.runtime("ListContainerStats", request).stats:
        before = first.get(current.attributes.id)
        cpu = "-"
        if before is not None and current.cpu.timestamp > before.cpu.timestamp:
            used = current.cpu.usage_core_nano_seconds.value - before.cpu.usage_core_nano_seconds.value
            cpu = f"{100 * used / (current.cpu.timestamp - before.cpu.timestamp):.2f}"
        rows.append(
            [
                output.short_id(current.attributes.id),
                current.attributes.metadata.name,
                cpu,
                output.size(current.memory.working_set_bytes.value),
                output.size(current.writable_layer.used_bytes.value),
                str(current.writable_layer.inodes_used.value),
            ]
        )
    output.table(out, ["CONTAINER", "NAME", "CPU %", "MEM", "DISK", "INODES"], rows)
    return 0
