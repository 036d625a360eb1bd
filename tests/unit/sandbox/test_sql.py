"""The SQL checker's allow-list and the rewrite's shape."""

from __future__ import annotations

import duckdb
import pytest

from sandbox.gateway import QueryRejected, check_query, rewrite

VIEWS = {"episode", "collection"}
IDS = {"episode": {"coi_id"}, "collection": {"din", "coi_id"}}


def check(sql: str):
    return check_query(sql, VIEWS, IDS)


def test_grouped_aggregate_is_checked_into_keys_and_outputs() -> None:
    checked = check(
        "SELECT indication AS ind, sex, COUNT(*) AS n, AVG(weight_kg) "
        "FROM episode WHERE age > 30 GROUP BY ind, 2 ORDER BY n DESC LIMIT 3"
    )
    assert [o.name for o in checked.outputs] == ["ind", "sex", "n", "AVG(weight_kg)"]
    assert [o.key for o in checked.outputs] == [0, 1, None, None]
    assert [a.func for a in checked.aggregates] == ["count_star", "avg"]
    assert checked.order == ((2, True),)
    assert checked.limit == 3
    assert len(checked.conjuncts) == 1


def test_group_by_all_and_proportions() -> None:
    checked = check(
        "SELECT sex, AVG(CASE WHEN bridging THEN 1 ELSE 0 END) AS p FROM episode GROUP BY ALL"
    )
    assert checked.keys[0].sql() == "sex"
    (agg,) = checked.aggregates
    assert len(agg.selectors) == 1 and len(agg.selectors[0].branches) == 2


def test_join_on_pseudonymous_key_is_allowed() -> None:
    checked = check(
        "SELECT e.sex, AVG(c.cd3_yield) FROM episode e JOIN collection c ON e.coi_id = c.coi_id "
        "GROUP BY e.sex"
    )
    assert checked.tables == (("e", "episode"), ("c", "collection"))


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("SELECT * FROM episode", "SELECT *"),
        ("SELECT MIN(age) FROM episode", "MIN"),
        ("SELECT age FROM episode", "non-aggregated column"),
        ("SELECT COUNT(*) FROM read_csv('/etc/passwd')", "read_csv"),
        ("SELECT COUNT(*) FROM episode; SELECT 1", "multiple statements"),
        ("SELECT sex, COUNT(*) FROM episode GROUP BY coi_id, sex", "identifier column"),
        ("SELECT COUNT(*) FROM episode HAVING COUNT(*) > 1", "HAVING"),
        ("SELECT COUNT(*) FROM main.episode", "qualified name"),
        ("WITH x AS (SELECT 1) SELECT COUNT(*) FROM episode", "CTE"),
        ("SELECT COUNT(DISTINCT sex) FROM episode", "DISTINCT"),
    ],
)
def test_refusals_name_the_construct(sql: str, construct: str) -> None:
    with pytest.raises(QueryRejected) as caught:
        check(sql)
    assert construct.lower() in caught.value.construct.lower()
    assert caught.value.reason


def test_rewrite_runs_and_carries_disclosure_columns() -> None:
    checked = check("SELECT sex, COUNT(*) AS n, SUM(age) FROM episode WHERE age > 1 GROUP BY sex")
    rewritten = rewrite(checked, dominance_n=2, rounding_base=5)
    con = duckdb.connect()
    con.execute(
        "CREATE VIEW episode AS SELECT * FROM (VALUES ('f', 30, 'a', 'p1'), ('f', 40, 'b', 'p2'), "
        "('f', 45, 'b', 'p2'), ('m', 50, 'a', 'p3')) t(sex, age, institution, __pid)"
    )
    result = con.execute(rewritten.sql)
    names = [d[0] for d in result.description]
    rows = {r[0]: dict(zip(names, r, strict=True)) for r in result.fetchall()}
    assert rows["f"]["__n"] == 3 and rows["f"]["__inst0"] == 2
    assert rows["f"]["__np"] == 2  # patients: p2's two records are one patient
    assert rows["f"]["__o2"] == 115
    assert rows["f"]["__o1"] == 5  # 3 rounded to the nearest 5
    assert rows["f"]["__a1_p"] == 2
    assert rows["f"]["__top0_1"] == rows["f"]["__tot0_1"] == 115
    assert rows["m"]["__w0"] == 0
