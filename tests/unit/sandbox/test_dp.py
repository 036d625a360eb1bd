"""Differentially private answers (``sandbox.gateway.dp``): columns, bounds, domains,
contribution bounds, errors, noise calibration. The truth comes from plain DuckDB over the
pool's Parquet files; with the noise switched off, answers must equal it."""

from __future__ import annotations

import math

import duckdb
import pytest

from contracts.agreements import Disclosure
from sandbox.gateway import QueryRejected, Source, dp
from sandbox.gateway.noise import Noise

EXACT = Noise(enabled=False)
OPEN = Disclosure(k=1, min_institutions=1, dominance_percent=100.0)


def _truth(pool: dict[str, list[Source]], sql: str) -> list[tuple]:
    """Run ``sql`` on plain DuckDB over the signing institutions' files (one view per table,
    with its institution), independently of the gateway."""
    con = duckdb.connect()
    for table, sources in pool.items():
        parts = [
            f"SELECT *, '{s.institution}' AS institution FROM read_parquet('{s.path}')"
            for s in sources
        ]
        con.execute(f"CREATE VIEW {table} AS " + " UNION ALL BY NAME ".join(parts))
    return con.execute(sql).fetchall()


def _answer(gateway, views, sql: str, disclosure: Disclosure = OPEN, **options):
    return dp.answer(gateway, views, disclosure, sql, noise=EXACT, **options)


def test_without_noise_answers_equal_plain_duckdb(gateway, views, pool) -> None:
    """The control: with the noise off, counts, means and standard deviations per public
    cell are exact (so the noise, when on, is what protects)."""
    answer = _answer(
        gateway,
        views,
        "SELECT indication, COUNT(*) AS n, AVG(weight_kg) AS w, STDDEV_POP(weight_kg) AS sd "
        "FROM episode GROUP BY indication",
    )
    truth = {
        r[0]: r[1:]
        for r in _truth(
            pool,
            "SELECT indication, COUNT(*), AVG(weight_kg), STDDEV_POP(weight_kg) FROM episode "
            "GROUP BY indication",
        )
    }
    rows = {r[0]: r[1:] for r in answer.rows}
    # Every value of the CDM's list is a row, seen or not, and the missing value too.
    assert list(rows) == ["ALL", "LBCL", "FL", "MCL", "MM", "CLL", "SCD", "TDT", "other", None]
    answered = [key for key in truth if rows[key][0] is not None]
    assert {"ALL", "LBCL", "MM"} <= set(answered)  # the cell of one patient may be withheld
    for key in answered:
        n, w, sd = truth[key]
        assert rows[key][0] == n
        assert rows[key][1] == pytest.approx(w, rel=1e-5)
        assert rows[key][2] == pytest.approx(sd, rel=1e-4)
    # An empty cell and a one-patient cell look alike: both withheld, for the same reason.
    assert rows["FL"] == [None, None, None] and rows["SCD"] == [None, None, None]
    assert {2, 6} <= {s["row"] for s in answer.suppressed}


def test_noise_is_calibrated_to_the_patient_and_the_budget(gateway, views) -> None:
    answer = dp.answer(
        gateway,
        views,
        Disclosure(),
        "SELECT COUNT(*) AS n, AVG(weight_kg) AS w FROM episode",
        epsilon=0.6,
    )
    assert answer.epsilon == 0.6 and answer.rows_per_patient == 1
    described = {a["expression"]: a for a in answer.aggregates}
    # Two thirds of ε over three statistics (n, c, s): 0.1333 each; one row per patient.
    per_stat = 0.6 * (2 / 3) / 3
    assert described["COUNT(*)"]["noise_scale"]["n"] == pytest.approx(1 / per_stat)
    w = described["AVG(weight_kg)"]
    assert w["bounds"] == [2.0, 250.0]
    assert w["noise_scale"]["s"] == pytest.approx(124.0 / per_stat)


def test_noisy_answers_vary_but_stay_close(gateway, views) -> None:
    runs = [
        dp.answer(gateway, views, Disclosure(), "SELECT COUNT(*) FROM episode").rows[0][0]
        for _ in range(5)
    ]
    assert len(set(runs)) > 1  # noise is there
    assert all(abs(r - 450) < 40 for r in runs)  # scale 1.5: 40 is > 25 standard deviations


