"""Attack-suite fixtures: the gateway fixtures of ``tests/unit/sandbox/conftest.py`` (``pool``,
``gateway``, ``views``, ``disclosure``), an unlocked ``oracle`` connection over the same
Parquet that checks answers independently, and the ``N attacks, 0 leaks`` summary line."""

from __future__ import annotations

import pytest

from tests.security import tally
from tests.unit.sandbox.conftest import disclosure, gateway, pool, views

__all__ = ["disclosure", "gateway", "pool", "views"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if tally.ATTACKS:
        terminalreporter.write_line(f"{tally.ATTACKS} attacks, {tally.LEAKS} leaks")
