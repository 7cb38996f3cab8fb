"""Errors raised by the cgroup mechanism.

    CgroupError               anything that went wrong managing a cgroup
    ├── CgroupNotFound        the cgroup (or one of its directories) does not exist
    ├── CgroupBusy            processes are still in it when it must be empty
    └── CgroupUnavailable     no usable cgroup filesystem or a needed controller is missing

``CgroupError`` derives from ``Exception`` for now; re-parenting it onto ``qmprt.errors.QmprtError``
is meant to be the one-line change in this file. Every error caused by an ``OSError`` keeps it as
``__cause__``.
"""

from __future__ import annotations


class CgroupError(Exception):
    """A cgroup operation failed."""


class CgroupNotFound(CgroupError):
    """The cgroup, or one of its per-hierarchy directories, does not exist."""


class CgroupBusy(CgroupError):
    """The cgroup still holds processes (or child cgroups) when it was expected to be empty."""


class CgroupUnavailable(CgroupError):
    """No usable cgroup filesystem was found, or a controller the request needs is not available."""
