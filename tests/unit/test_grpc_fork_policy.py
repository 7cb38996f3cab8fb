"""gRPC's fork handlers are off in every qmprt process before grpc loads (``disable_grpc_fork_support``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python(code: str) -> str:
    env = {key: value for key, value in os.environ.items() if key != "GRPC_ENABLE_FORK_SUPPORT"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout.strip()


def test_importing_the_cli_loads_no_grpc_and_sets_nothing() -> None:
    code = "import os, sys, qmprt.cli, qmprt.cri; print('grpc' in sys.modules, os.environ.get('GRPC_ENABLE_FORK_SUPPORT'))"
    assert _python(code) == "False None"


def test_main_sets_the_policy_before_its_parser_loads_grpc() -> None:
    code = """
import os, sys
import qmprt.cli as cli
seen = []
real = cli.build_parser
def build_parser():
    seen.append(("grpc" in sys.modules, os.environ.get("GRPC_ENABLE_FORK_SUPPORT")))
    return real()
cli.build_parser = build_parser
try:
    cli.main(["serve", "--help"])
except SystemExit:
    pass
print(seen, "grpc" in sys.modules)
"""
    assert _python(code).splitlines()[-1] == "[(False, 'false')] True"


def test_an_explicit_setting_is_kept() -> None:
    code = "import os; os.environ['GRPC_ENABLE_FORK_SUPPORT'] = 'true'; from qmprt.cri import disable_grpc_fork_support as d; d(); print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])"
    assert _python(code) == "true"
