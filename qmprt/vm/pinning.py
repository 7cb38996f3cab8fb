"""Pin an emulator's threads to host CPUs: vCPU threads one-to-one when the cpuset allows it.

The policy (issue 7): when the cpuset has exactly as many CPUs as the VM has vCPUs, vCPU *i* runs on
the cpuset's *i*-th CPU and every other thread of QEMU (main loop, RCU, I/O workers) on the CPUs left
over, or on the whole cpuset when none are left; when the counts differ, every thread may use the whole
cpuset. vCPU thread ids come from QMP ``query-cpus-fast``; the other threads from ``/proc/<pid>/task``.

qmprt sets the affinity from its own process with ``sched_setaffinity(tid)``: QEMU's ``-sandbox
resourcecontrol=deny`` forbids QEMU itself to change affinities, not its parent. A thread QEMU starts
later inherits the affinity of the thread that starts it (the main loop's, for I/O workers).

The affinity must fit inside the VM's cgroup cpuset: widen the cgroup before pinning to new CPUs and
narrow it afterwards, or the kernel refuses (EINVAL) or silently narrows the mask.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qmprt.errors import FailedPrecondition, InvalidArgument, VMError
from qmprt.vm.monitor import VCPU

log = logging.getLogger(__name__)

MAX_ID = 8191  # the kernel's largest NR_CPUS
_LIST_ITEM = re.compile(r"(\d+)(?:-(\d+))?")
PIN_ROUNDS = 3  # threads can appear while pinning: list the tasks again, at most this often

Role = Literal["vcpu", "emulator"]
PinMode = Literal["one-to-one", "shared"]


def parse_id_list(text: str, what: str = "CPU") -> tuple[int, ...]:
    """The kernel's list format (``"0-3,6"``) as sorted ids; the error names the part that is wrong."""
    if not text.strip():
        raise InvalidArgument(f"the {what} list is empty")
    ids: set[int] = set()
    for part in text.strip().split(","):
        match = _LIST_ITEM.fullmatch(part.strip())
        if match is None:
            raise InvalidArgument(f"{what} list {text.strip()!r}: {part!r} is neither a number nor a range a-b")
        first = int(match[1])
        last = int(match[2]) if match[2] is not None else first
        if last < first:
            raise InvalidArgument(f"{what} list {text.strip()!r}: the range {part.strip()!r} runs backwards")
        if last > MAX_ID:
            raise InvalidArgument(f"{what} list {text.strip()!r}: {last} is larger than any {what} id can be")
        ids.update(range(first, last + 1))
    return tuple(sorted(ids))


def format_id_list(ids: Iterable[int]) -> str:
    """``(0, 1, 2, 3, 6)`` → ``"0-3,6"``."""
    ranges: list[list[int]] = []
    for value in sorted(set(ids)):
        if ranges and value == ranges[-1][1] + 1:
            ranges[-1][1] = value
        else:
            ranges.append([value, value])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)


def online_cpus(sys_root: Path = Path("/sys")) -> tuple[int, ...]:
    return parse_id_list((sys_root / "devices/system/cpu/online").read_text(), "online CPU")


def parse_cpuset(text: str, online: Sequence[int] | None = None) -> tuple[int, ...]:
    """A cpuset string as CPU ids, each of which must be online on this host."""
    cpus = parse_id_list(text, "cpuset")
    online = online_cpus() if online is None else online
    missing = sorted(set(cpus) - set(online))
    if missing:
        raise InvalidArgument(
            f"cpuset {text.strip()!r}: CPU {format_id_list(missing)} is not online here "
            f"(online: {format_id_list(online)})"
        )
    return cpus


@dataclass(frozen=True)
class ThreadPin:
    thread_id: int
    name: str  # the thread's comm: "CPU 0/TCG", "qemu-system-x86", "call_rcu", "worker" …
    role: Role
    vcpu: int | None
    cpus: tuple[int, ...]
    changed: bool = False  # False: it was on these CPUs already


@dataclass(frozen=True)
class PinReport:
    """Which thread went where, and how long it took (for logs, the benchmark and tests)."""

    cpuset: tuple[int, ...]
    mode: PinMode
    threads: tuple[ThreadPin, ...]
    seconds: float

    @property
    def changed(self) -> int:
        return sum(1 for thread in self.threads if thread.changed)

    def summary(self) -> str:
        placed = ", ".join(
            f"{thread.name}({thread.thread_id})→{format_id_list(thread.cpus)}" for thread in self.threads
        )
        return (
            f"{self.mode} on {format_id_list(self.cpuset)}: {placed}; "
            f"{self.changed} changed in {self.seconds * 1000:.1f} ms"
        )