def test_each_patient_keeps_at_most_rows_per_patient_rows(gateway, views, pool) -> None:
    three = _answer(gateway, views, "SELECT COUNT(*) FROM custody_event").rows[0][0]
    one = _answer(gateway, views, "SELECT COUNT(*) FROM custody_event", rows_per_patient=1)
    assert three == _truth(pool, "SELECT COUNT(*) FROM custody_event")[0][0] == 1350
    assert one.rows[0][0] == 450 and one.rows_per_patient == 1


def test_joins_are_made_within_a_patient(gateway, views) -> None:
    """A join on a shared value other than the patient (the institution) would multiply one
    patient's rows by everyone else's; it pairs each patient only with themself."""
    answer = _answer(
        gateway,
        views,
        "SELECT COUNT(*) FROM episode a JOIN episode b ON a.institution = b.institution",
        rows_per_patient=100,
    )
    assert answer.rows[0][0] == 450


def test_patient_reaches_tables_through_their_links(gateway, views) -> None:
    """custody_event rows carry the DIN as unit_id: removing the coi_id still finds the
    patient through collection's DIN."""
    pid = (
        views.connection.cursor()
        .execute("SELECT COUNT(DISTINCT __pid) FROM custody_event")
        .fetchone()
    )
    assert pid == (450,)


@pytest.mark.parametrize(
    ("sql", "construct"),
    [
        ("SELECT weight_kg, COUNT(*) FROM episode GROUP BY weight_kg", "GROUP BY"),
        ("SELECT site, COUNT(*) FROM episode GROUP BY site", "GROUP BY"),
        ("SELECT SUM(LENGTH(site)) FROM episode", "LENGTH"),
        ("SELECT SUM(weight_kg / (age - 50)) FROM episode", "SUM"),
        ("SELECT AVG(POW(weight_kg, age)) FROM episode", "AVG"),
        ("SELECT COUNT(*), CAST(e AS VARCHAR) FROM episode e", "e"),
        ("SELECT COUNT(e) FROM episode e", "e"),
        ("SELECT COUNT(*) FROM episode WHERE nope > 1", "nope"),
        ("SELECT SUM(CLAMP(weight_kg, 10)) FROM episode", "CLAMP"),
        ("SELECT SUM(CLAMP(weight_kg, 100, 10)) FROM episode", "CLAMP"),
        ("SELECT FLOOR(weight_kg * 1000), COUNT(*) FROM episode GROUP BY 1", "GROUP BY"),
        ("SELECT COUNT(*) FROM episode GROUP BY 1.5", "GROUP BY 1.5"),
    ],
)
def test_unbounded_or_unknown_is_refused_before_running(gateway, views, sql, construct) -> None:
    with pytest.raises(QueryRejected) as refused:
        _answer(gateway, views, sql)
    assert construct.lower() in str(refused.value).lower()


def test_clamp_states_bounds_and_the_answer_reports_them(gateway, views, pool) -> None:
    answer = _answer(gateway, views, "SELECT AVG(CLAMP(temp_min, 0, 10)) AS t FROM custody_event")
    truth = _truth(pool, "SELECT AVG(LEAST(GREATEST(temp_min, 0), 10)) FROM custody_event")
    assert answer.rows[0][0] == pytest.approx(truth[0][0], rel=1e-5)
    assert answer.aggregates[0]["bounds"] == [0.0, 10.0]


def test_binned_and_conditional_keys_list_their_whole_domain(gateway, views) -> None:
    decades = _answer(
        gateway, views, "SELECT FLOOR(age / 10) * 10 AS decade, COUNT(*) FROM episode GROUP BY 1"
    )
    assert [r[0] for r in decades.rows] == [*range(0, 130, 10), None]
    split = _answer(
        gateway,
        views,
        "SELECT CASE WHEN age >= 60 THEN 'older' ELSE 'younger' END AS g, COUNT(*) "
        "FROM episode GROUP BY 1",
    )
    assert [r[0] for r in split.rows] == ["older", "younger", None]
    assert sum(r[1] for r in split.rows if r[1]) == 450


def test_errors_never_depend_on_a_record(gateway, views) -> None:
    """A division by zero or a failing cast on one record's value becomes NULL for that
    row, never an error (an error that fires on one record is an oracle)."""
    for sql in (
        "SELECT COUNT(*) FROM episode WHERE 1 / (97 - age) > 0",
        "SELECT COUNT(*) FROM episode WHERE CAST(site AS INTEGER) > 0",
        "SELECT COUNT(*) FROM episode WHERE CAST(age AS INTEGER) % (age - 97) = 0",
        "SELECT SUM(CLAMP(1 / (1 - age / 97), 0, 1)) FROM episode",
    ):
        answer = _answer(gateway, views, sql)
        value = answer.rows[0][0]
        assert len(answer.rows) == 1 and (value is None or math.isfinite(value))


