"""Options of the whole suite, and the process settings of a qmprt server (tests run servers in-process)."""

from __future__ import annotations

import pytest

from qmprt.cri import disable_grpc_fork_support

disable_grpc_fork_support()  # before any test module imports grpc, as qmprt.cli.main does for serve


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-iterations", type=int, default=6,
        help="SIGKILLs of qmprt serve in the crash-safety test (default 6; more on a benchmark machine)",
    )


@pytest.fixture
def chaos_iterations(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--chaos-iterations"))
