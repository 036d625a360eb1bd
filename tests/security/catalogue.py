"""The attacks, written afresh for the differentially private gateway.

- :data:`NUMERIC`: attacks that try to learn one patient's value (the singled-out episode:
  the only ``SCD``, the only patient above 80, aged 97, weight 123.456 kg) or an exact count
  below k, each with its estimator, target and ``chance`` (the probability that one noisy
  run lands within tolerance by luck; see ``oracle.py``). Classes: cross-query differencing,
  differencing inside one query, a total minus the visible cells, moving one record between
  groups, selectors and predicate-free indicators inside aggregates, rounding bypasses,
  joins that count rows instead of patients, averaging many answers, and ``/fit``.
- :data:`ERROR_ORACLES`: queries whose row-level expression fails at run time on the
  singled-out record only; the gateway must refuse them before reading data or answer them,
  identically with and without the record.
- :data:`WHOLE_ROW`: a table alias used as a value (the whole row); always refused.
- :data:`FORBIDDEN`: the structural refusals of the old suite (single-value aggregates,
  windows, file readers, statements, subqueries, identifiers, cross joins, parser games).
- :data:`EDGE`: inputs that must be refused or answered, never crash the gateway.
- :data:`UNCOVERED` / :data:`UNCOVERED_FITS`: uses of a column the agreement does not cover.
- :data:`CALIBRATION`: answers whose noise is measured against the exact value; an ε-DP
  Laplace release needs a scale of at least (what one patient can move the answer by) / ε.
  This catches a sensitivity that is too small by a modest factor (a join's rows counted
  once, say), which the ±1 kg criterion would only catch when it is off by far more.

Where the chance numbers come from: every answer's ε = 1 is split by the gateway into a
third for noisy patient counts and two thirds over the statistics an answer needs (a ``SUM``
needs a count and a sum, an ``AVG`` with a ``COUNT(*)`` three statistics ...). A weight
guess built from a clamped sum of weights carries Laplace noise of scale 750 (``SUM`` of
2-250 kg at ε/3) or, for the narrowest clamp used here (a 50 kg window, averaged over ten
pairs), a standard deviation of 47 kg; the chance of landing within ±1 kg is at most 0.02,
declared as 0.05. Counts: ``COUNT(*)`` alone has Laplace scale 1.5, so the difference of
two rounded counts is exact with probability 0.16 (simulated; declared 0.2), and the mean of
ten such differences with probability 0.37 (declared 0.4); a count from ``SUM`` of a 0/1
value has scale 3 (0.15 for one, declared 0.25; 0.08 for a difference, declared 0.1). Every
count attack's rate was also measured over 400 noisy runs (noted where it is not one of
these cases); each declared chance is above its measured rate.

Left out on purpose: the strongest count attack within the default budget, twenty answers of
``COUNT(CASE WHEN age > 80 THEN 1 END)`` combined by maximum likelihood, recovers the count
1 in about 81 % of tries (simulated). That is what ε_total = 20 permits, not a flaw of the
mechanism, and telling it apart from a deterministic leak would take over a hundred runs of
twenty answers each; it is a question for the agreement's ``epsilon_total``.
"""

from __future__ import annotations

import math
import statistics

from tests.security.oracle import (
    Attack,
    Fit,
    Query,
    cell,
    coefficients,
    pairs,
    visible,
)

WEIGHT_CHANCE = 0.05
ONE_COUNT_CHANCE = 0.2  # one answer's count of scale 1.5-3, or a difference at scale 1.5
ONE_SUM_CHANCE = 0.25  # one sum of 0/1 values at scale 3 (0.15), with a margin
DIFFERENCE_CHANCE = 0.1  # a difference of two counts of scale >= 3
SPREAD_CHANCE = 0.3  # estimators mixing a few count-scale terms (see each attack)
AVERAGE_CHANCE = 0.4  # ten averaged differences of counts of scale 1.5

ONE = "indication = 'SCD'"  # the singled-out record ...
ONE_AGE = "age = 97"  # ... found another way
IND = "FLOOR(1 / (1 + ABS(age - 97)))"  # 1 for that record, 0 for every other: no predicate
POW = "POW(0, ABS(age - 97))"  # the same with POW
WEIGHT = "SELECT SUM(weight_kg) FROM episode"


def _diff(a: list) -> float:
    """The first answer minus the second."""
    return cell(a[0]) - cell(a[1])


def _single(a: list) -> float:
    """The one answer's value is the guess."""
    return cell(a[0])


def _times_count(a: list) -> float:
    """An average times the COUNT(*) beside it (a sum)."""
    return cell(a[0], 0) * cell(a[0], 1)


def _both_times_count(a: list) -> float:
    """The difference of two sums, each an average times its count."""
    return _times_count(a[:1]) - _times_count(a[1:])


def _total_minus_cells(a: list) -> float:
    """A total minus every released cell of a grouping of the same rows."""
    return cell(a[0]) - sum(visible(a[1]))


def _group_difference(a: list) -> float:
    """Sum over the groups released in both answers of the first minus the second."""
    first = {r[0]: r[-1] for r in a[0]["rows"]} if a[0] else {}
    second = {r[0]: r[-1] for r in a[1]["rows"]} if a[1] else {}
    shared = [k for k in first if first[k] is not None and second.get(k) is not None]
    if not shared:
        return cell(None)
    return sum(first[k] - second[k] for k in shared)


def _moved(a: list) -> float:
    """The record sits in group 'f' in the second answer and in 'm' in the first."""
    f = cell(a[1], 1, key="f") - cell(a[0], 1, key="f")
    m = cell(a[0], 1, key="m") - cell(a[1], 1, key="m")
    return (f + m) / 2


