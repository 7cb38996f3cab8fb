"""Pinning: cpuset strings, the placement policy, and affinities set on a real (non-QEMU) process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qmprt.errors import FailedPrecondition, InvalidArgument
from qmprt.vm.monitor import VCPU
from qmprt.vm.pinning import format_id_list, parse_cpuset, parse_id_list, pin_threads, plan_affinity


@pytest.mark.parametrize(
    ("text", "ids"),
    [("0", (0,)), ("0-3,6", (0, 1, 2, 3, 6)), (" 6,0-1\n", (0, 1, 6)), ("2-2,1", (1, 2))],
    ids=["one", "range-and-one", "whitespace-unsorted", "degenerate-range"],
)
def test_id_lists_parse(text: str, ids: tuple[int, ...]) -> None:
    assert parse_id_list(text) == ids
    assert parse_id_list(format_id_list(ids)) == ids


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "list is empty"),
        ("0-3,x", "'x' is neither a number nor a range"),
        ("0,,1", "'' is neither"),
        ("1-", "'1-' is neither"),
        ("3-1", "the range '3-1' runs backwards"),
        ("0-99999", "99999 is larger than any"),
    ],
    ids=["empty", "word", "empty-part", "open-range", "backwards", "huge"],
)
def test_bad_id_lists_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_id_list(text)


def test_format_compresses_ranges() -> None:
    assert format_id_list([6, 0, 1, 2, 3, 9, 10]) == "0-3,6,9-10"


def test_cpuset_must_be_online() -> None:
    assert parse_cpuset("0-1", online=(0, 1)) == (0, 1)
    with pytest.raises(InvalidArgument, match=r"CPU 4-5 is not online here \(online: 0-1\)"):
        parse_cpuset("0,4-5", online=(0, 1))


VCPUS = [VCPU(1, 102), VCPU(0, 101)]
THREADS = [100, 101, 102, 103]


def test_one_to_one_when_counts_match() -> None:
    mode, plan = plan_affinity(VCPUS, THREADS, (2, 5))
    assert mode == "one-to-one"
    assert plan == {
        101: ("vcpu", 0, (2,)),
        102: ("vcpu", 1, (5,)),
        100: ("emulator", None, (2, 5)),  # no CPU is left over, so the emulator shares the cpuset
        103: ("emulator", None, (2, 5)),
    }


@pytest.mark.parametrize(
    ("vcpus", "cpus"),
    [(VCPUS, (0,)), (VCPUS, (0, 1, 2)), ([VCPU(0, 100), VCPU(1, 100)], (0, 1))],
    ids=["fewer-cpus", "more-cpus", "single-threaded-tcg"],
)
def test_shared_otherwise(vcpus: list[VCPU], cpus: tuple[int, ...]) -> None:
    mode, plan = plan_affinity(vcpus, THREADS, cpus)
    assert mode == "shared"
    assert {thread_cpus for _, _, thread_cpus in plan.values()} == {cpus}
    assert set(plan) == set(THREADS)


@pytest.fixture
def two_threads() -> Iterator[tuple[int, int]]:
    """A child process with a main thread and one more: (pid, the other thread's id)."""
    program = "import threading, time; threading.Thread(target=time.sleep, args=(60,)).start(); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", program])
    try:
        deadline = time.monotonic() + 10
        while len(os.listdir(f"/proc/{child.pid}/task")) < 2:
            assert time.monotonic() < deadline, "the child never started its thread"
            time.sleep(0.01)
        other = next(int(tid) for tid in os.listdir(f"/proc/{child.pid}/task") if int(tid) != child.pid)
        yield child.pid, other
    finally:
        child.kill()
        child.wait()


def _allowed(pid: int, tid: int) -> str:
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_pin_threads_sets_and_keeps_affinities(two_threads: tuple[int, int]) -> None:
    pid, other = two_threads
    cpus = sorted(os.sched_getaffinity(0))[:2]
    report = pin_threads(pid, [VCPU(0, other)], [cpus[1]])
    assert report.mode == "one-to-one" and report.changed == 2
    assert (_allowed(pid, other), _allowed(pid, pid)) == (str(cpus[1]), str(cpus[1]))
    assert pin_threads(pid, [VCPU(0, other)], [cpus[1]]).changed == 0  # idempotent

    report = pin_threads(pid, [VCPU(0, other)], cpus)
    assert report.mode == "shared"
    assert {thread.thread_id: thread.role for thread in report.threads} == {other: "vcpu", pid: "emulator"}
    assert _allowed(pid, other) == _allowed(pid, pid) == format_id_list(cpus)


def test_pin_threads_of_a_process_that_is_gone() -> None:
    child = subprocess.Popen(["true"])
    child.wait()
    with pytest.raises(FailedPrecondition, match="is gone"):
        pin_threads(child.pid, [VCPU(0, child.pid)], [0])
