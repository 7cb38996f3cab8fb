"""The benchmark scripts still import and parse their options against today's qmprt (nothing else runs
them in CI: a renamed class would otherwise break them unnoticed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"


def test_every_benchmark_script_answers_help() -> None:
    scripts = sorted(path for path in BENCH.glob("*.py") if "def main(" in path.read_text())
    assert len(scripts) >= 8, scripts
    program = (
        "import sys, runpy\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "for script in sys.argv[1:]:\n"
        "    sys.argv = [script, '--help']\n"
        "    try:\n"
        "        runpy.run_path(script, run_name='__main__')\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code in (0, None), (script, exit.code)\n"
    )
    done = subprocess.run([sys.executable, "-c", program, *map(str, scripts)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("usage:") == len(scripts), done.stdout[-3000:]