def _from_variance(a: list) -> float:
    """n values, one of them w and the rest 0: VAR_POP = w²(n-1)/n²."""
    variance, n = cell(a[0], 0), cell(a[0], 1)
    return n * math.sqrt(max(variance, 0.0) / (n - 1))


def _from_stddev(a: list) -> float:
    """The same with STDDEV_POP = w·√(n-1)/n."""
    sd, n = cell(a[0], 0), cell(a[0], 1)
    return n * sd / math.sqrt(n - 1)


def _averaged(offset: float):
    """The mean of the repeated pairs' differences, plus what the clamp took off."""

    def estimate(a: list) -> float:
        return offset + statistics.fmean(pairs(a))

    return estimate


def _averaged_single(offset: float):
    """The mean of the repeated answers, plus what the clamp took off."""

    def estimate(a: list) -> float:
        return offset + statistics.fmean(cell(x) for x in a)

    return estimate


def _shrink(features: int = 1, epsilon: float = 1.0) -> float:
    """How much dpfit's ridge shrinks a direction that one record alone spans. Public: the
    gateway's source solves on the noisy sums plus ``ridge = 2 × (sums of products) /
    (0.8 ε)``; along a one-hot (coded -1/+1) the fitted value for that record is the record's
    own value divided by ``1 + ridge / 2``, so the attacker multiplies it back."""
    size = features + 2  # intercept, features, target
    products = size * (size + 1) // 2
    ridge = 2.0 * products / (0.8 * epsilon)
    return 1 + ridge / 2


def _fit_linear(a: list) -> float:
    """Intercept + the one-hot's coefficient is the record's fitted value; undo the ridge."""
    intercept, coefficient = coefficients(a[0])[:2]
    low, high = a[0]["bounds"]["weight_kg"]
    middle = (low + high) / 2
    return middle + (intercept + coefficient - middle) * _shrink()


def _fit_logistic(a: list) -> float:
    """The record's fitted log-odds, unshrunk, back to its 0/1 value (the functional
    mechanism fits 4·(X'X + ridge)⁻¹ X'(y - ½))."""
    intercept, coefficient = coefficients(a[0])[:2]
    return 0.5 + (intercept + coefficient) * _shrink() / 4


