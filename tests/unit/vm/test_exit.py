import pytest

from qmprt.vm.config import ShutdownStep
from qmprt.vm.exits import classify_exit

BASE = dict(
    returncode=None, shutdown_reason=None, shutdown_by_guest=False, panicked=False,
    oom_kills=0, stop_requested=False, shutdown_step=ShutdownStep.NONE,
)


@pytest.mark.parametrize(
    ("seen", "code", "reason", "in_message"),
    [
        ({"returncode": 0, "shutdown_reason": "guest-shutdown", "shutdown_by_guest": True}, 0, "Completed", "powered off"),
        ({"returncode": -9}, 137, "Error", "SIGKILL"),
        ({"returncode": 1, "panicked": True, "shutdown_reason": "guest-panic"}, 1, "Error", "panicked"),
        ({"returncode": -9, "oom_kills": 1}, 137, "OOMKilled", "memory limit"),
        ({"returncode": 0, "stop_requested": True, "shutdown_step": ShutdownStep.POWERDOWN,
          "shutdown_reason": "guest-shutdown", "shutdown_by_guest": True}, 0, "Completed", "powered off"),
        ({"returncode": 0, "stop_requested": True, "shutdown_step": ShutdownStep.QUIT,
          "shutdown_reason": "host-qmp-quit"}, 137, "Error", "QMP quit"),
        ({"returncode": -9, "stop_requested": True, "shutdown_step": ShutdownStep.KILL}, 137, "Error", "SIGKILL"),
        ({"returncode": 0, "shutdown_reason": "host-signal"}, 143, "Error", "signal"),
        ({"returncode": 1}, 1, "Error", "status 1"),
        ({}, 255, "Error", "not watching"),
        ({"shutdown_reason": "guest-shutdown", "shutdown_by_guest": True}, 0, "Completed", "powered off"),
    ],
    ids=["guest-poweroff", "sigkill", "panic", "oom", "graceful-stop", "stop-by-quit", "stop-by-kill",
         "outside-signal", "qemu-error", "unwatched-death", "unwatched-poweroff"],
)
def test_classify_exit(seen: dict[str, object], code: int, reason: str, in_message: str) -> None:
    verdict = classify_exit(**{**BASE, **seen})  # type: ignore[arg-type]
    assert (verdict.exit_code, verdict.reason) == (code, reason)
    assert in_message in verdict.message


@pytest.mark.parametrize(
    ("console", "qemu_log", "expected"),
    [
        (b"...\r\n[    3.1] reboot: Power down\r\n", "", {"shutdown_reason": "guest-shutdown", "shutdown_by_guest": True}),
        (b"[ 2.0] Kernel panic - not syncing: sysrq triggered crash\r\n", "", {"panicked": True, "shutdown_reason": "guest-panic"}),
        (b"booting\r\n", "qemu-system-x86_64: terminating on signal 15 from pid 42", {"shutdown_reason": "host-signal"}),
        (b"booting\r\n", "", {}),
    ],
    ids=["poweroff", "panic", "signal", "no-evidence"],
)
def test_infer_unwatched_exit(console: bytes, qemu_log: str, expected: dict[str, object]) -> None:
    from qmprt.vm.exits import infer_unwatched_exit

    assert infer_unwatched_exit(console, qemu_log) == expected


MARKER = "qmprt: command exited with status "
POWER_OFF = {"returncode": 0, "shutdown_reason": "guest-shutdown", "shutdown_by_guest": True}


@pytest.mark.parametrize(
    ("console", "marker", "code", "reason"),
    [
        (b"hi\r\nqmprt: command exited with status 3\r\n[ 4.0] reboot: Power down\r\n", MARKER, 3, "Error"),
        (b"qmprt: command exited with status 0\n", MARKER, 0, "Completed"),
        (b"qmprt: command exited with status 1\r\nqmprt: command exited with status 7\r\n", MARKER, 7, "Error"),
        (b"qmprt: command exited with status 3\r\n", "", 0, "Completed"),
        (b"echo qmprt: command exited with status 3\r\n", MARKER, 0, "Completed"),
        (b"qmprt: command exited with status 999\r\n", MARKER, 0, "Completed"),
        (b"no marker\r\n", MARKER, 0, "Completed"),
    ],
    ids=["job-failed", "job-done", "last-marker-wins", "not-a-job", "marker-mid-line", "out-of-range", "no-marker"],
)
def test_a_jobs_power_off_takes_the_reported_status(console: bytes, marker: str, code: int, reason: str) -> None:
    verdict = classify_exit(**{**BASE, **POWER_OFF}, console_tail=console, exit_status_marker=marker)  # type: ignore[arg-type]
    assert (verdict.exit_code, verdict.reason) == (code, reason)


def test_the_marker_does_not_count_when_qemu_was_killed() -> None:
    verdict = classify_exit(
        **{**BASE, "returncode": -9}, console_tail=b"qmprt: command exited with status 0\n", exit_status_marker=MARKER
    )  # type: ignore[arg-type]
    assert verdict.exit_code == 137
