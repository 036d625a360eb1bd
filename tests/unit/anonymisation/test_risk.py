"""k-anonymity, l-diversity and enforce_k on hand-checked tables; generalisation steps."""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonymisation.generalise import (
    age_band,
    merge_rare,
    round_to,
    standard_generalisers,
    top_bottom_code,
)
from anonymisation.risk import enforce_k, equivalence_class_sizes, k_anonymity, l_diversity

QI = ["sex", "age"]


def hand_table() -> pd.DataFrame:
    # classes: (f, 30) x3 with outcomes {a, b, b}; (m, 40) x2 with {a, a}; (m, 50) x1 with {c}
    return pd.DataFrame(
        {
            "sex": ["f", "f", "f", "m", "m", "m"],
            "age": [30, 30, 30, 40, 40, 50],
            "outcome": ["a", "b", "b", "a", "a", "c"],
        }
    )


def test_k_and_l_by_hand() -> None:
    t = hand_table()
    assert equivalence_class_sizes(t, QI).tolist() == [3, 3, 3, 2, 2, 1]
    assert k_anonymity(t, QI) == 1
    assert l_diversity(t, QI, "outcome") == 1
    top = t.iloc[:5]
    assert k_anonymity(top, QI) == 2
    assert l_diversity(top, QI, "outcome") == 1  # (m, 40) all "a": attribute disclosure
    assert l_diversity(t.iloc[:3], QI, "outcome") == 2
    assert k_anonymity(t, ["sex"]) == 3
    assert k_anonymity(t, []) == 6
    assert k_anonymity(t.iloc[:0], QI) == 0


def test_null_is_its_own_value() -> None:
    t = pd.DataFrame({"sex": ["f", None, None, "f"], "age": [1, 1, 1, 1]})
    assert equivalence_class_sizes(t, QI).tolist() == [2, 2, 2, 2]
    t.loc[3, "sex"] = None
    assert equivalence_class_sizes(t, QI).tolist() == [1, 3, 3, 3]


def test_already_k_anonymous_is_returned_unchanged() -> None:
    t = pd.concat([hand_table().iloc[:3]] * 2, ignore_index=True)
    result = enforce_k(t, QI, k=3, generalisers={"age": [partial(age_band, width=10)]})
    assert result.frame is t
    assert result.steps == [] and result.cells_suppressed == 0 and result.rows_suppressed == 0
    assert result.k_before == result.k_after == 6
    assert result.max_risk == pytest.approx(1 / 6)


def test_generalisation_stops_at_first_sufficient_step() -> None:
    t = pd.DataFrame({"sex": ["f"] * 10, "age": list(range(30, 40)), "dose": range(10)})
    ladder = [partial(age_band, width=w) for w in (5, 10, 20)]
    result = enforce_k(t, QI, k=5, generalisers={"age": ladder}, max_suppression=0)
    assert result.k_before == 1 and result.k_after == 5
    assert result.frame["age"].tolist() == ["30-34"] * 5 + ["35-39"] * 5
    assert len(result.steps) == 1 and "5-year bands" in result.steps[0]
    assert result.cells_suppressed == 0 and not result.budget_exceeded
    assert result.frame["dose"].tolist() == list(range(10))


def test_cell_suppression_of_the_rescuing_qi() -> None:
    # five (f, 30, O+) rows, five (m, 30, O+) rows, and five rows each unique only by sex
    rows = [("f", 30, "O+")] * 5 + [("m", 30, "O+")] * 5
    rows += [(s, 30, "O+") for s in ("x1", "x2", "x3", "x4", "x5")]
    t = pd.DataFrame(rows, columns=["sex", "age", "abo"])
    result = enforce_k(t, ["sex", "age", "abo"], k=5, max_suppression=0.5)
    assert result.k_after == 5 and k_anonymity(result.frame, ["sex", "age", "abo"]) >= 5
    assert result.cells_by_column == {"sex": 5, "age": 0, "abo": 0}
    assert result.frame["sex"].iloc[10:].isna().all()
    assert result.frame["sex"].iloc[:10].notna().all()  # rows already safe are untouched
    assert result.rows_suppressed == 0 and not result.budget_exceeded
    assert "suppress sex in 5 rows" in result.steps[0]


