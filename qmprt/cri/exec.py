"""RuntimeService calls that run things in a container: ExecSync, and Exec/Attach/PortForward.

ExecSync goes through the guest agent (the pod layer). Exec, Attach and PortForward answer with a
URL of the streaming server, which qmprt does not have yet: their requests are validated (so a
client learns about a bad request first), then they answer UNIMPLEMENTED saying so.
"""

from __future__ import annotations

from typing import Any

from cri_api.v1 import api_pb2 as cri

from qmprt.cri import convert
from qmprt.cri.backend import Handlers
from qmprt.errors import FailedPrecondition, InvalidArgument
from qmprt.pod.states import ContainerState

NO_STREAMING = "qmprt has no streaming server yet: {call} is not available; ExecSync (crictl exec -s) is"


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
        self._running(request.container_id)
        raise NotImplementedError(NO_STREAMING.format(call="Exec"))

    async def Attach(self, request: cri.AttachRequest, context: Any) -> cri.AttachResponse:
        convert.require_id(request.container_id, "container_id")
        _check_streams(request.stdin, request.stdout, request.stderr, request.tty)
        self._running(request.container_id)
        raise NotImplementedError(NO_STREAMING.format(call="Attach"))

    async def PortForward(self, request: cri.PortForwardRequest, context: Any) -> cri.PortForwardResponse:
        convert.require_id(request.pod_sandbox_id, "pod_sandbox_id")
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is not a TCP port (1-65535)")
        self.runtime.sandbox(request.pod_sandbox_id)
        raise NotImplementedError(NO_STREAMING.format(call="PortForward"))

    def _running(self, container_id: str) -> None:
        info = self.runtime.container(container_id)
        if info.status.state != ContainerState.RUNNING:
            raise FailedPrecondition(f"container {info.id} is {info.status.state.value}, not running")


def _check_streams(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be set: a terminal carries stderr on stdout")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("set at least one of stdin, stdout and stderr")
