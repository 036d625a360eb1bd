"""The engine's lock-down, views and time limit."""

from __future__ import annotations

import duckdb
import pytest

from contracts.agreements import Disclosure
from sandbox.gateway import Gateway, QueryFailed, QueryRejected, QueryTimeout


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM glob('/*')",
        "COPY (SELECT 1) TO '/tmp/cleanroom-gateway-leak.csv'",
        "ATTACH '/tmp/cleanroom-gateway.db'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SET lock_configuration = false",
    ],
)
def test_connection_refuses_files_extensions_and_settings(views, statement) -> None:
    """Even SQL that never went through the checker cannot read files or unlock itself."""
    with pytest.raises(duckdb.Error):
        views.connection.cursor().execute(statement).fetchall()


def test_views_hold_only_the_signing_institutions(views) -> None:
    rows = (
        views.connection.cursor()
        .execute("SELECT DISTINCT institution FROM episode ORDER BY 1")
        .fetchall()
    )
    assert rows == [("inst_a",), ("inst_b",), ("inst_c",)]
    assert views.names == {"episode", "collection", "batch", "custody_event"}
    assert "coi_id" in views.identifiers["episode"]


def test_views_are_rebuilt_when_sources_change(gateway, pool) -> None:
    first = gateway.views("agreement-2", pool)
    withdrawn = {t: s[:2] for t, s in pool.items()}
    second = gateway.views("agreement-2", withdrawn)
    assert second is not first
    count = second.connection.cursor().execute("SELECT COUNT(*) FROM episode").fetchone()
    assert count == (300,)


def test_timeout_interrupts_a_long_query(pool) -> None:
    slow = Gateway(timeout=0.2)
    views = slow.views("slow", pool)
    try:
        with pytest.raises(QueryTimeout):
            slow.run(
                views,
                Disclosure(),
                "SELECT e.event, COUNT(*) FROM custody_event e JOIN custody_event f "
                "ON e.event = f.event JOIN custody_event g ON f.event = g.event GROUP BY e.event",
            )
    finally:
        slow.close()


def test_conversion_errors_do_not_quote_values(gateway, views) -> None:
    with pytest.raises(QueryFailed) as caught:
        gateway.run(views, Disclosure(), "SELECT SUM(CAST(site AS INTEGER)) FROM episode")
    assert "inst_" not in caught.value.message


def test_unknown_table_is_rejected(gateway, views) -> None:
    with pytest.raises(QueryRejected, match="not a view"):
        gateway.run(views, Disclosure(), "SELECT COUNT(*) FROM deviation")


def test_sources_behind_a_pyarrow_filesystem_are_registered(gateway, pool) -> None:
    """The S3 path (pyarrow filesystem, no DuckDB extension), exercised with a local one."""
    from pyarrow import fs

    from sandbox.gateway import Source

    local = fs.LocalFileSystem()
    tables = {"episode": [Source(s.path, s.institution, local) for s in pool["episode"]]}
    views = gateway.views("agreement-fs", tables)
    answer = gateway.run(views, Disclosure(), "SELECT sex, COUNT(*) FROM episode GROUP BY sex")
    assert sum(row[1] for row in answer.rows) in range(440, 461)


_OPEN = Disclosure(k=1, min_institutions=1, rounding_base=1, dominance_percent=100.0)


@pytest.mark.parametrize(
    "sql",
    [
        # Proportions and CASE/IF with constant outcomes are computed from branch counts.
        "SELECT sex, AVG(CASE WHEN bridging THEN 1 ELSE 0 END) AS p, "
        "SUM(CASE WHEN bridging THEN 2.5 WHEN age > 50 THEN -1 END) AS s, "
        "COUNT(CASE WHEN bridging THEN 1 END) AS c, AVG(IF(age > 40, 1, 0)) AS a "
        "FROM episode GROUP BY sex",
        "SELECT indication, AVG(CASE indication WHEN 'ALL' THEN 1 WHEN 'MM' THEN 0 END) AS p, "
        "VARIANCE(CASE WHEN bridging THEN 1 ELSE 0 END) AS v, COUNT(weight_kg) AS n "
        "FROM episode WHERE age > 30 AND prior_lines < 4 GROUP BY indication",
        "SELECT COUNT(*) AS n, SUM(CASE WHEN age > 200 THEN 1 END) AS none_, "
        "STDDEV_POP(weight_kg) AS sd FROM episode WHERE bridging",
        # Two tables: dominance per table takes the second pass.
        "SELECT e.sex, COUNT(*) AS n, AVG(c.cd3_yield) AS y, "
        "SUM(CASE WHEN c.fresh_or_cryo = 'fresh' THEN 1 ELSE 0 END) AS fresh "
        "FROM episode e JOIN collection c ON e.coi_id = c.coi_id GROUP BY e.sex",
    ],
)
def test_rewritten_answers_equal_the_plain_query(gateway, views, sql) -> None:
    """With disclosure control opened up, the rewrite's folded partials give what DuckDB
    gives for the researcher's own text on the same views."""
    answer = gateway.run(views, _OPEN, sql)
    _columns, expected = gateway.execute(views, sql)
    expected.sort(key=lambda row: tuple(str(v) for v in row))
    got = sorted(answer.rows, key=lambda row: tuple(str(v) for v in row))
    assert len(got) == len(expected) > 0
    for mine, theirs in zip(got, expected, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            if b is None or isinstance(b, str):
                assert a == b
            else:
                assert a == pytest.approx(float(b), rel=1e-9)