NUMERIC: list[Attack] = [
    # -- differencing across queries ----------------------------------------------------
    Attack(
        "or one record",
        "differencing",
        (Query(f"{WEIGHT} WHERE age < 90 OR {ONE}"), Query(f"{WEIGHT} WHERE age < 90")),
        _diff,
    ),
    Attack("not", "differencing", (Query(WEIGHT), Query(f"{WEIGHT} WHERE NOT ({ONE})")), _diff),
    Attack(
        "not like",
        "differencing",
        (Query(WEIGHT), Query(f"{WEIGHT} WHERE indication NOT LIKE 'SC%'")),
        _diff,
    ),
    Attack(
        "between x and x",
        "differencing",
        (Query(WEIGHT), Query(f"{WEIGHT} WHERE NOT (age BETWEEN 97 AND 97)")),
        _diff,
    ),
    Attack(
        "in list",
        "differencing",
        (
            Query(f"{WEIGHT} WHERE indication IN ('ALL', 'LBCL', 'MM', 'SCD')"),
            Query(f"{WEIGHT} WHERE indication IN ('ALL', 'LBCL', 'MM')"),
        ),
        _diff,
    ),
    Attack(
        "not in",
        "differencing",
        (Query(WEIGHT), Query(f"{WEIGHT} WHERE age NOT IN (95, 96, 97, 98)")),
        _diff,
    ),
    Attack(
        "average times count",
        "differencing",
        (
            Query("SELECT AVG(weight_kg), COUNT(*) FROM episode"),
            Query(f"SELECT AVG(weight_kg), COUNT(*) FROM episode WHERE NOT ({ONE_AGE})"),
        ),
        _both_times_count,
    ),
    Attack(
        "per group",
        "differencing",
        (
            Query("SELECT sex, SUM(weight_kg) FROM episode GROUP BY sex", keys=1),
            Query(f"SELECT sex, SUM(weight_kg) FROM episode WHERE NOT ({ONE}) GROUP BY sex", 1),
        ),
        _group_difference,
    ),
    Attack(
        "count or one record",
        "differencing",
        (
            Query("SELECT COUNT(*) FROM episode WHERE age <= 80 OR age = 97"),
            Query("SELECT COUNT(*) FROM episode WHERE age <= 80"),
        ),
        _diff,
        target="old",
        chance=ONE_COUNT_CHANCE,  # simulated 0.16, measured 0.17 (400 runs)
    ),
    # -- the same inside one query ---------------------------------------------------------
    Attack(
        "two sums subtracted",
        "one query",
        (
            Query(
                "SELECT SUM(weight_kg) - SUM(CASE WHEN age = 97 THEN 0 ELSE weight_kg END) "
                "FROM episode"
            ),
        ),
        _single,
    ),
    Attack(
        "sum minus flagged sum",
        "one query",
        (
            Query(
                "SELECT SUM(weight_kg) - SUM(weight_kg * CAST(indication <> 'SCD' AS INT)) "
                "FROM episode"
            ),
        ),
        _single,
    ),
    Attack(
        "count minus flagged count",
        "one query",
        (Query("SELECT COUNT(*) - SUM(CAST(age <= 80 AS INT)) FROM episode"),),
        _single,
        target="old",
        # round(n + L(4.5)) - (sum + L(4.5)): density of the difference at 0 is 0.056;
        # measured 0.04 (400 runs).
        chance=DIFFERENCE_CHANCE,
    ),
    # -- a total minus the visible cells of a grouping -------------------------------------
    Attack(
        "total minus indication cells",
        "total minus cells",
        (Query(WEIGHT), Query("SELECT indication, SUM(weight_kg) FROM episode GROUP BY 1", keys=1)),
        _total_minus_cells,
    ),
    Attack(
        "total minus decade cells",
        "total minus cells",
        (
            Query(WEIGHT),
            Query(
                "SELECT FLOOR(age / 10) * 10 AS decade, SUM(weight_kg) FROM episode GROUP BY 1",
                keys=1,
            ),
        ),
        _total_minus_cells,
    ),
    Attack(
        "count minus indication cells",
        "total minus cells",
        (
            Query("SELECT COUNT(*) FROM episode"),
            Query("SELECT indication, COUNT(*) FROM episode GROUP BY 1", keys=1),
        ),
        _total_minus_cells,
        target="scd",
        # four counts of scale 1.5 (the total and three released cells): sd 4.3,
        # measured 0.12 (400 runs).
        chance=ONE_COUNT_CHANCE,
    ),
    # -- moving one record between groups --------------------------------------------------
    Attack(
        "case moves the record",
        "move between groups",
        (
            Query(
                "SELECT CASE WHEN sex = 'female' AND age <> 97 THEN 'f' ELSE 'm' END AS g, "
                "SUM(weight_kg) FROM episode GROUP BY 1",
                keys=1,
            ),
            Query(
                "SELECT CASE WHEN sex = 'female' OR age = 97 THEN 'f' ELSE 'm' END AS g, "
                "SUM(weight_kg) FROM episode GROUP BY 1",
                keys=1,
            ),
        ),
        _moved,
    ),
    Attack(
        "case moves the record (count)",
        "move between groups",
        (
            Query(
                "SELECT CASE WHEN sex = 'female' AND age <= 80 THEN 'f' ELSE 'm' END AS g, "
                "COUNT(*) FROM episode GROUP BY 1",
                keys=1,
            ),
            Query(
                "SELECT CASE WHEN sex = 'female' OR age > 80 THEN 'f' ELSE 'm' END AS g, "
                "COUNT(*) FROM episode GROUP BY 1",
                keys=1,
            ),
        ),
        _moved,
        target="old",
        # the mean of two differences of rounded counts of scale 1.5 is a multiple of ½
        # that must be exactly 1: measured 0.09 (400 runs).
        chance=ONE_COUNT_CHANCE,
    ),
    Attack(
        "case relabels the record",
        "move between groups",
        (
            Query(
                "SELECT CASE WHEN age = 97 THEN 'male' ELSE sex END AS s, SUM(weight_kg) "
                "FROM episode GROUP BY 1",
                keys=1,
            ),
            Query(
                "SELECT CASE WHEN age = 97 THEN 'female' ELSE sex END AS s, SUM(weight_kg) "
                "FROM episode GROUP BY 1",
                keys=1,
            ),
        ),
        lambda a: abs(cell(a[0], 1, key="female") - cell(a[1], 1, key="female")),
        expect="either",
        exact_leaks=None,  # refused today: a CASE mixing a column and a literal
    ),
    # -- selectors inside aggregates --------------------------------------------------------
    Attack(
        "case in sum",
        "selector",
        (Query(f"SELECT SUM(CASE WHEN {ONE_AGE} THEN weight_kg ELSE 0 END) FROM episode"),),
        _single,
    ),
    Attack(
        "if in sum",
        "selector",
        (Query(f"SELECT SUM(IF({ONE}, weight_kg, 0)) FROM episode"),),
        _single,
    ),
    Attack(
        "predicate cast times value",
        "selector",
        (Query("SELECT SUM((age > 96)::INT * weight_kg) FROM episode"),),
        _single,
    ),
    Attack(
        "count of a case",
        "selector",
        (
            Query(
                f"SELECT sex, COUNT(CASE WHEN {ONE_AGE} THEN 1 END) FROM episode GROUP BY sex",
                keys=1,
            ),
        ),
        lambda a: sum(visible(a[0])),
        target="old",
        # two released counts of scale 1.5, each floored at 0 (the empty one mostly shows
        # 0): 0.24 worked out, measured 0.24 (400 runs).
        chance=SPREAD_CHANCE,
    ),
    # -- indicators without a predicate -----------------------------------------------------
    Attack(
        "pow indicator in clamped sum",
        "indicator",
        (Query(f"SELECT SUM(CLAMP(weight_kg * {POW}, 0, 250)) FROM episode"),),
        _single,
    ),
    Attack(
        "pow indicator unclamped",
        "indicator",
        (Query(f"SELECT SUM(weight_kg * {POW}) FROM episode"),),
        _single,
        expect="either",
        exact_leaks=None,  # refused: a power with a non-literal exponent has no bounds
    ),
    Attack(
        "floor indicator in sum",
        "indicator",
        (Query(f"SELECT SUM(weight_kg * {IND}) FROM episode"),),
        _single,
    ),
    Attack(
        "floor indicator in avg",
        "indicator",
        (Query(f"SELECT AVG(weight_kg * {IND}), COUNT(*) FROM episode"),),
        _times_count,
    ),
    Attack(
        "floor indicator in var_pop",
        "indicator",
        (Query(f"SELECT VAR_POP(weight_kg * {IND}), COUNT(*) FROM episode"),),
        _from_variance,
    ),
    Attack(
        "floor indicator in stddev_pop",
        "indicator",
        (Query(f"SELECT STDDEV_POP(weight_kg * {IND}), COUNT(*) FROM episode"),),
        _from_stddev,
    ),
    Attack(
        "offset on every record in avg",
        "indicator",
        (Query(f"SELECT AVG(weight_kg * {IND} + 10), COUNT(*) FROM episode"),),
        lambda a: (cell(a[0], 0) - 10) * cell(a[0], 1),
    ),
    Attack(
        "offset on every record in sum",
        "indicator",
        (Query(f"SELECT SUM(CLAMP(weight_kg * {POW}, 0, 250) + 1) - COUNT(*) FROM episode"),),
        _single,
    ),
    Attack(
        "indicator count",
        "indicator",
        (Query(f"SELECT SUM({IND}) FROM episode"),),
        _single,
        target="old",
        # one sum of 0/1 at scale 3: 0.15 worked out, measured 0.16 (400 runs)
        chance=ONE_SUM_CHANCE,
    ),
    Attack(
        "exact weight membership",
        "indicator",
        (Query("SELECT SUM(CLAMP(POW(0, ABS(weight_kg - 123.456)), 0, 1)) FROM episode"),),
        _single,
        target="exact_weight",
        chance=ONE_SUM_CHANCE,  # the same: measured 0.18 (400 runs)
    ),
    # -- rounding bypasses ------------------------------------------------------------------
    Attack(
        "sum of ones",
        "rounding bypass",
        (Query("SELECT SUM(1) FROM episode"), Query("SELECT SUM(1) FROM episode WHERE age <= 80")),
        _diff,
        target="old",
        chance=DIFFERENCE_CHANCE,  # two sums of scale 3: 0.08, measured 0.09 (400 runs)
    ),
    Attack(
        "sum of x plus one minus sum of x",
        "rounding bypass",
        (
            Query("SELECT SUM(weight_kg + 1) - SUM(weight_kg) FROM episode"),
            Query("SELECT SUM(weight_kg + 1) - SUM(weight_kg) FROM episode WHERE age <= 80"),
        ),
        _diff,
        target="old",
        chance=WEIGHT_CHANCE,  # four sums of weights at scale >= 750
    ),
    Attack(
        "average of a cast flag",
        "rounding bypass",
        (Query(f"SELECT AVG(CAST({ONE} AS INT)) * COUNT(*) FROM episode"),),
        _single,
        target="scd",
        # (½ + (s + L(2.25)) / (c + L(4.5))) × (n + L(4.5)): measured 0.11 (400 runs).
        chance=ONE_COUNT_CHANCE,
    ),
    Attack(
        "average of a cast column, differenced",
        "rounding bypass",
        (
            Query("SELECT AVG(CAST(bridging AS INT)) * COUNT(*) FROM episode"),
            Query(f"SELECT AVG(CAST(bridging AS INT)) * COUNT(*) FROM episode WHERE NOT ({ONE})"),
        ),
        _diff,
        target="bridging",
        chance=0.15,  # twice the terms above: measured 0.06 (400 runs)
    ),
    # -- joins counting rows, not patients ------------------------------------------------
    Attack(
        "join custody events",
        "join",
        (
            Query(
                "SELECT SUM(e.weight_kg) FROM episode e JOIN custody_event c ON e.coi_id = c.coi_id"
            ),
            Query(
                "SELECT SUM(e.weight_kg) FROM episode e "
                f"JOIN custody_event c ON e.coi_id = c.coi_id WHERE NOT (e.{ONE})"
            ),
        ),
        _diff,
        divisors=("custody_rows",),
    ),
    Attack(
        "join custody events, one row per patient",
        "join",
        (
            Query(
                "SELECT SUM(e.weight_kg) FROM episode e "
                "JOIN custody_event c ON e.coi_id = c.coi_id",
                rows_per_patient=1,
            ),
            Query(
                "SELECT SUM(e.weight_kg) FROM episode e "
                f"JOIN custody_event c ON e.coi_id = c.coi_id WHERE NOT (e.{ONE})",
                rows_per_patient=1,
            ),
        ),
        _diff,
        divisors=("custody_rows",),
    ),
    Attack(
        "self-join on institution",
        "join",
        (
            Query(
                "SELECT SUM(a.weight_kg) FROM episode a "
                "JOIN episode b ON a.institution = b.institution"
            ),
            Query(
                "SELECT SUM(a.weight_kg) FROM episode a "
                f"JOIN episode b ON a.institution = b.institution WHERE NOT (a.{ONE})"
            ),
        ),
        _diff,
        divisors=("same_institution",),
    ),
    Attack(
        "self-join on event",
        "join",
        (
            Query(
                "SELECT SUM(e.weight_kg) FROM episode e "
                "JOIN custody_event a ON e.coi_id = a.coi_id "
                "JOIN custody_event b ON a.event = b.event"
            ),
            Query(
                "SELECT SUM(e.weight_kg) FROM episode e "
                "JOIN custody_event a ON e.coi_id = a.coi_id "
                f"JOIN custody_event b ON a.event = b.event WHERE NOT (e.{ONE})"
            ),
        ),
        _diff,
        divisors=("custody_rows", "same_event"),
    ),
    Attack(
        "custody self-join on institution counts rows",
        "join",
        (
            Query(
                "SELECT COUNT(*) FROM custody_event a "
                "JOIN custody_event b ON a.institution = b.institution "
                "JOIN episode e ON e.coi_id = a.coi_id"
            ),
            Query(
                "SELECT COUNT(*) FROM custody_event a "
                "JOIN custody_event b ON a.institution = b.institution "
                "JOIN episode e ON e.coi_id = a.coi_id WHERE e.age <= 80"
            ),
        ),
        _diff,
        target="custody_pairs",
        chance=WEIGHT_CHANCE,  # COUNT(*) at 20 rows per patient: scale 30
    ),
    Attack(
        "custody rows of one patient",
        "join",
        (
            Query("SELECT COUNT(*) FROM custody_event c JOIN episode e ON c.coi_id = e.coi_id"),
            Query(
                "SELECT COUNT(*) FROM custody_event c JOIN episode e ON c.coi_id = e.coi_id "
                "WHERE e.age <= 80"
            ),
        ),
        _diff,
        target="custody_rows",
        chance=WEIGHT_CHANCE,
    ),
    # -- averaging repeated answers within the budget (20 answers at ε = 1) -------------
    Attack(
        "averaged clamped differences",
        "averaging",
        (
            Query("SELECT SUM(CLAMP(weight_kg, 100, 150) - 125) FROM episode"),
            Query(f"SELECT SUM(CLAMP(weight_kg, 100, 150) - 125) FROM episode WHERE NOT ({ONE})"),
        ),
        _averaged(125.0),
        repeat=10,
    ),
    Attack(
        "averaged indicator sums",
        "averaging",
        (Query(f"SELECT SUM(CLAMP(weight_kg * {IND}, 100, 150) - 100) FROM episode"),),
        _averaged_single(100.0),
        repeat=20,
    ),
    Attack(
        "averaged count differences",
        "averaging",
        (
            Query("SELECT COUNT(*) FROM episode"),
            Query("SELECT COUNT(*) FROM episode WHERE age <= 80"),
        ),
        _averaged(0.0),
        target="old",
        repeat=10,
        chance=AVERAGE_CHANCE,
    ),
    # -- /fit with a one-hot feature for the record ---------------------------------------
    Attack(
        "fit one-hot case",
        "fit",
        (Fit((f"CASE WHEN {ONE} THEN 1 ELSE 0 END",), "weight_kg"),),
        _fit_linear,
    ),
    Attack(
        "fit predicate-free one-hot",
        "fit",
        (Fit((IND,), "weight_kg"),),
        _fit_linear,
    ),
    Attack(
        "fit logistic one-hot",
        "fit",
        (Fit((f"CASE WHEN {ONE} THEN 1 ELSE 0 END",), "CAST(bridging AS INT)", "logistic"),),
        _fit_logistic,
        target="bridging",
        chance=0.15,  # measured 0.06 (400 runs)
    ),
]

