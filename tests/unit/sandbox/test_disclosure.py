"""Disclosure control through the gateway on the pooled test data."""

from __future__ import annotations

import pytest

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


# Patients are the unit. The secret patient (SCD, aged 97) has three custody events: three
# records, one patient. With k = 3, a record count would let each of these answers out.
_JOINED = "FROM custody_event c JOIN episode e ON c.coi_id = e.coi_id"


def _secret_records(pool) -> tuple[int, int]:
    """Records and distinct patients of the secret patient's custody events, from the
    Parquet files alone (not the gateway's code)."""
    import pandas as pd

    custody = pd.concat(pd.read_parquet(s.path) for s in pool["custody_event"])
    episode = pd.concat(pd.read_parquet(s.path) for s in pool["episode"])
    joined = custody.merge(episode, on="coi_id")
    secret = joined[joined["indication"] == "SCD"]
    return len(secret), secret["coi_id"].nunique()


def test_a_group_of_many_records_from_few_patients_is_dropped(gateway, views, pool) -> None:
    records, patients = _secret_records(pool)
    assert (records, patients) == (3, 1)  # the control: by records the group would pass k = 3
    rules = Disclosure(k=3, min_institutions=1)
    answer = gateway.run(
        views, rules, f"SELECT e.indication, COUNT(*) AS n {_JOINED} GROUP BY e.indication"
    )
    assert "SCD" not in [row[0] for row in answer.rows]
    assert any(s["reason"] == "fewer than k=3 patients" for s in answer.suppressed)
    shown = gateway.run(
        views,
        Disclosure(k=1, min_institutions=1),
        f"SELECT e.indication, COUNT(*) AS n {_JOINED} GROUP BY e.indication",
    )
    assert "SCD" in [row[0] for row in shown.rows]  # the same query sees it at k = 1


def test_a_where_removing_one_patients_records_is_differencing(gateway, views) -> None:
    rules = Disclosure(k=3, min_institutions=1)
    answer = gateway.run(views, rules, f"SELECT AVG(c.temp_min) {_JOINED} WHERE e.age < 97")
    assert answer.rows == [[None]]
    assert "fewer than k=3 patients" in answer.suppressed[0]["reason"]


def test_a_case_taken_by_one_patients_records_is_suppressed(gateway, views) -> None:
    rules = Disclosure(k=3, min_institutions=1)
    answer = gateway.run(
        views, rules, f"SELECT SUM(CASE WHEN e.age = 97 THEN c.temp_min ELSE 0 END) {_JOINED}"
    )
    assert answer.rows == [[None]]
    assert "selects fewer than k=3 patients" in answer.suppressed[0]["reason"]


def test_an_aggregate_over_one_patients_values_is_suppressed(gateway, views) -> None:
    rules = Disclosure(k=3, min_institutions=1)
    answer = gateway.run(
        views,
        rules,
        f"SELECT AVG(CASE WHEN e.age = 97 THEN c.temp_min END) AS t, COUNT(*) AS n {_JOINED}",
    )
    assert answer.rows[0][0] is None and answer.rows[0][1] is not None
    assert any("fewer than k=3 patients" in s["reason"] for s in answer.suppressed)


def test_an_indicator_times_a_value_is_suppressed_by_the_spread_rule(
    gateway, views, pool, disclosure
) -> None:
    """``AVG(weight * FLOOR(1 / (1 + ABS(age - 97))))`` takes no CASE, no WHERE, and every
    patient's value; but all patients but the singled-out one hold 0, so the average times
    the count is their weight. Suppressed; the control, plain pandas on the pool, shows the
    leak the rule stops. A plain average, where values differ, is answered."""
    import pandas as pd

    episode = pd.concat(pd.read_parquet(s.path) for s in pool["episode"])
    values = episode.weight_kg * (1 / (1 + (episode.age - 97).abs())).apply(int)
    assert (values != 0).sum() == 1  # the control: one patient's value, all others 0
    assert values.mean() * len(values) == pytest.approx(123.456)
    indicator = "SELECT AVG(weight_kg * FLOOR(1 / (1 + ABS(age - 97)))) AS w FROM episode"
    answer = gateway.run(views, disclosure, indicator)
    assert answer.rows == [[None]]
    assert "every other patient of the cell holds the same value" in answer.suppressed[0]["reason"]
    offset = "SELECT AVG(weight_kg * FLOOR(1 / (1 + ABS(age - 97))) + 10) AS w FROM episode"
    assert gateway.run(views, disclosure, offset).rows == [[None]]
    plain = gateway.run(views, disclosure, "SELECT AVG(weight_kg) AS w FROM episode")
    assert plain.rows[0][0] == pytest.approx(episode.weight_kg.mean())


def test_clamp_is_part_of_the_exact_grammar(gateway, views, pool, disclosure) -> None:
    """``CLAMP(x, low, high)``, the gateway's grammar for bounds, runs on the exact path too
    (NULL stays NULL), against pandas."""
    import pandas as pd

    episode = pd.concat(pd.read_parquet(s.path) for s in pool["episode"])
    answer = gateway.run(
        views, disclosure, "SELECT AVG(CLAMP(weight_kg, 60, 90)) AS w FROM episode"
    )
    assert answer.rows[0][0] == pytest.approx(episode.weight_kg.clip(60, 90).mean())