def test_withheld_cells_are_judged_on_noisy_counts(gateway, views) -> None:
    """(With the noise off, so that the one-patient cell is withheld every time; with it on,
    it is withheld with probability above 99.5 %.)"""
    answer = dp.answer(
        gateway,
        views,
        Disclosure(),
        "SELECT indication, COUNT(*) AS n FROM episode GROUP BY indication",
        noise=EXACT,
    )
    rows = {r[0]: r[1] for r in answer.rows}
    assert rows["SCD"] is None  # one patient: withheld (never shown)
    reasons = {s["reason"] for s in answer.suppressed}
    assert all("noisy" in reason for reason in reasons)
    # institution: one institution per cell, so every cell is withheld.
    by_institution = dp.answer(
        gateway,
        views,
        Disclosure(),
        "SELECT institution, COUNT(*) FROM episode GROUP BY 1",
        noise=EXACT,
    )
    assert all(r[1] is None for r in by_institution.rows)


def test_epsilon_and_rows_per_patient_are_checked(gateway, views) -> None:
    with pytest.raises(QueryRejected, match="at most"):
        dp.answer(gateway, views, Disclosure(), "SELECT COUNT(*) FROM episode", epsilon=2)
    with pytest.raises(QueryRejected, match="positive"):
        dp.answer(gateway, views, Disclosure(), "SELECT COUNT(*) FROM episode", epsilon=-1)
    with pytest.raises(QueryRejected, match="rows_per_patient"):
        dp.answer(gateway, views, Disclosure(), "SELECT COUNT(*) FROM episode", rows_per_patient=0)


def test_covered_columns_only(gateway, pool) -> None:
    views = gateway.views("covered", pool, columns={"episode": ["indication", "age", "coi_id"]})
    assert set(views.columns["episode"]) == {"indication", "age", "coi_id", "institution"}
    for sql in (
        "SELECT AVG(weight_kg) FROM episode",
        "SELECT COUNT(*) FROM episode WHERE sex = 'male'",
        "SELECT sex, COUNT(*) FROM episode GROUP BY sex",
    ):
        with pytest.raises(QueryRejected, match="no such column"):
            _answer(gateway, views, sql)


def test_missing_values_stay_missing_when_clamped(gateway, views, pool) -> None:
    """DuckDB's GREATEST skips NULLs; a missing value must not become the lower bound."""
    answer = _answer(
        gateway, views, "SELECT AVG(CASE WHEN indication = 'ALL' THEN weight_kg END) FROM episode"
    )
    truth = _truth(pool, "SELECT AVG(weight_kg) FROM episode WHERE indication = 'ALL'")
    assert answer.rows[0][0] == pytest.approx(truth[0][0], rel=1e-5)


def test_keys_mixing_columns_conditions_and_constants(gateway, views) -> None:
    mixed = _answer(
        gateway,
        views,
        "SELECT CASE WHEN age = 97 THEN 'male' ELSE sex END AS s, COUNT(*) FROM episode GROUP BY 1",
    )
    assert [r[0] for r in mixed.rows] == ["female", "male", "other", "unknown", None]
    constant = _answer(gateway, views, "SELECT 'all' AS k, COUNT(*) FROM episode GROUP BY 1")
    assert constant.rows[0] == ["all", 450]


@pytest.mark.parametrize("epsilon", [1e-320, 5e-324, 1e-4])
def test_too_small_an_epsilon_is_refused(gateway, views, epsilon) -> None:
    with pytest.raises(QueryRejected, match="at least"):
        dp.answer(gateway, views, Disclosure(), "SELECT COUNT(*) FROM episode", epsilon=epsilon)