# -- run-time errors that would fire on the singled-out record only ------------------------
# (name, sql, fires): ``fires`` when plain DuckDB raises on the pool with the record and not
# on the pool without it, which the suite checks.
ERROR_ORACLES: list[tuple[str, str, bool]] = [
    (
        "cast of a string in where",
        "SELECT COUNT(*) FROM episode "
        f"WHERE CAST(CASE WHEN {ONE} THEN 'x' ELSE '1' END AS INT) = 1",
        True,
    ),
    ("integer modulo zero", "SELECT COUNT(*) FROM episode WHERE 1 % (age - 97) = 0", True),
    ("integer division by zero", "SELECT COUNT(*) FROM episode WHERE 1 // (97 - age) >= 0", True),
    (
        "division by one minus a flag",
        "SELECT COUNT(*) FROM episode WHERE 1 / (1 - FLOOR(age / 97)) > 0",
        False,  # DuckDB divides doubles to infinity, no error
    ),
    (
        "tinyint overflow at age 97",
        "SELECT COUNT(*) FROM episode WHERE CAST(age + 31 AS TINYINT) > 0",
        True,
    ),
    (
        "tinyint overflow tells weight above 63.5",
        f"SELECT COUNT(*) FROM episode WHERE CAST(weight_kg * 2 * CAST({ONE_AGE} AS INT) "
        "AS TINYINT) >= 0",
        True,
    ),
    (
        "modulo zero in a sum",
        "SELECT SUM(LEAST(GREATEST(100 % (age - 97), 0), 100)) FROM episode",
        True,
    ),
    (
        "modulo zero in a group key",
        "SELECT (1 % (age - 97)) = 0 AS g, COUNT(*) FROM episode GROUP BY 1",
        True,
    ),
    (
        "cast in a count",
        f"SELECT COUNT(CAST(CASE WHEN {ONE_AGE} THEN 'x' ELSE '1' END AS INT)) FROM episode",
        True,
    ),
    (
        "division by zero in a case",
        "SELECT AVG(CASE WHEN 1 // (97 - age) > 0 THEN 1 ELSE 0 END) FROM episode",
        True,
    ),
    (
        "modulo zero on the aggregate",
        "SELECT 1 % (COUNT(*) - 450) FROM episode",
        True,
    ),
]