def plan_affinity(
    vcpus: Sequence[VCPU], thread_ids: Iterable[int], cpuset: Sequence[int]
) -> tuple[PinMode, dict[int, tuple[Role, int | None, tuple[int, ...]]]]:
    """Where each thread goes: thread id → (role, vCPU index, CPUs). Pure; the policy is in the module doc.

    One-to-one needs a thread per vCPU: single-threaded TCG runs every vCPU on one thread, which then
    shares the cpuset like everything else.
    """
    cpus = tuple(sorted(set(cpuset)))
    if not cpus:
        raise InvalidArgument("cannot pin to an empty cpuset")
    ordered = sorted(vcpus, key=lambda vcpu: vcpu.index)
    distinct_threads = len({vcpu.thread_id for vcpu in ordered}) == len(ordered)
    plan: dict[int, tuple[Role, int | None, tuple[int, ...]]] = {}
    mode: PinMode = "shared"
    if ordered and distinct_threads and len(cpus) == len(ordered):
        mode = "one-to-one"
        for vcpu, cpu in zip(ordered, cpus):
            plan[vcpu.thread_id] = ("vcpu", vcpu.index, (cpu,))
        emulator_cpus = cpus[len(ordered):] or cpus
    else:
        for vcpu in ordered:
            plan.setdefault(vcpu.thread_id, ("vcpu", vcpu.index, cpus))
        emulator_cpus = cpus
    for thread_id in thread_ids:
        plan.setdefault(thread_id, ("emulator", None, emulator_cpus))
    return mode, plan


def _task_ids(pid: int) -> list[int]:
    try:
        return sorted(int(entry) for entry in os.listdir(f"/proc/{pid}/task"))
    except FileNotFoundError as err:
        raise FailedPrecondition(f"QEMU (pid {pid}) is gone: nothing to pin") from err


def _thread_name(pid: int, thread_id: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{thread_id}/comm").read_text().strip()
    except OSError:
        return "?"


def _apply(pid: int, thread_id: int, cpus: tuple[int, ...]) -> bool | None:
    """Set one thread's affinity; True if it changed, False if it was right already, None if it ended."""
    wanted = set(cpus)
    try:
        if os.sched_getaffinity(thread_id) == wanted:
            return False
        os.sched_setaffinity(thread_id, wanted)
    except ProcessLookupError:
        return None
    except PermissionError as err:
        raise VMError(f"may not set the CPU affinity of QEMU (pid {pid}) thread {thread_id}: {err}") from err
    except OSError as err:
        raise InvalidArgument(
            f"cannot pin QEMU (pid {pid}) thread {thread_id} to CPUs {format_id_list(cpus)}: {err} "
            "(are they inside the VM's cgroup cpuset?)"
        ) from err
    effective = os.sched_getaffinity(thread_id)
    if effective != wanted:
        log.warning("QEMU thread %d runs on CPUs %s, not %s (the cgroup's cpuset narrowed it)",
                    thread_id, format_id_list(effective), format_id_list(cpus))
    return True


def pin_threads(pid: int, vcpus: Sequence[VCPU], cpuset: str | Sequence[int]) -> PinReport:
    """Pin every thread of QEMU process ``pid``; idempotent (a thread already in place is left alone)."""
    begin = time.monotonic()
    cpus = parse_cpuset(cpuset) if isinstance(cpuset, str) else tuple(sorted(set(cpuset)))
    vcpu_threads = {vcpu.thread_id for vcpu in vcpus}
    placed: dict[int, ThreadPin] = {}
    mode: PinMode = "shared"
    for _ in range(PIN_ROUNDS):
        task_ids = _task_ids(pid)
        missing = vcpu_threads - set(task_ids)
        if missing:
            raise FailedPrecondition(f"QEMU (pid {pid}) has no thread {sorted(missing)}: its vCPUs are gone")
        mode, plan = plan_affinity(vcpus, task_ids, cpus)
        fresh = [thread_id for thread_id in task_ids if thread_id not in placed]
        if not fresh:
            break
        for thread_id in fresh:
            role, vcpu_index, thread_cpus = plan[thread_id]
            changed = _apply(pid, thread_id, thread_cpus)
            if changed is not None:
                placed[thread_id] = ThreadPin(
                    thread_id, _thread_name(pid, thread_id), role, vcpu_index, thread_cpus, changed
                )
    vcpus_first = sorted(placed.values(), key=lambda thread: (thread.role != "vcpu", thread.vcpu or 0, thread.thread_id))
    threads = tuple(vcpus_first)
    return PinReport(cpus, mode, threads, time.monotonic() - begin)