def _weights_pool(folder, weights: list[float]) -> dict[str, list[Source]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sources = []
    for i, inst in enumerate(("inst_a", "inst_b", "inst_c")):
        part = weights[i::3]
        path = folder / f"episode-{inst}.parquet"
        pq.write_table(
            pa.table(
                {
                    "coi_id": [f"{inst}-{j}" for j in range(len(part))],
                    "weight_kg": pa.array(part, pa.float64()),
                    "age": list(range(20, 20 + len(part))),
                }
            ),
            path,
        )
        sources.append(Source(str(path), inst))
    return {"episode": sources}


@pytest.mark.parametrize(
    ("name", "extra", "clamped"),
    [
        ("within", [], False),
        ("above", [300.0], True),  # beyond the CDM's 250 kg: clamping changes the answer
    ],
)
def test_a_clamp_is_left_out_only_where_it_changes_nothing(
    gateway, tmp_path, name, extra, clamped
) -> None:
    """The clamp to public bounds costs time on every row; it is left out where the data's
    own extremes lie within the bounds — and the answer is the same either way, checked
    against pandas with the clamp applied."""
    weights = [float(60 + (i * 7) % 50) for i in range(60)] + extra
    views = gateway.views(f"clamp-{name}", _weights_pool(tmp_path, weights))
    seen: list[str] = []
    execute = gateway.execute

    def spy(views_, sql):
        seen.append(sql)
        return execute(views_, sql)

    gateway.execute = spy  # type: ignore[method-assign]
    try:
        answer = _answer(gateway, views, "SELECT SUM(weight_kg), AVG(age) FROM episode")
    finally:
        del gateway.execute
    statistics = seen[-1]
    assert ("CASE WHEN" in statistics) is clamped
    assert 'CAST("episode"."age" AS DOUBLE) <' not in statistics  # ages 20..80 of 0..120
    import pandas as pd

    truth = pd.Series(weights).clip(2.0, 250.0).sum()
    assert answer.rows[0][0] == pytest.approx(truth, rel=1e-9)


def test_rounding_left_of_the_point_widens_the_bounds() -> None:
    import sqlglot

    def facts(_column):
        return dp.Facts("number", 2.0, 250.0)

    def bounds(text: str):
        return dp.interval(sqlglot.parse_one(text, read="duckdb"), facts)

    assert bounds("ROUND(weight_kg)") == (2.0, 250.0)
    assert bounds("ROUND(weight_kg, 1)") == (2.0, 250.0)
    assert bounds("ROUND(weight_kg, -2)") == (0.0, 300.0)  # ROUND(250, -2) is 300
    assert bounds("FLOOR(weight_kg, -1)") == (0.0, 250.0)
    assert bounds("ROUND(weight_kg, -400)") is None


def test_withheld_cells_draw_no_statistics(gateway, views) -> None:
    """The patient counts are released first; the statistics only for the cells the rules
    answer (a withheld cell's are never shown, so they need no noise)."""
    drawn: list[int] = []

    class Counting(Noise):
        def laplace(self, values, sensitivity, epsilon):
            drawn.append(len(values))
            return super().laplace(values, sensitivity, epsilon)

    answer = dp.answer(
        gateway,
        views,
        Disclosure(k=10, min_institutions=3),
        "SELECT indication, COUNT(*), AVG(weight_kg) FROM episode GROUP BY indication",
        noise=Counting(enabled=False),
    )
    cells = len(answer.rows)
    answered = sum(1 for r in answer.rows if r[1] is not None)
    assert 0 < answered < cells
    # Patient counts per cell and institution; then n, c and s of each answered cell.
    assert drawn == [cells * 3, answered * 3]


def test_the_pool_holds_no_nan(gateway, tmp_path) -> None:
    """pyarrow leaves NaN out of a Parquet file's min/max statistics, and DuckDB then folds a
    clamp's comparisons away: one record's NaN would reach its cell's answer. The hub writes
    the pool through ``put_frame``, which stores NaN as missing: the record is not counted
    and the answer stays exact."""
    import pandas as pd

    from hub.storage import LocalStorage
    from hub.storage.frames import put_frame

    storage = LocalStorage(tmp_path / "store")
    sources = []
    for i, inst in enumerate(("inst_a", "inst_b", "inst_c")):
        weights = [70.0 + i] * 29 + [float("nan") if i == 2 else 90.0]
        key = f"pool/episode/institution={inst}/version=1/part-0.parquet"
        put_frame(
            storage,
            key,
            pd.DataFrame({"coi_id": [f"{inst}-{j}" for j in range(30)], "weight_kg": weights}),
        )
        sources.append(Source(str(storage.root / key), inst))
    views = gateway.views("no-nan", {"episode": sources})
    answer = _answer(gateway, views, "SELECT SUM(weight_kg), COUNT(weight_kg) FROM episode")
    assert answer.suppressed == [], answer.suppressed
    assert answer.rows[0] == [pytest.approx(29 * (70 + 71 + 72) + 2 * 90), 89]
