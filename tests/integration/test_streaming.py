"""Exec, Attach and PortForward end to end: a real ``qmprt serve`` in a node namespace (as in
test_pod_network), the tiny guest on a Flannel-like CNI network in both wiring modes, the CRI call
over gRPC, then the returned URL dialled by real clients: the tests' own SPDY/3.1 client (as
kubectl's and crictl's Go one behaves, without flow control) and the ``kubernetes`` Python client's
WebSocket stream. The streaming server listens on the node namespace's loopback; ``NetnsTunnel``
carries the tests' connections there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import psutil
import pytest
from cri_api.v1 import api_pb2 as cri
from kubernetes.client import Configuration
from kubernetes.stream.ws_client import WSClient, portforward_call

from qmprt import cgroups
from qmprt.streaming.spdy import SpdyStream
from tests.spdy_client import SpdyClient

from .conftest import TEST_CGROUP_ROOT
from .guests import TinyGuest
from .netns_tunnel import NetnsTunnel
from .test_pod_network import BIN_DIR, GUEST_PORT, Kubelet, Node, Pod, flannel_like, node_with_server

pytestmark = pytest.mark.skipif(not (BIN_DIR / "bridge").exists(), reason="needs containernetworking-plugins")

BIG_BYTES = 64 << 20


@pytest.fixture(scope="module")
def node(tiny: TinyGuest, cgroup_driver: cgroups.CgroupDriver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    setup = (["sysctl", "-qw", "net.ipv4.ip_forward=1"],)
    with node_with_server(tiny, tmp_path_factory.mktemp("streams"), f"{TEST_CGROUP_ROOT}/streams",
                          "plugin_timeout_seconds = 20", setup) as the_node:
        the_node.write_config(flannel_like(the_node))
        the_node.server.start()
        yield the_node


@pytest.fixture(scope="module")
def kubelet(node: Node, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubelet]:
    client = Kubelet(node, tmp_path_factory.mktemp("logs"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def pods(kubelet: Kubelet) -> Iterator[dict[str, Pod]]:
    """One VM pod per wiring mode, each serving HTTP on GUEST_PORT."""
    started = {mode: kubelet.run_pod(f"st-{mode[:2]}", mode) for mode in ("tc-redirect", "macvtap")}
    try:
        for pod in started.values():
            kubelet.wait_ready(pod)
        yield started
    finally:
        for pod in started.values():
            kubelet.remove(pod)


@contextlib.asynccontextmanager
async def tunneled(node: Node, url: str) -> AsyncIterator[str]:
    tunnel = NetnsTunnel(node.path, urlsplit(url).port or 0)
    await tunnel.start()
    try:
        yield tunnel.url(url)
    finally:
        await tunnel.close()


def exec_url(kubelet: Kubelet, pod: Pod, *argv: str, tty: bool = False, stdin: bool = False) -> str:
    request = cri.ExecRequest(container_id=pod.container_id, cmd=list(argv), tty=tty, stdin=stdin, stdout=True,
                              stderr=not tty)
    url = kubelet.runtime.Exec(request, timeout=10).url
    assert "/exec/" in url
    return str(url)


async def spdy(url: str, protocol: str = "v4.channel.k8s.io") -> SpdyClient:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return await SpdyClient.connect(parts.hostname, parts.port, parts.path, protocols=(protocol,), flow_control=False)


async def spdy_exec(url: str, *, stdin: bytes | None = None, tty: bool = False,
                    resize: tuple[int, int] | None = None, keys: bytes = b"") -> tuple[bytes, bytes, dict[str, object]]:
    """Run an exec over SPDY as kubectl would: (stdout, stderr, status)."""
    async with await spdy(url) as client:
        error = await client.open_stream({"streamType": "error"}, fin=True)
        input_stream = await client.open_stream({"streamType": "stdin"}) if stdin is not None or keys else None
        stdout = await client.open_stream({"streamType": "stdout"}, fin=True)
        stderr = None if tty else await client.open_stream({"streamType": "stderr"}, fin=True)
        if tty:
            sizes = await client.open_stream({"streamType": "resize"})
            if resize is not None:
                await sizes.write(json.dumps({"Width": resize[1], "Height": resize[0]}).encode())
        reading = asyncio.gather(client.read_all(stdout), client.read_all(stderr) if stderr else asyncio.sleep(0, b""))
        if input_stream is not None:
            if keys:
                await asyncio.sleep(1.0)  # the command is running
                await input_stream.write(keys)
            if stdin is not None:
                await input_stream.write(stdin)
                await input_stream.close()
        out, err = await asyncio.wait_for(reading, 120)
        status = json.loads(await asyncio.wait_for(client.read_all(error), 30))
    return out, err, status


async def started_sleeper(url: str) -> tuple[SpdyClient, SpdyStream]:
    """An exec whose command said "started" and sleeps on: its client and stdout stream."""
    client = await spdy(url)
    await client.open_stream({"streamType": "error"}, fin=True)
    stdout = await client.open_stream({"streamType": "stdout"}, fin=True)
    await client.open_stream({"streamType": "stderr"}, fin=True)
    assert await asyncio.wait_for(stdout.read(), 30) == b"started\n"
    return client, stdout


def exit_code(status: dict[str, object]) -> int:
    if status["status"] == "Success":
        return 0
    causes = status["details"]["causes"]  # type: ignore[index]
    return int(next(c["message"] for c in causes if c.get("reason") == "ExitCode"))


def guest_processes(kubelet: Kubelet, pod: Pod) -> str:
    return kubelet.exec(pod, "ps", "-o", "pid,args").stdout.decode()


async def wait_gone(kubelet: Kubelet, pod: Pod, needle: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle not in (shown := await asyncio.to_thread(guest_processes, kubelet, pod)):
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{needle!r} still runs in the guest:\n{shown}")


# -- exec ---------------------------------------------------------------------------------------------


async def test_exec_over_spdy_echoes_stdin_and_returns_exit_codes(node: Node, kubelet: Kubelet, pods: dict[str, Pod]) -> None:
    pod = pods["tc-redirect"]
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    async with tunneled(node, exec_url(kubelet, pod, "cat", stdin=True)) as url:
        out, err, status = await spdy_exec(url, stdin=payload)
    assert out == payload and err == b"" and status == {"metadata": {}, "status": "Success"}
    async with tunneled(node, exec_url(kubelet, pod, "sh", "-c", "echo to-stderr >&2; exit 3")) as url:
        out, err, status = await spdy_exec(url)
    assert (out, err, exit_code(status), status["reason"]) == (b"", b"to-stderr\n", 3, "NonZeroExitCode")


async def test_64_mib_of_stdout_arrive_intact(node: Node, kubelet: Kubelet, pods: dict[str, Pod]) -> None:
    pod = pods["tc-redirect"]
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n"
    expected = hashlib.sha256((line * (BIG_BYTES // len(line) + 1))[:BIG_BYTES]).hexdigest()
    command = f"yes {line[:-1].decode()} | head -c {BIG_BYTES}"
    async with tunneled(node, exec_url(kubelet, pod, "sh", "-c", command)) as url:
        started = time.monotonic()
        out, _, status = await spdy_exec(url)
        seconds = time.monotonic() - started
    assert exit_code(status) == 0 and len(out) == BIG_BYTES, (len(out), seconds)
    assert hashlib.sha256(out).hexdigest() == expected


async def test_a_tty_exec_sees_the_resize_and_ctrl_c_interrupts(node: Node, kubelet: Kubelet, pods: dict[str, Pod]) -> None:
    pod = pods["tc-redirect"]
    async with tunneled(node, exec_url(kubelet, pod, "sh", "-c", "sleep 1; stty size", tty=True, stdin=True)) as url:
        out, _, status = await spdy_exec(url, tty=True, resize=(43, 132), stdin=b"")
    assert b"43 132" in out and exit_code(status) == 0
    async with tunneled(node, exec_url(kubelet, pod, "sleep", "300", tty=True, stdin=True)) as url:
        started = time.monotonic()
        _, _, status = await spdy_exec(url, tty=True, keys=b"\x03")
    assert exit_code(status) == 130 and time.monotonic() - started < 60
    await wait_gone(kubelet, pod, "sleep 300")


async def test_exec_over_websocket_with_the_kubernetes_client(node: Node, kubelet: Kubelet, pods: dict[str, Pod]) -> None:
    pod = pods["macvtap"]
    async with tunneled(node, exec_url(kubelet, pod, "sh", "-c", "cat; exit 7", stdin=True)) as url:
        def run() -> tuple[str, int | None]:
            client = WSClient(Configuration(), url.replace("http://", "ws://"), None, capture_all=True)
            assert client.subprotocol == "v5.channel.k8s.io"
            client.write_stdin("over websocket\n")
            client.close_channel(0)  # v5: stdin's end
            client.run_forever(timeout=60)
            code = client.returncode  # before read_all(), which empties the channels
            return client.read_all(), code

        output, code = await asyncio.to_thread(run)
    assert output == "over websocket\n" and code == 7


def serve_fds(node: Node) -> int:
    assert node.server.process is not None
    return psutil.Process(node.server.process.pid).num_fds()


async def test_a_dropped_client_ends_the_guest_process(node: Node, kubelet: Kubelet, pods: dict[str, Pod]) -> None:
    pod = pods["tc-redirect"]
    fds_before = serve_fds(node)
    async with tunneled(node, exec_url(kubelet, pod, "sh", "-c", "echo started; exec sleep 301")) as url:
        client, stdout = await started_sleeper(url)
        assert "sleep 301" in await asyncio.to_thread(guest_processes, kubelet, pod)
        assert serve_fds(node) > fds_before  # the stream's connection
        await client.close()
        await wait_gone(kubelet, pod, "sleep 301")
    for _ in range(50):  # and qmprt holds nothing of it any more
        if serve_fds(node) <= fds_before:
            break
        await asyncio.sleep(0.2)
    assert serve_fds(node) <= fds_before


async def test_many_streams_at_once(node: Node, kubelet: Kubelet, pods: dict[str, Pod]) -> None:
    pod = pods["macvtap"]
    urls = [exec_url(kubelet, pod, "echo", f"stream-{index}") for index in range(100)]
    async with tunneled(node, urls[0]) as first:
        prefix = first.rsplit("/exec/", 1)[0]
        results = await asyncio.gather(*(spdy_exec(prefix + "/exec/" + url.rsplit("/exec/", 1)[1]) for url in urls))
    assert [out for out, _, _ in results] == [f"stream-{index}\n".encode() for index in range(100)]


async def test_a_bad_or_reused_token_is_404_and_runs_nothing(node: Node, kubelet: Kubelet, pods: dict[str, Pod]) -> None:
    pod = pods["tc-redirect"]
    url = exec_url(kubelet, pod, "touch", "/tmp/must-not-exist")
    async with tunneled(node, url) as local:
        for bad in (local.rsplit("/", 1)[0] + "/not-a-token", local.replace("/exec/", "/attach/")):
            with pytest.raises(Exception, match="404"):
                await spdy(bad)
        with pytest.raises(Exception, match="404"):  # the token was spent by the attach attempt
            await spdy(local)
    assert kubelet.exec(pod, "ls", "/tmp/must-not-exist").exit_code != 0


# -- attach -------------------------------------------------------------------------------------------


async def test_attachers_see_the_console_and_the_log_goes_on(node: Node, kubelet: Kubelet, pods: dict[str, Pod]) -> None:
    pod = pods["tc-redirect"]
    urls = [
        kubelet.runtime.Attach(cri.AttachRequest(container_id=pod.container_id, stdout=True), timeout=10).url
        for _ in range(2)
    ]
    async with tunneled(node, urls[0]) as first:
        local = [first, first.rsplit("/attach/", 1)[0] + "/attach/" + urls[1].rsplit("/attach/", 1)[1]]
        clients = [await spdy(url) for url in local]
        try:
            outputs = []
            for client in clients:
                await client.open_stream({"streamType": "error"}, fin=True)
                outputs.append(await client.open_stream({"streamType": "stdout"}, fin=True))
                await client.open_stream({"streamType": "stderr"}, fin=True)
            await asyncio.sleep(0.5)
            assert kubelet.exec(pod, "sh", "-c", "echo attach-marker-1 > /dev/ttyS0").exit_code == 0

            async def until_marker(stream: object) -> bytes:
                seen = b""
                while b"attach-marker-1" not in seen:
                    chunk = await stream.read()  # type: ignore[attr-defined]
                    assert chunk, seen
                    seen += chunk
                return seen

            for stream in outputs:
                await asyncio.wait_for(until_marker(stream), 30)
        finally:
            for client in clients:
                await client.close()
    deadline = time.monotonic() + 10
    while b"attach-marker-1" not in pod.log_path.read_bytes() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert b"attach-marker-1" in pod.log_path.read_bytes()


# -- port-forward -------------------------------------------------------------------------------------


def port_forward_url(kubelet: Kubelet, pod: Pod) -> str:
    request = cri.PortForwardRequest(pod_sandbox_id=pod.sandbox_id, port=[GUEST_PORT])
    return str(kubelet.runtime.PortForward(request, timeout=10).url)


@pytest.mark.parametrize("mode", ["tc-redirect", "macvtap"], ids=["tc", "macvtap"])
async def test_port_forward_over_spdy_and_websocket(node: Node, kubelet: Kubelet, pods: dict[str, Pod], mode: str) -> None:
    pod = pods[mode]
    request = f"GET / HTTP/1.0\r\nHost: {pod.name}\r\n\r\n".encode()
    async with tunneled(node, port_forward_url(kubelet, pod)) as url:
        async with await spdy(url, "portforward.k8s.io") as client:
            error = await client.open_stream({"streamType": "error", "port": str(GUEST_PORT), "requestID": "0"}, fin=True)
            data = await client.open_stream({"streamType": "data", "port": str(GUEST_PORT), "requestID": "0"})
            await data.write(request)
            answer = await asyncio.wait_for(client.read_all(data), 30)
            assert await client.read_all(error) == b""
    assert f"hello from {pod.name}".encode() in answer
    async with tunneled(node, port_forward_url(kubelet, pod)) as url:
        def fetch() -> bytes:
            forward = portforward_call(Configuration(), "GET", url + f"?ports={GUEST_PORT}",
                                       query_params=[("ports", str(GUEST_PORT))])
            connection = forward.socket(GUEST_PORT)
            connection.sendall(request)
            chunks = []
            connection.settimeout(30)
            while chunk := connection.recv(65536):
                chunks.append(chunk)
            forward.close()
            return b"".join(chunks)

        assert f"hello from {pod.name}".encode() in await asyncio.to_thread(fetch)


# -- restarts and guests without the helper -----------------------------------------------------------


async def test_a_qmprt_restart_ends_open_streams_and_keeps_the_vm(node: Node, kubelet: Kubelet, pods: dict[str, Pod]) -> None:
    pod = pods["macvtap"]
    async with tunneled(node, exec_url(kubelet, pod, "sh", "-c", "echo started; exec sleep 302")) as url:
        client, stdout = await started_sleeper(url)
        await asyncio.to_thread(node.server.stop)
        assert await asyncio.wait_for(client.read_all(stdout), 30) == b""  # the stream ended
        await client.close()
    await asyncio.to_thread(node.server.start)
    kubelet.reconnect()
    state = kubelet.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=pod.container_id), timeout=10)
    assert state.status.state == cri.CONTAINER_RUNNING
    await wait_gone(kubelet, pod, "sleep 302")  # the new qmprt's hello ended the old session


async def test_without_the_helper_a_plain_exec_goes_through_the_agent_and_a_tty_is_refused(
    node: Node, kubelet: Kubelet, pods: dict[str, Pod]
) -> None:
    pod = pods["tc-redirect"]  # the last test to use it: its helper is stopped here
    # The kill comes from outside the exec session (its own session, after the exec returned), as an
    # appliance without the helper would be; ExecSync then falls back to the guest agent.
    kubelet.exec(pod, "sh", "-c", "setsid sh -c 'sleep 1; kill $(pidof qmprt-exec)' </dev/null >/dev/null 2>&1 &")
    await asyncio.sleep(2)
    stopped = kubelet.exec(pod, "sh", "-c", "pidof qmprt-exec || echo gone")
    assert b"gone" in stopped.stdout, stopped
    async with tunneled(node, exec_url(kubelet, pod, "sh", "-c", "cat; exit 5", stdin=True)) as url:
        out, _, status = await spdy_exec(url, stdin=b"through the agent\n")
    assert out == b"through the agent\n" and exit_code(status) == 5
    async with tunneled(node, exec_url(kubelet, pod, "sh", tty=True, stdin=True)) as url:
        _, _, status = await spdy_exec(url, tty=True, stdin=b"")
    assert status["status"] == "Failure" and "qmprt-exec" in str(status["message"])
