"""What a synthesizer is told about de-identified tables, and how a frame is prepared for it.

:func:`table_spec` turns a de-identified frame and the caller's facts about its table
(:class:`anonymisation.datamodel.TableFacts`) into a neutral :class:`TableSpec`: linkable
identifiers are ids, categories, bands and short strings are categorical, numbers and day
offsets numerical; free text is left out. A frame that still holds a direct identifier, or a
linkable-identifier column whose values are not pseudonyms, is refused
(:class:`SynthesisError`). The rest prepares training frames and checks synthetic ones
against the spec's constraints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from anonymisation.datamodel import TableFacts
from anonymisation.identifiers import IdentifierClass
from anonymisation.pseudonyms import is_pseudonym


class SynthesisError(ValueError):
    """The input cannot be synthesised as asked (raw data, unknown method, empty table)."""


# Neutral metadata: what a backend needs to know, with no SDV types ------------------------


@dataclass(frozen=True)
class ColumnSpec:
    """A column as a synthesizer sees it: ``kind`` is id, numerical, categorical or boolean."""

    name: str
    kind: str
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: str | None = None
    inequalities: tuple[tuple[str, ...], ...] = ()
    # A key of several columns (release_test: lot_id, test): SDV cannot model it, so the
    # rows that repeat one are removed after sampling (:func:`distinct_keys`).
    unique: tuple[str, ...] = ()

    def column(self, name: str) -> ColumnSpec:
        return next(c for c in self.columns if c.name == name)

    @property
    def id_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind == "id")


@dataclass(frozen=True)
class Link:
    """``child.column`` refers to ``parent.key``."""

    parent: str
    key: str
    child: str
    column: str


@dataclass(frozen=True)
class SynthMetadata:
    tables: Mapping[str, TableSpec]
    links: tuple[Link, ...] = ()


# Preparing a de-identified frame -------------------------------------------------------------


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(
        values.dtype
    )


def _is_bool(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values.dtype):
        return True
    present = values.dropna()
    return len(present) > 0 and present.map(type).isin([bool, np.bool_]).all()


def table_spec(frame: pd.DataFrame, table: TableFacts) -> tuple[TableSpec, dict[str, str]]:
    """The synthesizer's view of a de-identified ``frame`` of ``table`` and the columns left
    out, with why. Ranges and allowed values come from the table's facts, and its
    inequality chains are kept where the frame has two or more of a chain's columns (as
    numbers). Raises :class:`SynthesisError` for raw data."""
    columns: list[ColumnSpec] = []
    dropped: dict[str, str] = {}
    known = set(table.column_names)
    for name in frame.columns:
        values = frame[name]
        if name not in known:
            dropped[name] = "not a column of the CDM table"
            continue
        facts = table.column(name)
        if facts.identifier == IdentifierClass.DIRECT:
            raise SynthesisError(
                f"column `{name}` of `{table.name}` is a direct identifier: synthesis runs on "
                "de-identified data only; de-identify the version first"
            )
        if facts.identifier == IdentifierClass.FREE_TEXT:
            dropped[name] = "free text is not synthesised"
            continue
        if facts.identifier == IdentifierClass.LINKABLE:
            raw = [v for v in values.dropna().unique()[:1000] if not is_pseudonym(v)]
            if raw:
                raise SynthesisError(
                    f"column `{name}` of `{table.name}` holds values that are not pseudonyms "
                    f"(e.g. a {len(str(raw[0]))}-character value): synthesis runs on "
                    "de-identified data only"
                )
            columns.append(ColumnSpec(name, "id"))
            continue
        if values.isna().all():
            dropped[name] = "no values"
            continue
        if facts.type == "boolean" or _is_bool(values):
            columns.append(ColumnSpec(name, "boolean"))
        elif _is_numeric(values):
            integer = pd.api.types.is_integer_dtype(values.dtype) or facts.type in (
                "integer",
                "date",
                "datetime",
            )
            columns.append(
                ColumnSpec(name, "numerical", integer, minimum=facts.minimum, maximum=facts.maximum)
            )
        else:
            # Categories, age bands, dates coarsened to a month, sites: categorical.
            columns.append(ColumnSpec(name, "categorical", allowed=facts.allowed))
    present = {c.name for c in columns}
    pk = table.primary_key[0] if len(table.primary_key) == 1 else None
    if pk is not None and (pk not in present or frame[pk].isna().any()):
        pk = None
    chains = []
    for chain in table.inequalities:
        kept = tuple(
            c
            for c in chain
            if c in present and next(s for s in columns if s.name == c).kind == "numerical"
        )
        if len(kept) >= 2:
            chains.append(kept)
    unique = tuple(table.primary_key) if len(table.primary_key) > 1 else ()
    if not set(unique) <= present:
        unique = ()
    return TableSpec(table.name, tuple(columns), pk, tuple(chains), unique), dropped


def training_frame(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Columns in spec order with dtypes SDV handles: nullable ints as floats, bools as
    bool (or object when null), categoricals as object."""
    out: dict[str, pd.Series] = {}
    for c in spec.columns:
        values = frame[c.name]
        if c.kind == "numerical":
            out[c.name] = pd.to_numeric(values, errors="coerce").astype("float64")
        elif c.kind == "boolean":
            out[c.name] = values.astype(object).where(values.notna(), None)
            if not values.isna().any():
                out[c.name] = values.astype(bool)
        else:
            out[c.name] = values.astype(object).where(values.notna(), None)
    return pd.DataFrame(out, index=frame.index)


