"""Adversarial suite for the query gateway (issue 6, item 8).

Every attack is either refused with a reason naming the construct, or answered with no cell
derived from fewer than k records or fewer than the minimum institutions, and with no cell
(or difference of cells) equal to the singled-out record's secret weight. An independent,
unlocked DuckDB connection over the same Parquet recounts every visible group. The session
prints ``N attacks, 0 leaks``."""

from __future__ import annotations

import duckdb
import pytest
from sqlglot import exp

from sandbox.gateway import GatewayError, QueryRejected, check_query
from tests.security import tally
from tests.unit.sandbox.pool import SECRET

ATTACKS = [
    # forbidden constructs
    ("select star", "SELECT * FROM episode"),
    ("qualified star", "SELECT e.* FROM episode e"),
    ("star exclude", "SELECT * EXCLUDE (coi_id) FROM episode"),
    ("columns()", "SELECT COLUMNS('weight.*') FROM episode"),
    ("raw column", "SELECT weight_kg FROM episode"),
    ("column beside aggregate", "SELECT weight_kg, COUNT(*) FROM episode"),
    ("min", "SELECT MIN(weight_kg) FROM episode"),
    ("max", "SELECT indication, MAX(weight_kg) FROM episode GROUP BY 1"),
    ("max in arithmetic", "SELECT 0 + MAX(age) FROM episode"),
    ("median", "SELECT MEDIAN(weight_kg) FROM episode"),
    ("quantile_cont", "SELECT QUANTILE_CONT(weight_kg, 0.99) FROM episode"),
    ("quantile_disc", "SELECT QUANTILE_DISC(weight_kg, 1.0) FROM episode"),
    (
        "percentile within group",
        "SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY age) FROM episode",
    ),
    ("approx_quantile", "SELECT APPROX_QUANTILE(weight_kg, 0.999) FROM episode"),
    ("mode", "SELECT MODE(weight_kg) FROM episode"),
    ("first", "SELECT FIRST(weight_kg) FROM episode"),
    ("last", "SELECT LAST(weight_kg) FROM episode"),
    ("any_value", "SELECT ANY_VALUE(weight_kg) FROM episode"),
    ("arg_max", "SELECT ARG_MAX(weight_kg, age) FROM episode"),
    ("argmin", "SELECT ARG_MIN(weight_kg, age) FROM episode"),
    ("list", "SELECT LIST(weight_kg) FROM episode"),
    ("array_agg", "SELECT ARRAY_AGG(weight_kg) FROM episode"),
    ("string_agg", "SELECT STRING_AGG(site, ',') FROM episode"),
    ("histogram", "SELECT HISTOGRAM(weight_kg) FROM episode"),
    ("window", "SELECT SUM(weight_kg) OVER (ORDER BY age) FROM episode"),
    ("row_number", "SELECT COUNT(*), ROW_NUMBER() OVER () FROM episode"),
    ("qualify", "SELECT COUNT(*) FROM episode QUALIFY ROW_NUMBER() OVER () = 1"),
    ("read_csv", "SELECT COUNT(*) FROM read_csv('/etc/passwd')"),
    ("read_parquet", "SELECT COUNT(*) FROM read_parquet('/tmp/*.parquet')"),
    ("glob", "SELECT COUNT(*) FROM glob('/*')"),
    ("file path as table", "SELECT COUNT(*) FROM '/etc/passwd'"),
    ("copy", "COPY episode TO '/tmp/leak.csv'"),
    ("attach", "ATTACH '/tmp/leak.db' AS x"),
    ("install", "INSTALL httpfs"),
    ("load", "LOAD httpfs"),
    ("pragma", "PRAGMA show_tables"),
    ("set", "SET enable_external_access = true"),
    ("system catalog function", "SELECT COUNT(*) FROM duckdb_settings()"),
    ("information_schema", "SELECT COUNT(*) FROM information_schema.tables"),
    ("pg_catalog", "SELECT COUNT(*) FROM pg_catalog.pg_class"),
    ("getenv", "SELECT COUNT(*), SUM(LENGTH(getenv('HOME'))) FROM episode"),
    ("macro", "CREATE MACRO leak(x) AS x"),
    ("two statements", "SELECT COUNT(*) FROM episode; SELECT * FROM episode"),
    ("insert", "INSERT INTO episode VALUES (1)"),
    ("drop", "DROP VIEW episode"),
    ("registered source", "SELECT COUNT(*) FROM __src_episode_0"),
    # subqueries, CTEs, set operations
    ("subquery in from", "SELECT COUNT(*) FROM (SELECT * FROM episode) t"),
    ("cte", "WITH t AS (SELECT weight_kg FROM episode) SELECT COUNT(*) FROM t"),
    ("scalar subquery", "SELECT COUNT(*), (SELECT weight_kg FROM episode LIMIT 1) FROM episode"),
    ("in subquery", "SELECT COUNT(*) FROM episode WHERE age IN (SELECT age FROM episode)"),
    ("exists", "SELECT COUNT(*) FROM episode WHERE EXISTS (SELECT 1 FROM episode)"),
    ("union rows", "SELECT COUNT(*) FROM episode UNION ALL SELECT weight_kg FROM episode"),
    ("union aggregate with raw", "SELECT AVG(age) FROM episode UNION SELECT age FROM episode"),
    # identifiers
    ("group by pseudonym", "SELECT coi_id, COUNT(*) FROM episode GROUP BY coi_id"),
    ("filter on pseudonym", "SELECT AVG(weight_kg) FROM episode WHERE coi_id = 'c_inst_c_0'"),
    ("substring of pseudonym", "SELECT SUBSTRING(coi_id, 1, 3), COUNT(*) FROM episode GROUP BY 1"),
    ("quoted identifier case game", 'SELECT "COI_ID", COUNT(*) FROM episode GROUP BY "COI_ID"'),
    ("pseudonym length", "SELECT LENGTH(coi_id) AS l, COUNT(*) FROM episode GROUP BY l"),
    (
        "pseudonym inside sum",
        "SELECT SUM(CASE WHEN coi_id = 'c_inst_c_0' THEN weight_kg ELSE 0 END) FROM episode",
    ),
    ("internal column", "SELECT SUM(__n) FROM episode"),
    ("count distinct pseudonym", "SELECT COUNT(DISTINCT coi_id) FROM episode"),
    # disclosure attacks answered with suppression
    ("group by near-unique", "SELECT weight_kg, COUNT(*) FROM episode GROUP BY weight_kg"),
    (
        "group by every quasi-identifier",
        "SELECT site, indication, age, sex, COUNT(*) FROM episode GROUP BY ALL",
    ),
    (
        "group by quasi-identifiers with avg",
        "SELECT indication, age, AVG(weight_kg) FROM episode GROUP BY 1, 2",
    ),
    ("narrow where", "SELECT AVG(weight_kg) FROM episode WHERE age = 97"),
    ("narrow where with indication", "SELECT SUM(weight_kg) FROM episode WHERE indication = 'SCD'"),
    (
        "case singles out in sum",
        "SELECT SUM(CASE WHEN age = 97 THEN weight_kg ELSE 0 END) FROM episode",
    ),
    (
        "case singles out in avg with offset constant",
        "SELECT AVG(CASE WHEN age = 97 THEN weight_kg ELSE 1 END) FROM episode",
    ),
    ("simple case", "SELECT SUM(CASE age WHEN 97 THEN weight_kg END) FROM episode"),
    ("if() singles out", "SELECT SUM(IF(indication = 'SCD', weight_kg, 0)) FROM episode"),
    (
        "boolean cast trick",
        "SELECT SUM(CAST(indication = 'SCD' AS INTEGER) * weight_kg) FROM episode",
    ),
    ("predicate times value", "SELECT SUM((age > 96)::INT * weight_kg) FROM episode"),
    (
        "stddev of singled out",
        "SELECT STDDEV(CASE WHEN age = 97 THEN weight_kg ELSE 0 END) FROM episode",
    ),
    ("null everywhere but one", "SELECT AVG(CASE WHEN age = 97 THEN weight_kg END) FROM episode"),
    ("count of a column", "SELECT COUNT(weight_kg) FROM episode WHERE age = 97"),
    (
        "count of a case singles out",
        "SELECT sex, COUNT(CASE WHEN age = 97 THEN 1 END) FROM episode GROUP BY sex",
    ),
    (
        "proportion singles out",
        "SELECT AVG(CASE WHEN indication = 'SCD' THEN 1 ELSE 0 END) FROM episode",
    ),
    (
        "constant outcomes weighted",
        "SELECT SUM(CASE WHEN age = 97 THEN 1000000 WHEN age > 90 THEN 1 ELSE 0 END) FROM episode",
    ),
    (
        "complement where",
        "SELECT SUM(weight_kg) FROM episode WHERE NOT (age = 97 AND indication = 'SCD')",
    ),
    ("group by institution", "SELECT institution, AVG(weight_kg) FROM episode GROUP BY 1"),
    ("group by site", "SELECT site, SUM(weight_kg) FROM episode GROUP BY 1"),
    ("order by suppressed", "SELECT weight_kg, COUNT(*) FROM episode GROUP BY 1 ORDER BY 2 DESC"),
    (
        "join chain narrow",
        "SELECT AVG(b.viability) FROM episode e JOIN batch b ON e.coi_id = b.coi_id "
        "WHERE e.age = 97",
    ),
    (
        "join group by age",
        "SELECT e.age, AVG(c.cd3_yield) FROM episode e JOIN collection c ON e.coi_id = c.coi_id "
        "GROUP BY e.age",
    ),
    # joins that are refused
    ("cross join", "SELECT COUNT(*) FROM episode CROSS JOIN custody_event"),
    ("comma join", "SELECT COUNT(*) FROM episode, custody_event"),
    (
        "non-equi join",
        "SELECT COUNT(*) FROM episode e JOIN batch b ON e.age > b.culture_days",
    ),
    ("natural join", "SELECT COUNT(*) FROM episode NATURAL JOIN batch"),
    ("positional join", "SELECT COUNT(*) FROM episode POSITIONAL JOIN batch"),
    ("asof join", "SELECT COUNT(*) FROM episode e ASOF JOIN batch b ON e.age >= b.viability"),
    (
        "huge self join",
        "SELECT a.event, COUNT(*) FROM custody_event a JOIN custody_event b ON a.event = b.event "
        "JOIN custody_event c ON b.event = c.event JOIN custody_event d ON c.event = d.event "
        "GROUP BY a.event",
    ),
    # parser games
    ("comment hides star", "SELECT /* COUNT(*) */ * FROM episode"),
    ("line comment second statement", "SELECT COUNT(*) FROM episode --\n; SELECT * FROM episode"),
    ("mixed case min", "SeLeCt mIn(weight_kg) FrOm EpIsOdE"),
    ("quoted function name", 'SELECT "min"(weight_kg) FROM episode'),
    ("string that looks like sql", "SELECT COUNT(*) FROM episode WHERE site = '; SELECT *'"),
    ("dollar quoted", "SELECT COUNT(*) FROM episode WHERE site = $$x$$; COPY episode TO 'x'"),
    ("unicode escapes in name", 'SELECT COUNT(*) FROM "epi\u0073ode" WHERE "coi\u005fid" > \'\''),
    ("parameter", "SELECT COUNT(*) FROM episode WHERE age = $1"),
    ("having singles out", "SELECT sex, COUNT(*) FROM episode GROUP BY sex HAVING MAX(age) > 96"),
    ("lambda", "SELECT COUNT(*), SUM(list_sum(list_transform([age], lambda x: x))) FROM episode"),
    ("md5 of quasi", "SELECT MD5(site), COUNT(*) FROM episode GROUP BY 1"),
    ("regexp on name", "SELECT COUNT(*) FROM episode WHERE regexp_matches(site, 'inst_c')"),
    ("rollup totals", "SELECT indication, SUM(age) FROM episode GROUP BY ROLLUP (indication)"),
    ("distinct", "SELECT DISTINCT weight_kg FROM episode"),
    ("offset walk", "SELECT sex, COUNT(*) FROM episode GROUP BY 1 LIMIT 1 OFFSET 1"),
]

