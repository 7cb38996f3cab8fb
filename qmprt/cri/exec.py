"""RuntimeService calls that run things in a container: ExecSync, and Exec/Attach/PortForward.

ExecSync runs in the guest through the pod layer. Exec, Attach and PortForward are validated here (a
client learns of a bad request from the call, not from the stream), then answered with a URL of the
streaming server (``qmprt.streaming``) holding a single-use token; without a streaming server they
answer UNIMPLEMENTED saying so.
"""

from __future__ import annotations

from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt.cri import convert, validate
from qmprt.cri.backend import Handlers, StreamURLs
from qmprt.errors import FailedPrecondition, InvalidArgument
from qmprt.pod.states import ContainerState, SandboxState
from qmprt.pod.streams import AttachStream, ExecStream, PortForwardStream

NO_STREAMING = "this qmprt runs no streaming server: {call} is not available; ExecSync (crictl exec -s) is"


class ExecHandlers(Handlers):
    async def ExecSync(self, request: cri.ExecSyncRequest, context: Any) -> cri.ExecSyncResponse:
        convert.require_id(request.container_id, "container_id")
        if not request.cmd:
            raise InvalidArgument("ExecSync needs a command: cmd is empty")
        if request.timeout < 0:
            raise InvalidArgument(f"timeout {request.timeout} is negative (0 means no timeout)")
        result = await self.runtime.exec_sync(request.container_id, list(request.cmd), request.timeout)
        return cri.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)

    async def Exec(self, request: cri.ExecRequest, context: Any) -> cri.ExecResponse:
        convert.require_id(request.container_id, "container_id")
        if not request.cmd:
            raise InvalidArgument("Exec needs a command: cmd is empty")
        _check_streams(request.stdin, request.stdout, request.stderr, request.tty)
        container_id = self._running(request.container_id)
        validate.list_length(request.cmd, "command")
        argv = tuple(request.cmd)
        validate.argv_size(argv, (), ())
        stream = ExecStream(container_id, argv, request.tty, request.stdin, request.stdout, request.stderr)
        return cri.ExecResponse(url=self._streams("Exec").url(stream))

    async def Attach(self, request: cri.AttachRequest, context: Any) -> cri.AttachResponse:
        convert.require_id(request.container_id, "container_id")
        _check_streams(request.stdin, request.stdout, request.stderr, request.tty)
        container_id = self._running(request.container_id)
        stream = AttachStream(container_id, request.tty, request.stdin, request.stdout, request.stderr)
        return cri.AttachResponse(url=self._streams("Attach").url(stream))

    async def PortForward(self, request: cri.PortForwardRequest, context: Any) -> cri.PortForwardResponse:
        convert.require_id(request.pod_sandbox_id, "pod_sandbox_id")
        validate.list_length(request.port, "port")
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is not a TCP port (1-65535)")
        info = self.runtime.sandbox(request.pod_sandbox_id)
        if info.status.state != SandboxState.READY:
            raise FailedPrecondition(f"pod sandbox {info.id} is {info.status.state.value}, not ready")
        stream = PortForwardStream(info.id, tuple(request.port))
        return cri.PortForwardResponse(url=self._streams("PortForward").url(stream))

    def _running(self, container_id: str) -> str:
        info = self.runtime.container(container_id)
        if info.status.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {info.id} is {info.status.state.value}, not running")
        return info.id

    def _streams(self, call: str) -> StreamURLs:
        if self.streams is None:
            raise NotImplementedError(NO_STREAMING.format(call=call))
        return self.streams


def _check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be set: a terminal carries stderr on stdout")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("set at least one of stdin, stdout and stderr")
