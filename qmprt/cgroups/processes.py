"""Moving processes into cgroups and killing them: the parts v1 and v2 share."""

from __future__ import annotations

import os
import shlex
import signal
import time
from collections.abc import Callable, Sequence

EXEC_PREFIX_ARGV0 = "qmprt-cgexec"
"""``$0`` of the joining shell, so ``ps`` shows what the short-lived shell was for."""


def exec_prefix_for(procs_files: Sequence[str]) -> list[str]:
    """A ``/bin/sh -c`` prefix that writes its own pid to each ``procs_files`` entry, then execs "$@".

    The shell joins the cgroup(s) before ``exec``, so the program starts inside them, is never
    briefly outside, and keeps the pid ``Popen`` reported. If a write fails the shell exits non-zero
    without running the program.
    """
    join_commands = [f"echo $$ > {shlex.quote(procs_file)}" for procs_file in procs_files]
    script = " && ".join([*join_commands, 'exec "$@"'])
    return ["/bin/sh", "-c", script, EXEC_PREFIX_ARGV0]


def send_sigkill(pids: Sequence[int]) -> None:
    """SIGKILL each pid, ignoring the ones that are already gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_until_empty(list_pids: Callable[[], list[int]], max_rounds: int = 5) -> None:
    """SIGKILL what ``list_pids`` returns until a round finds no pid it has not signalled yet.

    For cgroups that can neither be killed atomically nor frozen: a process forking while we kill
    shows up as a new pid in the next round.
    """
    signalled: set[int] = set()
    for _ in range(max_rounds):
        new_pids = [pid for pid in list_pids() if pid not in signalled]
        if not new_pids:
            return
        send_sigkill(new_pids)
        signalled.update(new_pids)


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