PAIRS = [
    (
        "differencing by quasi-identifiers",
        "SELECT SUM(weight_kg) FROM episode WHERE sex IN ('female', 'male')",
        "SELECT SUM(weight_kg) FROM episode WHERE sex IN ('female', 'male') "
        "AND NOT (age = 97 AND indication = 'SCD')",
    ),
    (
        "differencing by pseudonym",
        "SELECT SUM(weight_kg) FROM episode",
        "SELECT SUM(weight_kg) FROM episode WHERE coi_id <> 'c_inst_c_0'",
    ),
    (
        "differencing per group",
        "SELECT sex, SUM(weight_kg) FROM episode GROUP BY sex",
        "SELECT sex, SUM(weight_kg) FROM episode WHERE indication <> 'SCD' GROUP BY sex",
    ),
    (
        "tracker via case",
        "SELECT SUM(weight_kg) FROM episode",
        "SELECT SUM(CASE WHEN age = 97 THEN 0 ELSE weight_kg END) FROM episode",
    ),
    (
        "tracker via group totals",
        "SELECT indication, SUM(weight_kg) FROM episode GROUP BY indication",
        "SELECT SUM(weight_kg) FROM episode WHERE indication IN ('ALL', 'LBCL', 'MM')",
    ),
]


@pytest.fixture(scope="module")
def oracle(pool):
    """An unlocked DuckDB over the same Parquet, with the same institution column."""
    con = duckdb.connect()
    for table, sources in pool.items():
        parts = [
            f"SELECT *, '{s.institution}' AS institution FROM read_parquet('{s.path}')"
            for s in sources
        ]
        con.execute(f'CREATE VIEW "{table}" AS ' + " UNION ALL BY NAME ".join(parts))
    return con


