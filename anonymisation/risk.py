"""Re-identification risk of a table's quasi-identifiers, and enforcing k-anonymity.

Equivalence classes are rows with equal quasi-identifier (QI) values. A null QI cell (missing
or suppressed) is treated as one more value, so classes are exactly what
``groupby(quasi, dropna=False)`` gives. That is conservative: a suppressed cell could only
make a record match *more* records, never fewer, so the ``k`` reported is a lower bound.
(Treating a null as a wildcard, as some tools do, over-states k: an attacker who knows the
target's suppressed value can rule out the records that show a different one.)

Everything runs on integer codes (one factorisation per column, classes by combining codes
and ``np.bincount``), so a million rows with five QIs take well under a second per pass.

:func:`enforce_k` first generalises, then suppresses locally:

1. **Generalisation** (global recoding). ``generalisers`` maps a QI to a fine-to-coarse
   ladder of callables. Steps are taken round-robin in the mapping's order (first step of
   every column, then second steps, ...), each applied to the *original* column, until the
   rows in classes smaller than ``k`` are within the suppression budget
   (``max_suppression`` x rows) or the ladders are exhausted.
2. **Local cell suppression**. While rows violate ``k``: for each QI, simulate nulling it in
   the violating rows and count how many would then sit in classes of size >= ``k``; null the
   QI that rescues the most (the most identifying one for those rows), only in the rows it
   rescues. If no single QI rescues any row, null the QI with most distinct values among the
   violating rows in all of them (this merges them for the next round).
3. **Row suppression**, the last resort: rows whose QIs are all null but still fewer than
   ``k`` are dropped (they cannot be generalised further).

Cells are suppressed rather than rows because the other columns (outcomes, process
measurements) stay usable. If more rows than the budget had to be touched, k is still
reached and ``budget_exceeded`` is set: privacy first, the caller decides whether to publish.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

GeneraliserStep = Callable[[pd.Series], "pd.Series | tuple[pd.Series, str]"]


def _codes(values: pd.Series) -> np.ndarray:
    """Integer codes with null = 0 and values 1..m."""
    codes, _ = pd.factorize(values, use_na_sentinel=True)
    return codes.astype(np.int64) + 1


def _combined_key(columns: Sequence[np.ndarray], n: int) -> tuple[np.ndarray, int]:
    """One integer key per row (equal iff all codes are equal) and its upper bound.

    Mixed-radix combination; the key is re-densified only when it would overflow."""
    key = np.zeros(n, dtype=np.int64)
    span = 1
    for col in columns:
        card = int(col.max(initial=0)) + 1
        if span * card > 2**62:
            key = pd.factorize(key)[0].astype(np.int64)
            span = int(key.max(initial=0)) + 1
        key = key * card + col
        span *= card
    return key, span


def _groups(columns: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Dense class ids (0..g-1) of the rows."""
    key, _ = _combined_key(columns, n)
    return pd.factorize(key)[0].astype(np.int64)


