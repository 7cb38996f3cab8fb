"""A blocking CRI client over a unix socket; gRPC failures come back as qmprt's own exceptions."""

from __future__ import annotations

import os
from typing import Any

import grpc
from cri_api.v1 import api_pb2_grpc

from qmprt import errors

DEFAULT_TIMEOUT_S = 120.0  # kubelet's deadline for most calls

_ERRORS: dict[grpc.StatusCode, type[errors.QmprtError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
}


def endpoint(address: str) -> str:
    """``/run/qmprt/qmprt.sock`` or ``unix:///run/qmprt/qmprt.sock`` → the gRPC target."""
    path = address.removeprefix("unix://")
    if not os.path.isabs(path):
        raise errors.InvalidArgument(f"the runtime endpoint {address!r} must be an absolute unix socket path")
    return f"unix://{path}"


class CRIClient:
    def __init__(self, address: str, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = endpoint(address)
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", 16 << 20)]
        )
        self._runtime = api_pb2_grpc.RuntimeServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._images = api_pb2_grpc.ImageServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CRIClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def runtime(self, method: str, request: Any, timeout: float | None = -1.0) -> Any:
        """Call RuntimeService ``method``; ``timeout`` -1 means the client's default, None no deadline."""
        return self._call(getattr(self._runtime, method), method, request, timeout)

    def images(self, method: str, request: Any, timeout: float | None = -1.0) -> Any:
        return self._call(getattr(self._images, method), method, request, timeout)

    def images_future(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """Start an ImageService call and return its future (for calls shown with progress)."""
        return getattr(self._images, method).future(request, timeout=timeout)

    def result(self, future: Any, method: str) -> Any:
        """The response of a call started with ``images_future``, or its failure as a qmprt error."""
        try:
            return future.result()
        except grpc.RpcError as err:
            raise self.error(err, method) from err

    def _call(self, stub_method: Any, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return stub_method(request, timeout=self.timeout if timeout == -1.0 else timeout)
        except grpc.RpcError as err:
            raise self.error(err, method) from err

    def error(self, err: grpc.RpcError, method: str) -> errors.QmprtError:
        code = err.code()
        details = err.details() or code.name
        if code == grpc.StatusCode.UNAVAILABLE and "connect" in details:
            return errors.Unavailable(f"cannot reach a CRI runtime on {self.address}: is `qmprt serve` running?")
        return _ERRORS.get(code, errors.QmprtError)(f"{method}: {details} ({code.name})")