# -- the whole row through a table alias ---------------------------------------------------
WHOLE_ROW: list[tuple[str, str]] = [
    (
        "cast alias to varchar",
        "SELECT COUNT(*) FROM episode e WHERE CAST(e AS VARCHAR) LIKE '%123.456%'",
    ),
    ("count of alias", "SELECT COUNT(e) FROM episode e"),
    ("group by alias", "SELECT e, COUNT(*) FROM episode e GROUP BY e"),
    ("alias is not null", "SELECT COUNT(*) FROM episode e WHERE e IS NOT NULL"),
    ("alias in clamped sum", "SELECT SUM(CLAMP(CAST(e AS DOUBLE), 0, 1)) FROM episode e"),
    (
        "table name as value",
        "SELECT COUNT(*) FROM episode WHERE CAST(episode AS VARCHAR) LIKE '%SCD%'",
    ),
    (
        "joined alias",
        "SELECT COUNT(*) FROM episode e JOIN batch b ON e.coi_id = b.coi_id "
        "WHERE CAST(b AS VARCHAR) LIKE '%x%'",
    ),
    (
        "alias in group key",
        "SELECT CAST(e AS VARCHAR) LIKE '%SCD%' AS hit, COUNT(*) FROM episode e GROUP BY 1",
    ),
    ("alias equals itself", "SELECT COUNT(*) FROM episode e WHERE e = e"),
    ("double-colon cast", "SELECT COUNT(*) FROM episode e WHERE e::VARCHAR ILIKE '%97%'"),
    (
        "lower of alias",
        "SELECT COUNT(*) FROM episode AS e WHERE LOWER(CAST(e AS VARCHAR)) LIKE '%scd%'",
    ),
    ("quoted alias", 'SELECT COUNT(*) FROM episode e WHERE "e" IS NOT NULL'),
    ("coalesce of alias", "SELECT COUNT(*) FROM episode e WHERE COALESCE(e, e) IS NOT NULL"),
    ("alias concatenated", "SELECT COUNT(*) FROM episode e WHERE e || '' LIKE '%SCD%'"),
    (
        "alias after using join",
        "SELECT COUNT(*) FROM episode e JOIN custody_event c USING (coi_id) "
        "WHERE CAST(c AS VARCHAR) LIKE '%x%'",
    ),
    (
        "alias in avg",
        "SELECT AVG(CASE WHEN CAST(e AS VARCHAR) LIKE '%SCD%' THEN 1 ELSE 0 END) FROM episode e",
    ),
]
WHOLE_ROW_FITS: list[tuple[str, Fit]] = [
    (
        "fit feature is the row",
        Fit(("CLAMP(CAST(e AS DOUBLE), 0, 1)",), "weight_kg", table="episode e"),
    ),
    (
        "fit filter on the row",
        Fit(("age",), "weight_kg", filters="CAST(episode AS VARCHAR) LIKE '%SCD%'"),
    ),
]

