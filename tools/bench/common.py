"""What the benchmark scripts share: statistics, the environment a figure was taken in, tables,
timing a file's first output, and the services a benchmark starts for itself (stopped by PID).

Importing this module puts the repository's root on ``sys.path`` (the scripts run from ``tools/bench``).
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from qmprt.vm import accel  # noqa: E402


# -- statistics -----------------------------------------------------------------------------------------
def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def summary(values: Sequence[float], *, samples: bool = True) -> dict[str, Any]:
    """Median, p95, p99, n (and the samples) of a list of measurements."""
    figures: dict[str, Any] = {
        "median": statistics.median(values),
        "p95": percentile(values, 0.95),
        "p99": percentile(values, 0.99),
        "n": len(values),
    }
    if samples:
        figures["samples"] = [round(value, 3) for value in values]
    return figures


def summaries(rows: Sequence[dict[str, float]], *, samples: bool = True) -> dict[str, dict[str, Any]]:
    """``summary`` of each key of a list of same-keyed measurement rows."""
    return {key: summary([row[key] for row in rows], samples=samples) for key in rows[0]}


# -- where a figure was taken ----------------------------------------------------------------------------
def qemu_version(binary: str = "qemu-system-x86_64") -> str:
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def environment() -> dict[str, Any]:
    """Accelerator, QEMU version and machine: named beside every figure."""
    choice = accel.detect()
    model = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "accelerator": choice.accel,
        "accelerator_reason": choice.reason,
        "qemu": qemu_version(),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs ({model}), {psutil.virtual_memory().total / (1 << 30):.0f} GiB, "
        f"Linux {platform.release()}",
        "load_average": list(os.getloadavg()),
    }


def headline(env: dict[str, Any]) -> str:
    return f"{env['accelerator']} ({env['accelerator_reason']}); {env['qemu']}; {env['machine']}"


# -- tables ---------------------------------------------------------------------------------------------
def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """Left-aligned first column, right-aligned others; floats with one decimal, None as '-'."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    text = [[cell(value) for value in row] for row in rows]
    widths = [max(len(str(header)), *(len(row[i]) for row in text)) for i, header in enumerate(headers)]
    lines = []
    for row in [list(headers), *text]:
        first = f"{row[0]:<{widths[0]}}"
        rest = "".join(f"  {value:>{widths[i + 1]}}" for i, value in enumerate(row[1:]))
        lines.append(indent + first + rest)
    return "\n".join(lines)


# -- timing a file's output -----------------------------------------------------------------------------
class OutputWatch:
    """Polls a file (which may not exist yet) in a thread and records when it first had bytes and when
    ``marker`` first appeared in it, as monotonic seconds and wall-clock nanoseconds."""

    def __init__(self, path: Path, marker: str, poll_s: float = 0.005) -> None:
        self.path = path
        self.marker = marker.encode()
        self.poll_s = poll_s
        self.first_output: float | None = None
        self.first_output_ns: int | None = None
        self.marker_seen: float | None = None
        self.marker_seen_ns: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch {path.name}", daemon=True)

    def start(self) -> OutputWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        size = 0
        while not self._stop.is_set():
            try:
                new_size = os.stat(self.path).st_size
            except FileNotFoundError:
                new_size = 0
            now, now_ns = time.monotonic(), time.time_ns()
            if new_size and self.first_output is None:
                self.first_output, self.first_output_ns = now, now_ns
            if new_size != size:
                size = new_size
                with contextlib.suppress(FileNotFoundError):
                    if self.marker in self.path.read_bytes():
                        self.marker_seen, self.marker_seen_ns = now, now_ns
                        return
            self._stop.wait(self.poll_s)

    def wait(self, timeout: float) -> float:
        """Monotonic time the marker appeared; TimeoutError after ``timeout`` seconds."""
        self._thread.join(timeout)
        if self.marker_seen is None:
            self.stop()
            raise TimeoutError(f"{self.marker.decode()!r} did not appear in {self.path} within {timeout:.0f} s")
        return self.marker_seen

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(1)


# -- services and processes the benchmark starts --------------------------------------------------------
class Daemon:
    """A service started by the benchmark for itself, output in a file, stopped by its PID only."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready: Callable[[], bool], timeout: float = 60) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} was not ready within {timeout:.0f} s: {self.tail()}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self, timeout: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def processes_mentioning(text: str) -> list[psutil.Process]:
    """Processes whose command line contains ``text`` (a temp dir of this run: only ours match)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(text in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


def kill_processes_mentioning(text: str) -> int:
    """SIGKILL every process whose command line names ``text``; returns how many."""
    victims = [p for p in processes_mentioning(text) if p.pid != os.getpid()]
    for process in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(victims, timeout=10)
    return len(victims)


def unmount_below(directory: Path) -> None:
    """Lazily unmount whatever is mounted below ``directory`` (deepest first)."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4].replace("\\040", " ")
        if mount_point.startswith(str(directory) + "/"):
            mounts.append(mount_point)
    for mount_point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount_point], capture_output=True)


def error_text(err: BaseException) -> str:
    """An exception as one report line: its type and message (gRPC errors: code and details)."""
    details = getattr(err, "details", None)
    code = getattr(err, "code", None)
    if callable(details) and callable(code):
        return f"{type(err).__name__} {code()}: {details()}"
    return f"{type(err).__name__}: {err}"
