"""Options of the whole suite."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-iterations", type=int, default=6,
        help="SIGKILLs of qmprt serve in the crash-safety test (default 6; more on a benchmark machine)",
    )


@pytest.fixture
def chaos_iterations(request: pytest.FixtureRequest) -> int:
    return int(request.config.getoption("--chaos-iterations"))