# -- structural refusals of the old suite (each must be a QueryRejected) ------------------
FORBIDDEN: list[tuple[str, str]] = [
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
    ("arg_min", "SELECT ARG_MIN(weight_kg, age) FROM episode"),
    ("list", "SELECT LIST(weight_kg) FROM episode"),
    ("array_agg", "SELECT ARRAY_AGG(weight_kg) FROM episode"),
    ("string_agg", "SELECT STRING_AGG(site, ',') FROM episode"),
    ("histogram", "SELECT HISTOGRAM(weight_kg) FROM episode"),
    ("window", "SELECT SUM(weight_kg) OVER (ORDER BY age) FROM episode"),
    ("row_number", "SELECT COUNT(*), ROW_NUMBER() OVER () FROM episode"),
    ("qualify", "SELECT COUNT(*) FROM episode QUALIFY ROW_NUMBER() OVER () = 1"),
    ("filter clause", "SELECT AVG(weight_kg) FILTER (WHERE age = 97) FROM episode"),
    ("read_csv", "SELECT COUNT(*) FROM read_csv('/etc/passwd')"),
    ("read_parquet", "SELECT COUNT(*) FROM read_parquet('/tmp/*.parquet')"),
    ("glob", "SELECT COUNT(*) FROM glob('/*')"),
    ("file path as table", "SELECT COUNT(*) FROM '/etc/passwd'"),
    ("copy", "COPY episode TO '/tmp/leak.csv'"),
    ("attach", "ATTACH '/tmp/leak.db' AS x"),
    ("install", "INSTALL httpfs"),
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
    ("link table", "SELECT COUNT(*) FROM __link_lot"),
    ("internal pid column", "SELECT COUNT(__pid) FROM episode"),
    ("internal pid in where", "SELECT COUNT(*) FROM episode WHERE __pid = 'c_inst_c_0'"),
    ("subquery in from", "SELECT COUNT(*) FROM (SELECT * FROM episode) t"),
    ("cte", "WITH t AS (SELECT weight_kg FROM episode) SELECT COUNT(*) FROM t"),
    ("scalar subquery", "SELECT COUNT(*), (SELECT weight_kg FROM episode LIMIT 1) FROM episode"),
    ("in subquery", "SELECT COUNT(*) FROM episode WHERE age IN (SELECT age FROM episode)"),
    ("exists", "SELECT COUNT(*) FROM episode WHERE EXISTS (SELECT 1 FROM episode)"),
    ("union rows", "SELECT COUNT(*) FROM episode UNION ALL SELECT weight_kg FROM episode"),
    ("union aggregate with raw", "SELECT AVG(age) FROM episode UNION SELECT age FROM episode"),
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
    ("group by near-unique", "SELECT weight_kg, COUNT(*) FROM episode GROUP BY weight_kg"),
    ("group by a string without domain", "SELECT site, COUNT(*) FROM episode GROUP BY site"),
    ("order by suppressed", "SELECT weight_kg, COUNT(*) FROM episode GROUP BY 1 ORDER BY 2 DESC"),
    ("cross join", "SELECT COUNT(*) FROM episode CROSS JOIN custody_event"),
    ("comma join", "SELECT COUNT(*) FROM episode, custody_event"),
    ("non-equi join", "SELECT COUNT(*) FROM episode e JOIN batch b ON e.age > b.culture_days"),
    ("natural join", "SELECT COUNT(*) FROM episode NATURAL JOIN batch"),
    ("positional join", "SELECT COUNT(*) FROM episode POSITIONAL JOIN batch"),
    ("asof join", "SELECT COUNT(*) FROM episode e ASOF JOIN batch b ON e.age >= b.viability"),
    ("comment hides star", "SELECT /* COUNT(*) */ * FROM episode"),
    ("line comment second statement", "SELECT COUNT(*) FROM episode --\n; SELECT * FROM episode"),
    ("mixed case min", "SeLeCt mIn(weight_kg) FrOm EpIsOdE"),
    ("quoted function name", 'SELECT "min"(weight_kg) FROM episode'),
    ("dollar quoted", "SELECT COUNT(*) FROM episode WHERE site = $$x$$; COPY episode TO 'x'"),
    ("parameter", "SELECT COUNT(*) FROM episode WHERE age = $1"),
    ("having singles out", "SELECT sex, COUNT(*) FROM episode GROUP BY sex HAVING MAX(age) > 96"),
    ("lambda", "SELECT COUNT(*), SUM(list_sum(list_transform([age], lambda x: x))) FROM episode"),
    ("md5 of quasi", "SELECT MD5(site), COUNT(*) FROM episode GROUP BY 1"),
    ("regexp on name", "SELECT COUNT(*) FROM episode WHERE regexp_matches(site, 'inst_c')"),
    ("rollup totals", "SELECT indication, SUM(age) FROM episode GROUP BY ROLLUP (indication)"),
    ("distinct", "SELECT DISTINCT weight_kg FROM episode"),
    ("offset walk", "SELECT sex, COUNT(*) FROM episode GROUP BY 1 LIMIT 1 OFFSET 1"),
    ("unbounded sum", "SELECT SUM(age % 7) FROM episode"),
    ("unbounded string sum", "SELECT SUM(CAST(age AS VARCHAR)) FROM episode"),
    ("too many bins", "SELECT CEIL(weight_kg / 0.0001) AS w, COUNT(*) FROM episode GROUP BY 1"),
    ("too many cells", "SELECT age * age * age AS p, COUNT(*) FROM episode GROUP BY 1"),
]
# (name, sql, keyword arguments of the request)
FORBIDDEN_TERMS: list[tuple[str, str, dict[str, object]]] = [
    ("epsilon above the agreement's", "SELECT COUNT(*) FROM episode", {"epsilon": 1.5}),
    ("epsilon not a number", "SELECT COUNT(*) FROM episode", {"epsilon": float("nan")}),
    ("epsilon zero", "SELECT COUNT(*) FROM episode", {"epsilon": 0.0}),
    ("negative epsilon", "SELECT COUNT(*) FROM episode", {"epsilon": -1.0}),
    ("rows per patient zero", "SELECT COUNT(*) FROM episode", {"rows_per_patient": 0}),
    ("rows per patient too many", "SELECT COUNT(*) FROM episode", {"rows_per_patient": 101}),
    ("rows per patient boolean", "SELECT COUNT(*) FROM episode", {"rows_per_patient": True}),
]