def test_lone_outlier_is_dropped_and_budget_flagged() -> None:
    t = pd.DataFrame({"sex": ["f"] * 5 + ["m"], "age": [30] * 5 + [99], "v": range(6)})
    result = enforce_k(t, QI, k=5, max_suppression=0.05)
    assert result.k_after == 5 and len(result.frame) == 5 and result.rows_suppressed == 1
    assert result.budget_exceeded
    assert str(result.frame["age"].dtype) == "int64"


def test_integer_columns_keep_integers_after_suppression() -> None:
    t = pd.DataFrame({"sex": ["f"] * 6 + ["m"] * 4, "age": [30] * 5 + [31] * 5})
    result = enforce_k(t, QI, k=2, max_suppression=1)
    assert k_anonymity(result.frame, QI) >= 2
    assert str(result.frame["age"].dtype) in ("int64", "Int64")


frames = st.lists(
    st.tuples(st.sampled_from("ab"), st.integers(0, 4), st.sampled_from(["x", "y", None])),
    min_size=1,
    max_size=60,
).map(lambda rows: pd.DataFrame(rows, columns=["s", "a", "c"]))


@settings(max_examples=80, deadline=None)
@given(frames, st.integers(1, 6))
def test_enforce_k_reaches_k_and_only_touches_violating_rows(t: pd.DataFrame, k: int) -> None:
    quasi = ["s", "a", "c"]
    before = equivalence_class_sizes(t, quasi)
    result = enforce_k(t, quasi, k=k, sensitive="c")
    out = result.frame
    assert len(out) == 0 or k_anonymity(out, quasi) >= k
    assert result.k_after == (k_anonymity(out, quasi) if len(out) else 0)
    safe = before.index[before >= k]
    assert set(safe) <= set(out.index)
    pd.testing.assert_frame_equal(
        out.loc[safe].astype(object), t.loc[safe].astype(object), check_dtype=False
    )
    assert result.rows_suppressed == len(t) - len(out)


def test_residual_risk_summary() -> None:
    t = pd.DataFrame({"sex": ["f"] * 12 + ["m"] * 5, "age": [1] * 17})
    r = enforce_k(t, QI, k=5)
    assert r.k_after == 5 and r.max_risk == pytest.approx(0.2)
    assert r.share_small_classes == pytest.approx(5 / 17)
    assert r.average_risk == pytest.approx((12 / 12 + 5 / 5) / 17)
    assert set(r.to_dict()) >= {"k_before", "k_after", "steps", "cells_suppressed", "max_risk"}


def test_generalisers_on_a_larger_table_are_fast() -> None:
    rng = np.random.default_rng(1)
    n = 100_000
    t = pd.DataFrame(
        {
            "site": rng.choice([f"s{i}" for i in range(40)], n),
            "indication": rng.choice(
                ["ALL", "LBCL", "FL", "MM", "TDT"], n, p=[0.3, 0.3, 0.2, 0.19, 0.01]
            ),
            "age": rng.integers(1, 100, n),
            "sex": rng.choice(["female", "male"], n),
            "weight_kg": rng.normal(75, 15, n).round(1),
        }
    )
    quasi = list(t.columns)
    result = enforce_k(t, quasi, k=5, generalisers=standard_generalisers(quasi))
    assert k_anonymity(result.frame, quasi) >= 5
    assert any(s.startswith("generalise age") for s in result.steps)


def test_generalise_functions() -> None:
    bands, how = age_band(pd.Series([3, 37, 89, 90, 120, None]))
    assert bands.tolist() == ["0-4", "35-39", "85-89", "90+", "90+", None]
    assert "90+" in how
    assert age_band(pd.Series([85, 95]), width=20)[0].tolist() == ["80-89", "90+"]
    assert round_to(pd.Series([71.2, 73.0, None]), 5)[0].tolist()[:2] == [70.0, 75.0]
    merged, how = merge_rare(pd.Series(["ALL", "ALL", "TDT", "SCD", None]), 2)
    assert merged.tolist() == ["ALL", "ALL", "other", "other", None]
    assert "SCD, TDT" in how
    assert merge_rare(pd.Series(["a", "a"]), 2)[1].startswith("no category")
    coded, how = top_bottom_code(pd.Series([1, 50, 300]), lower=2, upper=250)
    assert coded.tolist() == [2, 50, 250] and "1 values" in how