def _sizes_from_codes(columns: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Each row's class size; ``np.bincount`` straight on the key when its range is small."""
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    key, span = _combined_key(columns, n)
    if span > max(4 * n, 1 << 22):
        key = pd.factorize(key)[0]
    return np.bincount(key)[key]


def equivalence_class_sizes(frame: pd.DataFrame, quasi: Sequence[str]) -> pd.Series:
    """Size of each row's equivalence class on ``quasi`` (aligned with ``frame``)."""
    n = len(frame)
    sizes = _sizes_from_codes([_codes(frame[c]) for c in quasi], n)
    return pd.Series(sizes, index=frame.index, name="class_size")


def k_anonymity(frame: pd.DataFrame, quasi: Sequence[str]) -> int:
    """Smallest equivalence class size (0 for an empty table)."""
    if len(frame) == 0:
        return 0
    return int(equivalence_class_sizes(frame, quasi).min())


def _l_from_codes(codes: Sequence[np.ndarray], sens: np.ndarray) -> int:
    n = len(sens)
    if n == 0:
        return 0
    groups = _groups(codes, n)
    radix = int(sens.max()) + 1
    present = sens > 0
    pairs = pd.unique(groups[present] * radix + sens[present])
    per_class = np.bincount(pairs // radix, minlength=int(groups.max()) + 1)
    return int(per_class.min())


def l_diversity(frame: pd.DataFrame, quasi: Sequence[str], sensitive: str) -> int:
    """Smallest number of distinct non-null ``sensitive`` values in any class (distinct
    l-diversity; 0 for an empty table or a class whose sensitive values are all null)."""
    return _l_from_codes([_codes(frame[c]) for c in quasi], _codes(frame[sensitive]))


@dataclass
class RiskResult:
    """Outcome of :func:`enforce_k`: the released frame and what it cost."""

    frame: pd.DataFrame
    k_target: int
    k_before: int
    k_after: int
    l: int | None = None  # noqa: E741 - the standard name of l-diversity
    rows_suppressed: int = 0
    cells_suppressed: int = 0
    cells_by_column: dict[str, int] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    max_risk: float = 0.0  # 1 / k_after: worst-case probability of re-identifying a record
    average_risk: float = 0.0  # mean of 1 / class size: expected share re-identified
    share_small_classes: float = 0.0  # share of records in classes of size < 10
    budget_exceeded: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": int(len(self.frame)),
            "k_target": self.k_target,
            "k_before": self.k_before,
            "k_after": self.k_after,
            "l": self.l,
            "rows_suppressed": self.rows_suppressed,
            "cells_suppressed": self.cells_suppressed,
            "cells_by_column": dict(self.cells_by_column),
            "steps": list(self.steps),
            "max_risk": self.max_risk,
            "average_risk": self.average_risk,
            "share_small_classes": self.share_small_classes,
            "budget_exceeded": self.budget_exceeded,
        }


def _residual(sizes: np.ndarray) -> tuple[int, float, float, float]:
    if len(sizes) == 0:
        return 0, 0.0, 0.0, 0.0
    k = int(sizes.min())
    return k, 1.0 / k, float(np.mean(1.0 / sizes)), float(np.mean(sizes < 10))


def _apply_step(step: GeneraliserStep, values: pd.Series) -> tuple[pd.Series, str]:
    out = step(values)
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, getattr(step, "__name__", repr(step))


def _kept_sizes(codes: list[np.ndarray], keep: np.ndarray, k: int) -> np.ndarray:
    """Class sizes among kept rows; dropped rows get ``k`` so they never count as violating."""
    if keep.all():
        return _sizes_from_codes(codes, len(keep))
    sizes = np.full(len(keep), k, dtype=np.int64)
    idx = np.flatnonzero(keep)
    sizes[idx] = _sizes_from_codes([c[idx] for c in codes], len(idx))
    return sizes


def _best_column(
    codes: list[np.ndarray], violating: np.ndarray, keep: np.ndarray, k: int
) -> tuple[int, np.ndarray]:
    """The QI whose nulling in the violating rows rescues most of them, and those rows."""
    best_j, best_rescued, best_cost = -1, np.zeros(0, dtype=np.int64), -1
    for j, col in enumerate(codes):
        pool = np.flatnonzero(((col == 0) | violating) & keep)
        others = [c[pool] for i, c in enumerate(codes) if i != j]
        sizes = _sizes_from_codes(others, len(pool))
        in_v = violating[pool]
        rescued = pool[in_v & (sizes >= k)]
        cost = int((col[rescued] != 0).sum())
        if len(rescued) > len(best_rescued) or (
            len(rescued) == len(best_rescued) and len(rescued) and cost < best_cost
        ):
            best_j, best_rescued, best_cost = j, rescued, cost
    return best_j, best_rescued


def enforce_k(
    frame: pd.DataFrame,
    quasi: Sequence[str],
    k: int = 5,
    *,
    generalisers: Mapping[str, Sequence[GeneraliserStep]] | None = None,
    max_suppression: float = 0.05,
    sensitive: str | None = None,
) -> RiskResult:
    """Make ``frame`` k-anonymous on ``quasi`` by generalisation, then local suppression.

    An already k-anonymous frame is returned as it is (the same object, no steps)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    quasi = list(quasi)
    n = len(frame)
    codes = [_codes(frame[c]) for c in quasi]
    sizes = _sizes_from_codes(codes, n)
    k_before = int(sizes.min()) if n else 0
    if n == 0 or k_before >= k:
        l_value = _l_from_codes(codes, _codes(frame[sensitive])) if sensitive else None
        k_after, max_risk, avg, small = _residual(sizes)
        return RiskResult(
            frame,
            k,
            k_before,
            k_after,
            l_value,
            max_risk=max_risk,
            average_risk=avg,
            share_small_classes=small,
        )

    budget = max_suppression * n
    steps: list[str] = []
    current: dict[str, pd.Series] = {}
    ladders = {c: list(s) for c, s in (generalisers or {}).items() if c in quasi}
    depth = max((len(s) for s in ladders.values()), default=0)
    violating_count = int((sizes < k).sum())
    for level in range(depth):
        for col, ladder in ladders.items():
            if violating_count <= budget:
                break
            if level >= len(ladder):
                continue
            values, how = _apply_step(ladder[level], frame[col])
            current[col] = values
            codes[quasi.index(col)] = _codes(values)
            sizes = _sizes_from_codes(codes, n)
            before, violating_count = violating_count, int((sizes < k).sum())
            steps.append(f"generalise {col}: {how} (rows below k: {before} -> {violating_count})")

    suppressed = np.zeros((n, len(quasi)), dtype=bool)
    keep = np.ones(n, dtype=bool)
    for _ in range(10 * len(quasi) + 10):
        violating = (sizes < k) & keep
        if not violating.any():
            break
        j, rescued = _best_column(codes, violating, keep, k)
        if len(rescued):
            cells = rescued[codes[j][rescued] != 0]
            steps.append(f"suppress {quasi[j]} in {len(cells)} rows ({len(rescued)} rows rescued)")
        else:
            idx = np.flatnonzero(violating)
            distinct = [len(np.unique(c[idx][c[idx] != 0])) for c in codes]
            if max(distinct, default=0) == 0:  # every QI already null: nothing left but the rows
                keep[idx] = False
                steps.append(f"drop {len(idx)} rows whose QIs are all suppressed")
                sizes = _kept_sizes(codes, keep, k)
                continue
            j = int(np.argmax(distinct))
            cells = idx[codes[j][idx] != 0]
            steps.append(f"suppress {quasi[j]} in {len(cells)} rows (no single QI suffices)")
        codes[j] = codes[j].copy()
        codes[j][cells] = 0
        suppressed[cells, j] = True
        sizes = _kept_sizes(codes, keep, k)

    left = (sizes < k) & keep
    if left.any():  # safety net, not reached in practice: the loop is bounded
        keep &= ~left
        steps.append(f"drop {int(left.sum())} rows still below k")
        sizes = _kept_sizes(codes, keep, k)

    out = frame.copy()
    for col, values in current.items():
        out[col] = values.to_numpy()
    for j, col in enumerate(quasi):
        mask = suppressed[:, j] & keep
        if mask.any():
            series = out[col]
            if pd.api.types.is_integer_dtype(series.dtype):
                series = series.astype("Int64").mask(mask)
            elif pd.api.types.is_numeric_dtype(series.dtype):
                series = series.mask(mask)
            else:
                series = series.astype("object")
                series[mask] = None
            out[col] = series
    if not keep.all():
        out = out[keep]
    touched = suppressed.any(axis=1) | ~keep
    k_after, max_risk, avg, small = _residual(sizes[keep])
    return RiskResult(
        frame=out,
        k_target=k,
        k_before=k_before,
        k_after=k_after,
        l=_l_from_codes([c[keep] for c in codes], _codes(out[sensitive])) if sensitive else None,
        rows_suppressed=int((~keep).sum()),
        cells_suppressed=int(suppressed[keep].sum()),
        cells_by_column={c: int(suppressed[keep, j].sum()) for j, c in enumerate(quasi)},
        steps=steps,
        max_risk=max_risk,
        average_risk=avg,
        share_small_classes=small,
        budget_exceeded=bool(touched.sum() > budget),
    )
