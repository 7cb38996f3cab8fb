"""The one place qmprt errors become gRPC status codes, and every call gets a log line.

Servicers raise ``qmprt.errors`` classes (or let the pod layer raise them) and never call
``context.abort`` for them. ``NotImplementedError`` stands for an RPC qmprt does not serve (yet):
it answers UNIMPLEMENTED with the exception's message. An ``OSError`` of a full disk or quota
(ENOSPC, EDQUOT) is the node's condition: RESOURCE_EXHAUSTED, saying where. Anything else is a bug:
INTERNAL, with the traceback in the log.

Log levels: the calls kubelet repeats every second or so (lists, statuses, stats, Version, Status,
ImageFsInfo) log at DEBUG when they succeed, everything else at INFO; failures at WARNING, and
INTERNAL at ERROR.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from grpc import aio

from qmprt import errors, telemetry

log = logging.getLogger("qmprt.cri")

STATUS_CODES: tuple[tuple[type[errors.QmprtError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.QmprtError, grpc.StatusCode.INTERNAL),
)

_POLLED = frozenset(
    {
        "Version",
        "Status",
        "ListPodSandbox",
        "ListContainers",
        "PodSandboxStatus",
        "ContainerStatus",
        "ContainerStats",
        "ListContainerStats",
        "PodSandboxStats",
        "ListPodSandboxStats",
        "ListImages",
        "ImageStatus",
        "ImageFsInfo",
    }
)


# A full disk (or quota) is the node's condition, not a bug: kubelet may retry once space is freed.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _NO_SPACE


def status_code(error: BaseException) -> grpc.StatusCode:
    """The status code a raised exception answers with."""
    if isinstance(error, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED
    if _no_space(error):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    for cls, code in STATUS_CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


class _Call:
    """Book-keeping of one RPC: its name, clock, and the line logged at its end."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.short_name = method.rsplit("/", 1)[-1]
        self.started = time.monotonic()

    def done(self, code: grpc.StatusCode, detail: str = "", traceback: bool = False) -> None:
        seconds = time.monotonic() - self.started
        telemetry.RPC_SECONDS.labels(self.short_name, code.name).observe(seconds)
        millis = seconds * 1000
        if code == grpc.StatusCode.OK:
            level = logging.DEBUG if self.short_name in _POLLED else logging.INFO
        elif code == grpc.StatusCode.INTERNAL:
            level = logging.ERROR
        else:
            level = logging.WARNING
        suffix = f": {detail}" if detail else ""
        log.log(level, "%s %s %.1f ms%s", self.method, code.name, millis, suffix, exc_info=traceback)

    async def fail(self, context: aio.ServicerContext, error: BaseException) -> NoReturn:
        """Log ``error`` and end the call with its status code (``context.abort`` raises)."""
        code = status_code(error)
        unexpected = code == grpc.StatusCode.INTERNAL and not isinstance(error, errors.QmprtError)
        detail = str(error) or type(error).__name__
        if _no_space(error):
            assert isinstance(error, OSError)
            detail = (
                f"the node's disk is full ({error.strerror}"
                + (f": {error.filename}" if error.filename else "")
                + "); free space there and retry"
            )
        if unexpected:
            detail = f"{type(error).__name__}: {detail}"
        self.done(code, detail, traceback=unexpected)
        await context.abort(code, detail)
        raise AssertionError("context.abort returned instead of raising")


class ErrorInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Wraps every handler: log line per call, qmprt exceptions → status codes."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # CRI v1 has no client-streaming calls


def _wrap_unary(method: str, behaviour: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: aio.ServicerContext) -> Any:
        record = _Call(method)
        try:
            result = behaviour(request, context)
            if asyncio.iscoroutine(result):
                result = await result
        except aio.AbortError:
            record.done(context.code() or grpc.StatusCode.UNKNOWN, context.details() or "")
            raise
        except asyncio.CancelledError:
            record.done(grpc.StatusCode.CANCELLED, "the client went away or its deadline passed")
            raise
        except Exception as error:  # noqa: BLE001 - mapped and logged, never swallowed
            await record.fail(context, error)
        record.done(grpc.StatusCode.OK)
        return result

    return call


def _wrap_stream(method: str, behaviour: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        record = _Call(method)
        try:
            responses = behaviour(request, context)
            if asyncio.iscoroutine(responses):  # a handler that fails before it becomes a stream
                responses = await responses
            # Closed when the call ends, however it ends: the handler's clean-up runs now, not at GC.
            async with contextlib.aclosing(responses):
                async for response in responses:
                    yield response
        except aio.AbortError:
            record.done(context.code() or grpc.StatusCode.UNKNOWN, context.details() or "")
            raise
        except asyncio.CancelledError:
            record.done(grpc.StatusCode.CANCELLED, "the client went away")
            raise
        except Exception as error:  # noqa: BLE001
            await record.fail(context, error)
        record.done(grpc.StatusCode.OK)

    return call
