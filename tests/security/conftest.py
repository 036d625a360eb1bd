"""Attack-suite fixtures and the session summary.

- the gateway fixtures of ``tests/unit/sandbox/conftest.py`` (``pool``, ``gateway``,
  ``views``, ``disclosure``: the defaults, model fitting allowed);
- ``plain`` / ``plain_without``: plain DuckDB over each pool's Parquet (``oracle.Truth``),
  and ``truth``: the values attacks try to learn, recomputed there;
- ``pool_without`` / ``views_without``: the neighbouring pool, every row of the singled-out
  patient removed, and its views (an answer/refusal pattern must not differ between them);
- ``views_covered`` / ``views_covered_without``: views of an agreement that covers only
  some columns (``catalogue.COVERED``), over both pools;
- ``asker`` / ``asker_without`` / ``asker_covered`` / ``asker_covered_without``.

At the end the session prints ``N attacks, M leaks`` (noise on) and the control run's count.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.gateway import Source
from tests.security import tally
from tests.security.catalogue import COVERED
from tests.security.oracle import Asker, Truth, without_patient
from tests.unit.sandbox.conftest import disclosure, gateway, pool, views

__all__ = ["disclosure", "gateway", "pool", "views"]


@pytest.fixture(scope="session")
def plain(pool) -> Truth:
    return Truth(pool)


@pytest.fixture(scope="session")
def truth(plain) -> dict[str, float]:
    return plain.targets()


@pytest.fixture(scope="session")
def secret_id(plain) -> str:
    return plain.secret_id()


@pytest.fixture(scope="session")
def pool_without(pool, secret_id, tmp_path_factory: pytest.TempPathFactory):
    return without_patient(pool, Path(tmp_path_factory.mktemp("pool-without")), secret_id, Source)


@pytest.fixture(scope="session")
def plain_without(pool_without) -> Truth:
    return Truth(pool_without)


@pytest.fixture(scope="session")
def views_without(gateway, pool_without):
    return gateway.views("agreement-without", pool_without)


@pytest.fixture(scope="session")
def views_covered(gateway, pool):
    return gateway.views("agreement-covered", pool, columns=COVERED)


@pytest.fixture(scope="session")
def views_covered_without(gateway, pool_without):
    return gateway.views("agreement-covered-without", pool_without, columns=COVERED)


@pytest.fixture
def asker(gateway, views, disclosure) -> Asker:
    return Asker(gateway, views, disclosure)


@pytest.fixture
def asker_without(gateway, views_without, disclosure) -> Asker:
    return Asker(gateway, views_without, disclosure)


@pytest.fixture
def asker_covered(gateway, views_covered, disclosure) -> Asker:
    return Asker(gateway, views_covered, disclosure)


@pytest.fixture
def asker_covered_without(gateway, views_covered_without, disclosure) -> Asker:
    return Asker(gateway, views_covered_without, disclosure)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if tally.ATTACKS:
        terminalreporter.write_line(f"{tally.ATTACKS} attacks, {tally.LEAKS} leaks")
    if tally.RELEASE_ATTACKS:
        terminalreporter.write_line(
            f"through release: {tally.RELEASE_ATTACKS} attacks, {tally.RELEASE_WARNED} "
            f"recovered but warned of, {tally.RELEASE_SILENT} silent leaks"
        )
    if tally.CONTROL_ATTACKS:
        terminalreporter.write_line(
            f"control (noise off): {tally.CONTROL_LEAKS} of {tally.CONTROL_ATTACKS} "
            "numeric attacks leak"
        )