def check_inequalities(frame: pd.DataFrame, spec: TableSpec) -> tuple[TableSpec, list[str]]:
    """Keep only the chains the training data meets (SDV refuses to fit otherwise)."""
    kept, notes = [], []
    for chain in spec.inequalities:
        bad = 0
        for low, high in zip(chain, chain[1:], strict=False):
            bad += int((frame[high] < frame[low]).sum())
        if bad:
            notes.append(
                f"inequality {' ≤ '.join(chain)} not applied: {bad} training row(s) break it"
            )
        else:
            kept.append(chain)
    return TableSpec(spec.name, spec.columns, spec.primary_key, tuple(kept), spec.unique), notes


def finish(
    sample: pd.DataFrame,
    spec: TableSpec,
    real: pd.DataFrame,
    seed: int,
    keys: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """Back to the de-identified frame's shape: dtypes, integer rounding, id nulls at the
    real rate (SDV fills every id; ``keys`` are foreign keys already set by linking)."""
    rng = np.random.default_rng(seed)
    out = sample.copy()
    for c in spec.columns:
        if c.kind == "numerical" and c.integer:
            out[c.name] = pd.array(np.round(out[c.name].to_numpy(dtype="float64")), dtype="Int64")
        elif c.kind == "id" and c.name != spec.primary_key and c.name not in keys:
            rate = float(real[c.name].isna().mean())
            if rate > 0:
                out[c.name] = out[c.name].where(rng.random(len(out)) >= rate, None)
    return out.reset_index(drop=True)


def distinct_keys(frame: pd.DataFrame, spec: TableSpec) -> tuple[pd.DataFrame, int]:
    """``frame`` without the rows that repeat an earlier row's composite key
    (:attr:`TableSpec.unique`), and how many were removed. A row is sampled whole, so it is
    removed rather than given another key value its other columns were not drawn for."""
    if not spec.unique or frame.empty:
        return frame, 0
    repeats = frame.duplicated(subset=list(spec.unique), keep="first")
    return frame[~repeats].reset_index(drop=True), int(repeats.sum())


def check_constraints(frame: pd.DataFrame, spec: TableSpec) -> list[dict[str, Any]]:
    """Every constraint of ``spec`` with the number of rows of ``frame`` that break it."""
    out: list[dict[str, Any]] = []
    if spec.unique:
        repeated = int(frame.duplicated(subset=list(spec.unique), keep="first").sum())
        out.append({"kind": "unique", "columns": list(spec.unique), "violations": repeated})
    for c in spec.columns:
        if c.kind == "numerical" and (c.minimum is not None or c.maximum is not None):
            values = pd.to_numeric(frame[c.name], errors="coerce")
            bad = 0
            if c.minimum is not None:
                bad += int((values < c.minimum).sum())
            if c.maximum is not None:
                bad += int((values > c.maximum).sum())
            out.append(
                {
                    "kind": "range",
                    "columns": [c.name],
                    "min": c.minimum,
                    "max": c.maximum,
                    "violations": bad,
                }
            )
        if c.kind == "categorical" and c.allowed:
            present = frame[c.name].dropna()
            bad = int((~present.isin(c.allowed)).sum())
            out.append({"kind": "allowed", "columns": [c.name], "violations": bad})
    for chain in spec.inequalities:
        bad = 0
        for low, high in zip(chain, chain[1:], strict=False):
            lo = pd.to_numeric(frame[low], errors="coerce")
            hi = pd.to_numeric(frame[high], errors="coerce")
            bad += int((hi < lo).sum())
        out.append({"kind": "inequality", "columns": list(chain), "violations": bad})
    return out
