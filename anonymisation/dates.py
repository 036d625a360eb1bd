"""Dates to day offsets from an episode anchor (its first collection), or coarsened dates.

Calendar dates are quasi-identifiers; intervals between events are what researchers need
(vein-to-vein time, collection to release). So every date becomes the number of calendar
days since the row's anchor. Where no anchor exists, dates are coarsened to month or year.

Time zones: a timestamp counts on the calendar day of its *own local wall clock* (a product
collected at 23:30 local time was collected that day, whatever UTC says). Timezone-aware
values are read in their own zone and the zone dropped; naive values are taken as they are;
mixed offsets in one column are handled value by value. Everything is vectorised over the
column's distinct values; unparseable values and nulls give nulls.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

_DAY_NS = 86_400 * 10**9


def _to_local(values: pd.Series) -> pd.Series:
    """Naive ``datetime64[ns]`` local wall-clock times (NaT where missing or unparseable)."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_localize(None).astype("datetime64[ns]")
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return values.astype("datetime64[ns]")
    codes, uniques = pd.factorize(values)
    if len(uniques) == 0:
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            parsed = pd.to_datetime(pd.Series(uniques), errors="coerce", format="mixed")
        except (ValueError, TypeError):
            parsed = pd.Series(uniques, dtype="object")
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        local = parsed.dt.tz_localize(None)
    elif pd.api.types.is_datetime64_any_dtype(parsed.dtype):
        local = parsed
    else:  # mixed offsets: parse each distinct value in its own zone
        local = pd.Series([_one_local(u) for u in uniques], dtype="datetime64[ns]")
    arr = local.astype("datetime64[ns]").to_numpy()
    out = np.where(codes >= 0, arr[np.maximum(codes, 0)], np.datetime64("NaT", "ns"))
    return pd.Series(out, index=values.index, dtype="datetime64[ns]")


def _one_local(value: object) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return pd.NaT
    if ts is pd.NaT:
        return pd.NaT
    return ts.tz_localize(None) if ts.tzinfo is not None else ts


def _day_numbers(values: pd.Series) -> pd.Series:
    """Calendar day numbers (days since 1970-01-01, local wall clock) as ``Int64``."""
    local = _to_local(values)
    ns = local.to_numpy().astype("datetime64[ns]").view("int64")
    days = np.floor_divide(ns, _DAY_NS)
    return pd.Series(days, index=values.index, dtype="Int64").mask(local.isna())


def day_offsets(dates: pd.Series, anchors: pd.Series) -> pd.Series:
    """Whole calendar days from each row's anchor to its date (``Int64``; null if either is).

    ``anchors`` is aligned with ``dates`` row by row, e.g.
    ``frame["coi_id"].map(anchor_table(collections))``."""
    if len(dates) != len(anchors):
        raise ValueError("dates and anchors must have the same length")
    d = _day_numbers(dates)
    a = _day_numbers(pd.Series(anchors.to_numpy(), index=dates.index))
    return (d - a).astype("Int64")


def anchor_table(
    collection_frame: pd.DataFrame, key: str = "coi_id", date: str = "collection_date"
) -> pd.Series:
    """First (earliest calendar) collection date per ``key``; rows without a key are ignored."""
    local = _to_local(collection_frame[date])
    frame = pd.DataFrame({"key": collection_frame[key].to_numpy(), "date": local.to_numpy()})
    first = frame.dropna().groupby("key", sort=True)["date"].min()
    first.index.name = key
    first.name = date
    return first


def offsets_by_key(dates: pd.Series, keys: pd.Series, anchors: pd.Series) -> pd.Series:
    """Day offsets with each row's anchor looked up by key (e.g. ``coi_id``) in ``anchors``
    (the output of :func:`anchor_table`)."""
    looked_up = keys.map(anchors)
    return day_offsets(dates, pd.Series(looked_up.to_numpy(), index=dates.index))


def coarsen(dates: pd.Series, unit: str = "month") -> pd.Series:
    """Dates as ``"2024-03"`` (month) or ``"2024"`` (year); nulls stay ``None``."""
    formats = {"month": "%Y-%m", "year": "%Y"}
    if unit not in formats:
        raise ValueError(f"unit must be 'month' or 'year', not {unit!r}")
    local = _to_local(dates)
    codes, uniques = pd.factorize(local)
    text = pd.Series(pd.DatetimeIndex(uniques).strftime(formats[unit]), dtype="object")
    out = pd.Series(np.full(len(dates), None, dtype=object), index=dates.index)
    present = codes >= 0
    out[present] = text.to_numpy()[codes[present]]
    return out