def _leaks(sql, answer, views, oracle, disclosure) -> list[str]:
    """Recount every visible group independently; list the cells that break the rules."""
    checked = check_query(sql, views.names, views.identifiers)
    found = []
    for row in answer.rows:
        for value in row:
            if isinstance(value, float) and abs(value - SECRET["weight_kg"]) < 1e-6:
                found.append(f"the secret weight appears: {row}")
        cells = [v for o, v in zip(checked.outputs, row, strict=True) if o.key is None]
        if all(v is None for v in cells):
            continue
        select = exp.Select(
            expressions=[
                exp.Count(this=exp.Star()),
                *[
                    exp.Count(this=exp.Distinct(expressions=[exp.column("institution", table=a)]))
                    for a, _v in checked.tables
                ],
            ]
        )
        select.set("from_", checked.tree.args["from_"].copy())
        if checked.tree.args.get("joins"):
            select.set("joins", [j.copy() for j in checked.tree.args["joins"]])
        conditions = [c.copy() for c in checked.conjuncts]
        params = []
        for output, value in zip(checked.outputs, row, strict=True):
            if output.key is not None:
                conditions.append(
                    exp.NullSafeEQ(this=output.expr.copy(), expression=exp.Placeholder())
                )
                params.append(value)
        if conditions:
            select = select.where(exp.and_(*conditions))
        n, *institutions = oracle.execute(select.sql(dialect="duckdb"), params).fetchone()
        if n < disclosure.k or min(institutions) < disclosure.min_institutions:
            found.append(f"row {row} comes from {n} records, {institutions} institutions")
    return found


