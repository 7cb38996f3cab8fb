"""qmprt's exceptions: one root, a small tree, causes kept with ``raise ... from err``.

::

    QmprtError
     ├── InvalidArgument        the caller's request is malformed or out of range
     ├── NotFound               the named object does not exist
     ├── AlreadyExists          a name or id is taken
     ├── FailedPrecondition     the object is in the wrong state for the request
     ├── ResourceExhausted      a limit (memory, disk, ids) does not allow it
     ├── DeadlineExceeded       a bounded wait ran out
     ├── Unavailable            a dependency (QMP, the guest agent, a plugin) did not answer
 ├── Unauthenticated        a registry wants credentials the request did not bring
 ├── PermissionDenied       a registry refused the credentials, or its authentication is unusable
     └── InternalError          qmprt or a mechanism below it failed
          ├── VMError           QEMU failed to start or misbehaved
          │    └── ShutdownError  a staged shutdown needed a harder step than asked for
          └── CgroupFailure     a cgroup operation failed

The CRI layer maps each class to one gRPC status code in one place; mechanisms raise these classes
and never import grpc.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator


class QmprtError(Exception):
    """Root of every error qmprt raises on purpose."""


class InvalidArgument(QmprtError):
    pass


class NotFound(QmprtError):
    pass


class AlreadyExists(QmprtError):
    pass


class FailedPrecondition(QmprtError):
    pass


class ResourceExhausted(QmprtError):
    pass


class DeadlineExceeded(QmprtError):
    pass


class Unavailable(QmprtError):
    pass


class Unauthenticated(QmprtError):
    pass


class PermissionDenied(QmprtError):
    pass


class InternalError(QmprtError):
    pass


class VMError(InternalError):
    """QEMU could not be started, or stopped answering in a way qmprt cannot recover from."""


class ShutdownError(VMError):
    """A staged shutdown had to go further than the caller allowed; ``step`` says how far it went."""

    def __init__(self, message: str, step: str) -> None:
        super().__init__(message)
        self.step = step


class CgroupFailure(InternalError):
    pass


@contextlib.contextmanager
def best_effort(logger: logging.Logger, what: str) -> Iterator[None]:
    """For cleanup steps that must not stop the ones after them: a failure is logged, not raised.

    Never silent: a cgroup or file that could not be removed shows in the log with the reason.
    """
    try:
        yield
    except Exception as err:  # noqa: BLE001 - logged; the caller goes on with the next step
        logger.warning("%s failed: %s", what, err)
