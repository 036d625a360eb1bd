"""Disclosure control through the gateway on the pooled test data."""

from __future__ import annotations

from contracts.agreements import Disclosure


def test_small_groups_are_dropped_with_their_keys(gateway, views, disclosure) -> None:
    answer = gateway.run(views, disclosure, "SELECT indication, COUNT(*) FROM episode GROUP BY 1")
    keys = [row[0] for row in answer.rows]
    assert "SCD" not in keys  # one record: the key value itself would disclose it
    dropped = [s for s in answer.suppressed if s["row"] is None]
    assert dropped and dropped[0]["groups"] >= 1 and "k=10" in dropped[0]["reason"]


def test_counts_are_rounded(gateway, views, disclosure) -> None:
    answer = gateway.run(views, disclosure, "SELECT sex, COUNT(*) AS n FROM episode GROUP BY sex")
    assert all(row[1] % 5 == 0 for row in answer.rows)
    assert answer.rounded == {"base": 5, "columns": ["n"]}


def test_fewer_institutions_than_the_minimum_is_suppressed(gateway, views, disclosure) -> None:
    answer = gateway.run(views, disclosure, "SELECT site, COUNT(*) FROM episode GROUP BY site")
    assert answer.rows == []  # every site belongs to one institution
    assert any("institutions" in s["reason"] for s in answer.suppressed)


def test_dominance_suppresses_a_cell_two_institutions_dominate(gateway, views) -> None:
    # Three equal institutions: the largest two hold 2/3, under the default 90 % but over 50 %.
    strict = Disclosure(dominance_percent=50.0)
    answer = gateway.run(views, strict, "SELECT COUNT(*) FROM episode")
    assert answer.rows == [[None]]
    assert "dominance" in answer.suppressed[0]["reason"]
    relaxed = gateway.run(views, Disclosure(), "SELECT COUNT(*) FROM episode")
    assert relaxed.rows[0][0] == 450


def test_secondary_suppression_protects_a_dropped_group(gateway, views, disclosure) -> None:
    answer = gateway.run(
        views, disclosure, "SELECT indication, SUM(age) FROM episode GROUP BY indication"
    )
    # SCD is dropped, so one more cell of the column must be hidden.
    hidden = [row for row in answer.rows if row[1] is None]
    assert len(hidden) == 1
    assert any(s["reason"].startswith("secondary") for s in answer.suppressed)


def test_case_singling_out_a_record_is_suppressed(gateway, views, disclosure) -> None:
    answer = gateway.run(
        views,
        disclosure,
        "SELECT SUM(CASE WHEN age = 97 THEN weight_kg ELSE 0 END) FROM episode",
    )
    assert answer.rows == [[None]]
    assert "selects fewer than" in answer.suppressed[0]["reason"]


def test_where_conjunct_removing_few_records_is_suppressed(gateway, views, disclosure) -> None:
    answer = gateway.run(
        views, disclosure, "SELECT AVG(weight_kg) FROM episode WHERE indication <> 'SCD'"
    )
    assert answer.rows == [[None]]
    assert "differencing" in answer.suppressed[0]["reason"]


def test_answer_carries_hashes(gateway, views, disclosure) -> None:
    sql = "SELECT sex, AVG(age) FROM episode GROUP BY sex"
    first, again = gateway.run(views, disclosure, sql), gateway.run(views, disclosure, sql)
    other = gateway.run(views, disclosure, "SELECT sex, AVG(weight_kg) FROM episode GROUP BY sex")
    assert len(first.query_hash) == 64
    assert (first.query_hash, first.result_hash) == (again.query_hash, again.result_hash)
    assert other.query_hash != first.query_hash and other.result_hash != first.result_hash