# -- inputs that must be refused or answered, never crash -----------------------------------
EDGE: list[tuple[str, Query]] = [
    (
        "clamp with two arguments in where",
        Query("SELECT COUNT(*) FROM episode WHERE CLAMP(age, 1) > 0"),
    ),
    ("clamp with two arguments in sum", Query("SELECT SUM(CLAMP(age, 1)) FROM episode")),
    (
        "clamp with two arguments as key",
        Query("SELECT COUNT(*) FROM episode GROUP BY CLAMP(age, 1)"),
    ),
    (
        "clamp with one argument in where",
        Query("SELECT COUNT(*) FROM episode WHERE CLAMP(age) > 0"),
    ),
    ("clamp with four arguments", Query("SELECT SUM(CLAMP(age, 0, 1, 2)) FROM episode")),
    ("clamp bounds reversed", Query("SELECT SUM(CLAMP(age, 10, 0)) FROM episode")),
    (
        "clamp bounds not numbers",
        Query("SELECT COUNT(*) FROM episode WHERE CLAMP(age, 'a', 'b') > 0"),
    ),
    ("huge clamp in sum", Query("SELECT SUM(CLAMP(weight_kg, -1e308, 1e308)) FROM episode")),
    ("huge clamp in avg", Query("SELECT AVG(CLAMP(weight_kg, -1e308, 1e308)) FROM episode")),
    (
        "huge clamp in var_pop",
        Query("SELECT VAR_POP(CLAMP(weight_kg, -1e200, 1e200)) FROM episode"),
    ),
    ("clamp beyond double", Query("SELECT SUM(CLAMP(weight_kg, 0, 1e400)) FROM episode")),
    ("zero-width clamp in sum", Query("SELECT SUM(CLAMP(weight_kg, 0, 0)) FROM episode")),
    ("zero-width clamp in avg", Query("SELECT AVG(CLAMP(weight_kg, 5, 5)) FROM episode")),
    ("zero-width clamp in var_pop", Query("SELECT VAR_POP(CLAMP(weight_kg, 5, 5)) FROM episode")),
    ("subnormal clamp", Query("SELECT SUM(CLAMP(weight_kg, 0, 1e-320)) FROM episode")),
    ("exp of a clamp", Query("SELECT SUM(EXP(CLAMP(age, 0, 1000)) * 1000) FROM episode")),
    ("tiny epsilon", Query("SELECT SUM(weight_kg) FROM episode", epsilon=1e-320)),
    ("smallest double epsilon", Query("SELECT SUM(weight_kg) FROM episode", epsilon=5e-324)),
    ("group by a literal", Query("SELECT 1 AS x, COUNT(*) FROM episode GROUP BY 1", keys=1)),
    ("group by null", Query("SELECT COUNT(*) FROM episode GROUP BY NULL")),
    ("division of aggregates by zero", Query("SELECT SUM(age) / 0 FROM episode")),
    ("limit zero", Query("SELECT COUNT(*) FROM episode LIMIT 0")),
    (
        "date part of a number",
        Query("SELECT COUNT(*) FROM episode WHERE date_part(age, 'year') > 0"),
    ),
    ("escape in like", Query("SELECT COUNT(*) FROM episode WHERE indication LIKE 'S%' ESCAPE '!'")),
    ("decimal cast with width", Query("SELECT SUM(CAST(age AS DECIMAL(3,0))) FROM episode")),
]
EDGE_FITS: list[tuple[str, Fit]] = [
    (
        "fit filter clamp with two arguments",
        Fit(("age",), "weight_kg", filters="CLAMP(age, 1) > 0"),
    ),
    ("fit feature clamp with two arguments", Fit(("CLAMP(age, 1)",), "weight_kg")),
    ("fit huge clamp feature", Fit(("CLAMP(age, -1e308, 1e308)",), "weight_kg")),
    ("fit huge clamp target", Fit(("age",), "CLAMP(weight_kg, -1e308, 1e308)")),
    (
        "fit two tables",
        Fit(("age",), "weight_kg", table="episode e JOIN batch b ON e.coi_id = b.coi_id"),
    ),
    ("fit grouped by injection", Fit(("age",), "weight_kg", filters="age > 0 GROUP BY sex")),
    ("fit extra sum by injection", Fit(("age), SUM(prior_lines",), "weight_kg")),
    ("fit unknown kind", Fit(("age",), "weight_kg", kind="tree")),
    ("fit no feature", Fit((), "weight_kg")),
    ("fit logistic target not 0/1", Fit(("age",), "weight_kg", kind="logistic")),
]

