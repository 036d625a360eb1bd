"""Column transforms, vectorised over a column's distinct values rather than its rows."""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd

PSEUDONYM_HEX = 32  # 128 bits: collisions are not a practical concern


def pseudonymise(values: pd.Series, key: bytes) -> pd.Series:
    """Keyed HMAC-SHA256 pseudonyms: the same value gives the same pseudonym in every table
    and institution (so links survive pooling), and nobody without the key can reverse or
    recompute them. Computed once per distinct value."""
    present = values.dropna()
    distinct = pd.unique(present.astype(str).str.strip())
    table = {
        v: hmac.new(key, v.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]
        for v in distinct
    }
    out = values.astype("object").where(values.isna(), values.astype(str).str.strip().map(table))
    return out


def age_band(values: pd.Series, width: int = 5, top: int = 90) -> pd.Series:
    """Ages as bands (``35-39``) with everything from ``top`` up as ``90+``."""
    ages = pd.to_numeric(values, errors="coerce")
    low = (np.floor(ages / width) * width).astype("Int64")
    bands = low.astype(str) + "-" + (low + width - 1).astype(str)
    bands = bands.where(ages < top, f"{top}+")
    return bands.where(ages.notna(), None)


def round_to(values: pd.Series, step: float) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce")
    return (np.round(numbers / step) * step).where(numbers.notna())


def month_of(values: pd.Series) -> pd.Series:
    """Dates coarsened to their month (``2024-03``), for dates with no anchor to offset from."""
    dates = pd.to_datetime(values, errors="coerce", utc=True)
    return dates.dt.strftime("%Y-%m").where(dates.notna(), None)
