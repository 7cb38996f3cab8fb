"""The interceptor: one status code per error class, the message kept, one log line per call."""

from __future__ import annotations

import errno
import logging
import os

import grpc
import pytest
from cri_api.v1 import api_pb2 as cri

from qmprt import errors

from .conftest import Client, pod_config, status_of
from .fake import FakeRuntime

CASES = [
    (errors.InvalidArgument("bad field x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound("no such pod"), grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists("name taken"), grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition("not ready"), grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted("no memory"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded("too slow"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable("qmp gone"), grpc.StatusCode.UNAVAILABLE),
    (errors.InternalError("broken"), grpc.StatusCode.INTERNAL),
    (errors.ShutdownError("needed SIGKILL", step="kill"), grpc.StatusCode.INTERNAL),
    (errors.QmprtError("root"), grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("error", "code"), CASES, ids=[type(error).__name__ for error, _ in CASES])
async def test_each_error_class_has_its_status_code(
    client: Client, fake: FakeRuntime, error: Exception, code: grpc.StatusCode
) -> None:
    fake.fail_next["sandbox"] = error
    got, message = await status_of(client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id="x")))
    assert got == code
    assert message == str(error)


async def test_errors_from_awaited_runtime_calls_are_mapped_too(client: Client, fake: FakeRuntime) -> None:
    fake.fail_next["run_sandbox"] = errors.ResourceExhausted("no room for another VM")
    code, message = await status_of(client.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config())))
    assert (code, message) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "no room for another VM")


async def test_an_unexpected_exception_is_internal_and_logged_with_its_traceback(
    client: Client, fake: FakeRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    fake.fail_next["sandbox"] = KeyError("oops")
    with caplog.at_level(logging.DEBUG, logger="qmprt.cri"):
        code, message = await status_of(
            client.runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id="x"))
        )
    assert code == grpc.StatusCode.INTERNAL
    assert "KeyError" in message
    [record] = [r for r in caplog.records if "PodSandboxStatus" in r.getMessage()]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


async def test_every_call_is_logged_with_method_status_and_duration(
    client: Client, fake: FakeRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="qmprt.cri"):
        await client.runtime.Version(cri.VersionRequest())
        await status_of(client.runtime.ContainerStatus(cri.ContainerStatusRequest(container_id="nope")))
    lines = [record.getMessage() for record in caplog.records if record.name == "qmprt.cri"]
    assert any("/runtime.v1.RuntimeService/Version OK" in line and " ms" in line for line in lines), lines
    assert any(
        "/runtime.v1.RuntimeService/ContainerStatus NOT_FOUND" in line and "does not exist" in line
        for line in lines
    ), lines


async def test_unimplemented_calls_say_why(client: Client) -> None:
    code, message = await status_of(
        client.runtime.CheckpointContainer(cri.CheckpointContainerRequest(container_id="x"))
    )
    assert code == grpc.StatusCode.UNIMPLEMENTED
    assert "checkpoint" in message


async def test_errors_of_a_streaming_call_are_mapped_too(client: Client, fake: FakeRuntime) -> None:
    fake.fail_next["subscribe"] = errors.FailedPrecondition("no events today")
    events = client.runtime.GetContainerEvents(cri.GetEventsRequest())

    async def drain() -> None:
        async for _ in events:
            pass

    code, message = await status_of(drain())
    assert (code, message) == (grpc.StatusCode.FAILED_PRECONDITION, "no events today")


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
async def test_a_full_disk_is_resource_exhausted_and_says_where(client: Client, fake: FakeRuntime, number: int) -> None:
    fake.fail_next["run_sandbox"] = OSError(number, os.strerror(number), "/var/lib/qmprt/pods/x/sandbox.json")
    code, message = await status_of(client.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config())))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message == (
        f"the node's disk is full ({os.strerror(number)}: /var/lib/qmprt/pods/x/sandbox.json); free space there and retry"
    )
    # Other OS errors stay what they are: bugs.
    fake.fail_next["run_sandbox"] = OSError(errno.EIO, "Input/output error")
    code, _ = await status_of(client.runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=pod_config())))
    assert code == grpc.StatusCode.INTERNAL
