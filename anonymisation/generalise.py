"""Generalisation of quasi-identifiers: bands, rounding, rare-category merging, top/bottom
coding. Each function returns ``(series, description)`` so the step can be reported.

Functions work over the column's distinct values and map back, so they stay fast on
millions of rows; nulls stay null. :func:`standard_generalisers` gives fine-to-coarse
ladders for the common-data-model columns, for :func:`anonymisation.risk.enforce_k`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import numpy as np
import pandas as pd


def _by_distinct(values: pd.Series, fn: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """Apply a vectorised ``fn`` to the distinct non-null values and map back by position."""
    codes, uniques = pd.factorize(values)
    out = pd.Series(np.full(len(values), None, dtype=object), index=values.index)
    if len(uniques) == 0:
        return out
    mapped = fn(pd.Series(uniques)).astype("object")
    mapped = mapped.where(mapped.notna(), None).to_numpy()
    present = codes >= 0
    out[present] = mapped[codes[present]]
    return out


def age_band(values: pd.Series, width: int = 5, top: int = 90) -> tuple[pd.Series, str]:
    """Ages as bands of ``width`` years (``"35-39"``), everything from ``top`` up as ``"90+"``;
    the band under ``top`` is cut at ``top - 1`` so bands never overlap the top code."""

    def band(u: pd.Series) -> pd.Series:
        ages = pd.to_numeric(u, errors="coerce")
        low = np.floor(ages / width) * width
        high = np.minimum(low + width - 1, top - 1)
        text = pd.Series(
            [
                f"{int(lo)}-{int(hi)}" if lo == lo else None
                for lo, hi in zip(low, high, strict=True)
            ],
            dtype="object",
        )
        text = text.where(~(ages >= top), f"{top}+")
        return text.where(ages.notna(), None)

    return _by_distinct(values, band), f"age in {width}-year bands, {top}+ top-coded"


def round_to(values: pd.Series, step: float) -> tuple[pd.Series, str]:
    """Numbers rounded to the nearest multiple of ``step`` (e.g. weight to 5 kg)."""
    numbers = pd.to_numeric(values, errors="coerce")
    rounded = (np.round(numbers / step) * step).where(numbers.notna())
    return rounded, f"rounded to the nearest {step:g}"


def top_bottom_code(
    values: pd.Series, *, lower: float | None = None, upper: float | None = None
) -> tuple[pd.Series, str]:
    """Numbers clipped into ``[lower, upper]``: extreme values are the most identifying."""
    numbers = pd.to_numeric(values, errors="coerce")
    coded = numbers.clip(lower=lower, upper=upper)
    n_low = int((numbers < lower).sum()) if lower is not None else 0
    n_high = int((numbers > upper).sum()) if upper is not None else 0
    parts = []
    if lower is not None:
        parts.append(f"bottom-coded at {lower:g} ({n_low} values)")
    if upper is not None:
        parts.append(f"top-coded at {upper:g} ({n_high} values)")
    return coded, ", ".join(parts) or "no coding"


def merge_rare(values: pd.Series, min_count: int, other: str = "other") -> tuple[pd.Series, str]:
    """Categories seen fewer than ``min_count`` times become ``other``; the description
    names them, sorted. Nulls are not a category and are not counted."""
    counts = values.value_counts(dropna=True)
    rare = sorted(str(v) for v in counts.index[counts < min_count])
    if not rare:
        return values, f"no category below {min_count}"
    is_rare = values.isin(counts.index[counts < min_count])
    out = values.astype("object").where(~is_rare, other)
    return out, f"merged into {other!r} (fewer than {min_count}): {', '.join(rare)}"


def standard_generalisers(
    columns: Iterable[str], *, k: int = 5
) -> dict[str, list[Callable[[pd.Series], tuple[pd.Series, str]]]]:
    """Fine-to-coarse ladders for known columns: age bands 5 -> 10 -> 20 years, weights
    rounded to 5 -> 10 -> 20 kg, categorical columns (indication, ABO/Rh, sites) with
    categories rarer than ``k`` and then ``2k`` merged into ``other``."""
    ladders: dict[str, list[Callable[[pd.Series], tuple[pd.Series, str]]]] = {}
    categorical = ("indication", "abo_rh", "site", "facility", "collection_facility")
    for name in columns:
        if name == "age" or name.endswith("_age"):
            ladders[name] = [partial(age_band, width=w) for w in (5, 10, 20)]
        elif name.startswith("weight"):
            ladders[name] = [partial(round_to, step=s) for s in (5, 10, 20)]
        elif name in categorical or name.endswith("_site"):
            ladders[name] = [partial(merge_rare, min_count=c) for c in (k, 2 * k)]
    return ladders
