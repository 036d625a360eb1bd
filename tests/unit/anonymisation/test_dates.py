"""Day offsets from an anchor, anchors per episode, coarsened dates."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonymisation.dates import anchor_table, coarsen, day_offsets, offsets_by_key

dates = st.datetimes(min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2060, 1, 1))
fast = settings(max_examples=80, deadline=None)


@fast
@given(st.lists(dates, min_size=1, max_size=20))
def test_anchor_itself_is_zero(values: list[dt.datetime]) -> None:
    s = pd.Series(values)
    assert (day_offsets(s, s) == 0).all()


@fast
@given(st.lists(dates, min_size=1, max_size=20), dates)
def test_order_preserved(values: list[dt.datetime], anchor: dt.datetime) -> None:
    s = pd.Series(sorted(values))
    offsets = day_offsets(s, pd.Series([anchor] * len(s)))
    assert offsets.is_monotonic_increasing


@fast
@given(
    st.lists(st.tuples(dates, dates), min_size=1, max_size=20),
    st.integers(min_value=-3000, max_value=3000),
)
def test_shift_invariance(pairs: list[tuple[dt.datetime, dt.datetime]], days: int) -> None:
    d = pd.Series([p[0] for p in pairs])
    a = pd.Series([p[1] for p in pairs])
    delta = pd.Timedelta(days=days)
    assert day_offsets(d, a).tolist() == day_offsets(d + delta, a + delta).tolist()


def test_strings_nulls_and_garbage() -> None:
    d = pd.Series(["2024-01-31", None, "not a date", "2024-02-02 10:00"])
    a = pd.Series(["2024-01-01", "2024-01-01", "2024-01-01", None])
    assert day_offsets(d, a).tolist() == [30, pd.NA, pd.NA, pd.NA]
    assert str(day_offsets(d, a).dtype) == "Int64"


def test_local_calendar_day_across_time_zones() -> None:
    # 23:30 at +05:00 is still the 10th locally (18:30 UTC); 01:00 at -05:00 is the 10th too
    d = pd.Series(["2024-01-10T23:30:00+05:00", "2024-01-10T01:00:00-05:00", "2024-01-10"])
    a = pd.Series(["2024-01-01"] * 3)
    assert day_offsets(d, a).tolist() == [9, 9, 9]
    aware = pd.Series(pd.to_datetime(["2024-03-31 00:30"]).tz_localize("Europe/London"))
    assert day_offsets(aware, pd.Series([pd.Timestamp("2024-03-30")])).tolist() == [1]


def test_anchor_table_and_lookup() -> None:
    coll = pd.DataFrame(
        {
            "coi_id": ["a", "a", "b", None, "c"],
            "collection_date": ["2024-01-05", "2024-01-01", "2024-02-01", "2020-01-01", None],
        }
    )
    anchors = anchor_table(coll)
    assert anchors.to_dict() == {"a": pd.Timestamp("2024-01-01"), "b": pd.Timestamp("2024-02-01")}
    events = pd.DataFrame(
        {"coi_id": ["a", "b", "c", "a"], "when": ["2024-01-31", "2024-02-01", "2024-01-01", None]}
    )
    out = offsets_by_key(events["when"], events["coi_id"], anchors)
    assert out.tolist() == [30, 0, pd.NA, pd.NA]


def test_day_offsets_length_mismatch() -> None:
    with pytest.raises(ValueError):
        day_offsets(pd.Series(["2024-01-01"]), pd.Series([], dtype=object))


def test_coarsen() -> None:
    s = pd.Series(["2024-03-17", None, "2023-12-31T23:00:00-08:00", "bad"])
    assert coarsen(s, "month").tolist() == ["2024-03", None, "2023-12", None]
    assert coarsen(s, "year").tolist() == ["2024", None, "2023", None]
    with pytest.raises(ValueError):
        coarsen(s, "week")
