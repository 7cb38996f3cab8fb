"""Errors raised by the cgroup mechanism.

    CgroupError               anything that went wrong managing a cgroup
    ├── CgroupNotFound        the cgroup (or one of its directories) does not exist
    ├── CgroupBusy            processes are still in it when it must be empty
    └── CgroupUnavailable     no usable cgroup filesystem or a needed controller is missing

``CgroupError`` is ``qmprt.errors.CgroupFailure`` (an internal error); ``CgroupNotFound`` is also a
``NotFound`` and ``CgroupBusy`` a ``FailedPrecondition``, so the CRI layer maps them without knowing
cgroups. Every error caused by an ``OSError`` keeps it as ``__cause__``.
"""

from __future__ import annotations

from qmprt.errors import CgroupFailure, FailedPrecondition, NotFound


class CgroupError(CgroupFailure):
    """A cgroup operation failed."""


class CgroupNotFound(CgroupError, NotFound):
    """The cgroup, or one of its per-hierarchy directories, does not exist."""


class CgroupBusy(CgroupError, FailedPrecondition):
    """The cgroup still holds processes (or child cgroups) when it was expected to be empty."""


class CgroupUnavailable(CgroupError):
    """No usable cgroup filesystem was found, or a controller the request needs is not available."""
