"""ExecSync through the runtime; Exec/Attach/PortForward validated, then answered with the streaming
server's URL (UNIMPLEMENTED when none runs)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc
from grpc import aio

from qmprt import errors
from qmprt.cri.server import CRIServer, SocketClaim
from qmprt.pod.streams import AttachStream, ExecStream, PortForwardStream
from qmprt.vm.agent import ExecResult

from .conftest import Client, create_container, run_pod, status_of
from .fake import FakeRuntime


async def _running(client: Client, fake: FakeRuntime) -> str:
    container_id = await create_container(client, fake, await run_pod(client))
    await client.runtime.StartContainer(cri.StartContainerRequest(container_id=container_id))
    return container_id


async def test_exec_sync_returns_output_and_exit_code(client: Client, fake: FakeRuntime) -> None:
    container_id = await _running(client, fake)
    fake.exec_results[("uname", "-r")] = ExecResult(3, b"6.1.0\n", b"warn\xff\n")
    response = await client.runtime.ExecSync(
        cri.ExecSyncRequest(container_id=container_id, cmd=["uname", "-r"], timeout=9)
    )
    assert (response.stdout, response.stderr, response.exit_code) == (b"6.1.0\n", b"warn\xff\n", 3)
    assert ("exec_sync", (container_id, ("uname", "-r"), 9)) in fake.calls


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"cmd": ["true"]}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"container_id": "x", "cmd": []}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"container_id": "x", "cmd": ["true"], "timeout": -1}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"container_id": "nope", "cmd": ["true"]}, grpc.StatusCode.NOT_FOUND),
    ],
    ids=["no-id", "no-cmd", "negative-timeout", "unknown"],
)
async def test_exec_sync_rejects(client: Client, request_fields: dict[str, object], code: grpc.StatusCode) -> None:
    got, _ = await status_of(client.runtime.ExecSync(cri.ExecSyncRequest(**request_fields)))  # type: ignore[arg-type]
    assert got == code


async def test_exec_sync_in_a_container_that_is_not_running(client: Client, fake: FakeRuntime) -> None:
    container_id = await create_container(client, fake, await run_pod(client))
    code, _ = await status_of(client.runtime.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=["true"])))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


async def test_exec_sync_timeout_is_deadline_exceeded(client: Client, fake: FakeRuntime) -> None:
    container_id = await _running(client, fake)
    fake.fail_next["exec_sync"] = errors.DeadlineExceeded("command 'sleep' still running in the guest after 1 s")
    code, _ = await status_of(
        client.runtime.ExecSync(cri.ExecSyncRequest(container_id=container_id, cmd=["sleep", "9"], timeout=1))
    )
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_exec_with_tty_and_stderr_is_invalid(client: Client, fake: FakeRuntime) -> None:
    container_id = await _running(client, fake)
    request = cri.ExecRequest(container_id=container_id, cmd=["sh"], tty=True, stdout=True, stderr=True)
    code, details = await status_of(client.runtime.Exec(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "tty" in details and "stderr" in details


async def test_attach_with_tty_and_stderr_is_invalid(client: Client, fake: FakeRuntime) -> None:
    container_id = await _running(client, fake)
    request = cri.AttachRequest(container_id=container_id, tty=True, stdout=True, stderr=True)
    code, _ = await status_of(client.runtime.Attach(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_exec_without_any_stream_is_invalid(client: Client, fake: FakeRuntime) -> None:
    container_id = await _running(client, fake)
    code, _ = await status_of(client.runtime.Exec(cri.ExecRequest(container_id=container_id, cmd=["sh"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_valid_exec_attach_portforward_say_streaming_is_missing(client: Client, fake: FakeRuntime) -> None:
    container_id = await _running(client, fake)
    pod_id = fake.containers[container_id].sandbox_id
    calls = [
        client.runtime.Exec(cri.ExecRequest(container_id=container_id, cmd=["sh"], stdout=True, stderr=True)),
        client.runtime.Attach(cri.AttachRequest(container_id=container_id, stdin=True, tty=True, stdout=True)),
        client.runtime.PortForward(cri.PortForwardRequest(pod_sandbox_id=pod_id, port=[80])),
    ]
    for call in calls:
        code, details = await status_of(call)
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert "streaming server" in details and "ExecSync" in details


async def test_exec_into_unknown_container_is_not_found(client: Client) -> None:
    request = cri.ExecRequest(container_id="nope", cmd=["sh"], stdout=True)
    code, _ = await status_of(client.runtime.Exec(request))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_exec_into_stopped_container_is_a_failed_precondition(client: Client, fake: FakeRuntime) -> None:
    container_id = await create_container(client, fake, await run_pod(client))
    request = cri.ExecRequest(container_id=container_id, cmd=["sh"], stdout=True)
    code, _ = await status_of(client.runtime.Exec(request))
    assert code == grpc.StatusCode.FAILED_PRECONDITION


async def test_port_forward_to_unknown_sandbox_is_not_found(client: Client) -> None:
    code, _ = await status_of(client.runtime.PortForward(cri.PortForwardRequest(pod_sandbox_id="nope", port=[80])))
    assert code == grpc.StatusCode.NOT_FOUND


class RecordingStreams:
    """A streaming server's URL minter that keeps what it was given."""

    def __init__(self) -> None:
        self.requests: list[object] = []

    def url(self, request: object) -> str:
        self.requests.append(request)
        return f"http://127.0.0.1:1/x/{len(self.requests)}"


async def test_valid_streaming_calls_answer_the_streaming_servers_url(fake: FakeRuntime, tmp_path: Path) -> None:
    streams = RecordingStreams()
    server = CRIServer(fake, SocketClaim(str(tmp_path / "s.sock")), streams)
    await server.start()
    channel = aio.insecure_channel(server.address)
    try:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        client = Client(stub, api_pb2_grpc.ImageServiceStub(channel), channel, server.address)
        container_id = await _running(client, fake)
        pod_id = fake.containers[container_id].sandbox_id
        short = container_id[:12]  # a unique prefix names the container; the URL holds its full id
        answer = await stub.Exec(cri.ExecRequest(container_id=short, cmd=["sh", "-c", "x"], tty=True, stdin=True, stdout=True))
        assert answer.url == "http://127.0.0.1:1/x/1"
        assert streams.requests[0] == ExecStream(container_id, ("sh", "-c", "x"), True, True, True, False)
        attached = await stub.Attach(cri.AttachRequest(container_id=container_id, stdout=True, stderr=True))
        assert attached.url.endswith("/2") and streams.requests[1] == AttachStream(container_id, False, False, True, True)
        forwarded = await stub.PortForward(cri.PortForwardRequest(pod_sandbox_id=pod_id, port=[80, 443]))
        assert forwarded.url.endswith("/3") and streams.requests[2] == PortForwardStream(pod_id, (80, 443))
        # Bad requests still fail before a URL is made.
        code, _ = await status_of(stub.Exec(cri.ExecRequest(container_id=container_id, cmd=["a\x00b"], stdout=True)))
        code_ports, _ = await status_of(stub.PortForward(cri.PortForwardRequest(pod_sandbox_id=pod_id, port=[1] * 65)))
        assert (code, code_ports) == (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT)
        assert len(streams.requests) == 3
    finally:
        await channel.close()
        await server.stop(grace=0)