def _attempt(gateway, views, disclosure, sql):
    try:
        return gateway.run(views, disclosure, sql), None
    except GatewayError as error:
        return None, error


@pytest.mark.parametrize(("name", "sql"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack(name, sql, gateway, views, oracle, disclosure) -> None:
    tally.ATTACKS += 1
    answer, error = _attempt(gateway, views, disclosure, sql)
    if error is not None:
        assert error.message, name
        if isinstance(error, QueryRejected):
            assert error.construct and error.reason
        return
    leaks = _leaks(sql, answer, views, oracle, disclosure)
    tally.LEAKS += bool(leaks)
    assert not leaks, leaks


@pytest.mark.parametrize(("name", "first", "second"), PAIRS, ids=[p[0] for p in PAIRS])
def test_differencing_pair(name, first, second, gateway, views, oracle, disclosure) -> None:
    tally.ATTACKS += 1
    answers = []
    for sql in (first, second):
        answer, error = _attempt(gateway, views, disclosure, sql)
        if answer is not None:
            leaks = _leaks(sql, answer, views, oracle, disclosure)
            tally.LEAKS += bool(leaks)
            assert not leaks, leaks
        answers.append(answer)
    if None in answers:
        return
    first_cells = [v for row in answers[0].rows for v in row if isinstance(v, float | int)]
    second_cells = [v for row in answers[1].rows for v in row if isinstance(v, float | int)]
    differences = [abs(a - b) for a in first_cells for b in second_cells]
    sums = [abs(sum(second_cells) - a) for a in first_cells]
    leaked = any(abs(d - SECRET["weight_kg"]) < 1e-6 for d in differences + sums)
    tally.LEAKS += leaked
    assert not leaked, f"{name}: the two answers difference out the secret"


def test_suite_is_large_enough() -> None:
    assert len(ATTACKS) + len(PAIRS) >= 60


def test_the_oracle_sees_a_leak_when_controls_are_off(gateway, views, oracle, disclosure) -> None:
    """Guard against a suite that cannot fail: with thresholds off, an attack does leak."""
    from contracts.agreements import Disclosure

    off = Disclosure(k=1, min_institutions=1, rounding_base=1, dominance_percent=100.0)
    sql = "SELECT AVG(weight_kg) FROM episode WHERE age = 97"
    answer = gateway.run(views, off, sql)
    assert _leaks(sql, answer, views, oracle, disclosure)
