"""De-identify a table given each column's identifier class.

This is the pipeline's de-identification step: direct identifiers and free text are
dropped, linkable identifiers become keyed pseudonyms, quasi-identifiers are generalised.
The hub passes the classes (from the common data model) as plain strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from anonymisation.dates import coarsen
from anonymisation.generalise import age_band, round_to
from anonymisation.pseudonyms import pseudonymise

DIRECT = "direct_identifier"
LINKABLE = "linkable_identifier"
QUASI = "quasi_identifier"
SENSITIVE = "sensitive"
FREE_TEXT = "free_text"
SAFE = "safe"


@dataclass
class ColumnAction:
    column: str
    identifier: str
    action: str  # drop, pseudonymise, generalise:<how>, keep
    non_empty: int

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "identifier": self.identifier, "action": self.action,
                "non_empty": self.non_empty}


@dataclass
class DeidResult:
    frame: pd.DataFrame
    actions: list[ColumnAction] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"rows": int(len(self.frame)), "columns": [a.to_dict() for a in self.actions]}


def _generalise(name: str, values: pd.Series, kind: str) -> tuple[pd.Series, str]:
    if name == "age" or name.endswith("_age"):
        return age_band(values)[0], "generalise to 5-year bands (90+ top-coded)"
    if name.startswith("weight"):
        return round_to(values, 5)[0], "generalise: round to 5 kg"
    if kind in ("date", "datetime"):
        return coarsen(values, "month"), "generalise: keep the month only"
    return values, "keep (k-anonymity check pending)"


def deidentify(
    frame: pd.DataFrame,
    classes: Mapping[str, str],
    key: bytes,
    *,
    kinds: Mapping[str, str] | None = None,
) -> DeidResult:
    """Return a de-identified copy of ``frame``. ``classes`` maps every column to its
    identifier class; a column without one is treated as free text (dropped): what is not
    known to be safe does not reach the pool."""
    kinds = kinds or {}
    out: dict[str, pd.Series] = {}
    actions = []
    for name in frame.columns:
        values = frame[name]
        identifier = classes.get(name, FREE_TEXT)
        non_empty = int(values.notna().sum())
        if identifier in (DIRECT, FREE_TEXT):
            actions.append(ColumnAction(name, identifier, "drop", non_empty))
            continue
        if identifier == LINKABLE:
            out[name] = pseudonymise(values, key)
            action = "pseudonymise (HMAC-SHA256)"
        elif identifier == QUASI:
            out[name], action = _generalise(name, values, kinds.get(name, ""))
        else:
            out[name] = values
            action = "keep"
        actions.append(ColumnAction(name, identifier, action, non_empty))
    return DeidResult(pd.DataFrame(out, index=frame.index), actions)