# -- columns the agreement does not cover --------------------------------------------------
COVERED = {
    "episode": ["indication", "age", "coi_id", "prior_lines"],
    "batch": ["culture_days", "coi_id", "lot_id", "din"],
}
UNCOVERED_COLUMNS = {"episode": ("weight_kg", "sex", "bridging", "site"), "batch": ("viability",)}
UNCOVERED: list[tuple[str, str]] = [
    ("in select", "SELECT SUM(weight_kg) FROM episode"),
    ("in where", "SELECT COUNT(*) FROM episode WHERE weight_kg > 100"),
    ("in group by", "SELECT sex, COUNT(*) FROM episode GROUP BY sex"),
    ("as a hidden group key", "SELECT COUNT(*) FROM episode GROUP BY sex"),
    ("in an average", "SELECT AVG(CLAMP(weight_kg, 0, 250)) FROM episode"),
    ("in a count", "SELECT COUNT(weight_kg) FROM episode"),
    ("in a variance", "SELECT VAR_POP(weight_kg) FROM episode"),
    ("in a case", "SELECT SUM(CASE WHEN sex = 'male' THEN 1 ELSE 0 END) FROM episode"),
    ("qualified", "SELECT SUM(e.weight_kg) FROM episode e"),
    ("quoted and upper case", 'SELECT SUM("WEIGHT_KG") FROM episode'),
    ("boolean in a key", "SELECT bridging, COUNT(*) FROM episode GROUP BY 1"),
    ("string in where", "SELECT COUNT(*) FROM episode WHERE site LIKE 'inst_c%'"),
    (
        "in a join condition",
        "SELECT COUNT(*) FROM episode e JOIN batch b ON e.coi_id = b.coi_id AND e.sex = b.din",
    ),
    ("in using", "SELECT COUNT(*) FROM episode e JOIN episode f USING (weight_kg)"),
    (
        "joined table's column",
        "SELECT AVG(b.viability) FROM episode e JOIN batch b ON e.coi_id = b.coi_id",
    ),
    ("in an output expression", "SELECT COUNT(*) + SUM(weight_kg) FROM episode"),
]
UNCOVERED_FITS: list[tuple[str, Fit]] = [
    ("fit feature", Fit(("weight_kg",), "age")),
    ("fit target", Fit(("age",), "weight_kg")),
    ("fit filter", Fit(("age",), "prior_lines", filters="sex = 'male'")),
    ("fit one-hot on it", Fit(("CASE WHEN sex = 'male' THEN 1 ELSE 0 END",), "age")),
    ("fit logistic target", Fit(("age",), "CAST(bridging AS INT)", kind="logistic")),
]


# -- noise calibration ----------------------------------------------------------------------
# (name, request, the exact answer in plain DuckDB, the most one patient's value moves it by
# per row (the CDM's public range), plain SQL for the most rows one patient has in the query)
# Joins are within a patient, as the gateway documents, so the exact self-join keeps a.coi_id
# = b.coi_id.
ROWS_CUSTODY = "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM custody_event GROUP BY coi_id)"
CALIBRATION: list[tuple[str, Query, str, float, str | None]] = [
    ("sum of weights", Query(WEIGHT), WEIGHT, 250.0, None),
    ("count", Query("SELECT COUNT(*) FROM episode"), "SELECT COUNT(*) FROM episode", 1.0, None),
    (
        "count of a case",
        Query("SELECT COUNT(CASE WHEN age <= 80 THEN 1 END) FROM episode"),
        "SELECT COUNT(CASE WHEN age <= 80 THEN 1 END) FROM episode",
        1.0,
        None,
    ),
    (
        "narrow clamp",
        Query(f"SELECT SUM(CLAMP(weight_kg * {IND}, 100, 150) - 100) FROM episode"),
        f"SELECT SUM(LEAST(GREATEST(weight_kg * {IND}, 100), 150) - 100) FROM episode",
        50.0,
        None,
    ),
    ("half the budget", Query(WEIGHT, epsilon=0.5), WEIGHT, 250.0, None),
    (
        "sum over a join",
        Query("SELECT SUM(e.weight_kg) FROM episode e JOIN custody_event c ON e.coi_id = c.coi_id"),
        "SELECT SUM(e.weight_kg) FROM episode e JOIN custody_event c ON e.coi_id = c.coi_id",
        250.0,
        ROWS_CUSTODY,
    ),
    (
        "rows of a self-join",
        Query(
            "SELECT COUNT(*) FROM custody_event a JOIN custody_event b "
            "ON a.institution = b.institution JOIN episode e ON e.coi_id = a.coi_id"
        ),
        "SELECT COUNT(*) FROM custody_event a JOIN custody_event b "
        "ON a.institution = b.institution AND a.coi_id = b.coi_id "
        "JOIN episode e ON e.coi_id = a.coi_id",
        1.0,
        f"SELECT m * m FROM ({ROWS_CUSTODY}) AS t(m)",
    ),
]
