"""Propose how an upload's columns map onto a CDM table, detect each column's unit, and
apply a confirmed mapping.

Signals, strongest first: the institution's remembered mapping (same source name), an exact
match of the normalised name or a synonym, a fuzzy name match (:mod:`difflib`), and, for the
columns still unmatched, their values (ISBT 128 DIN shape, yes/no, allowed categories,
dates, numeric ranges). Each CDM column takes at most one source column; the better fit
wins and the other is left unmapped with the reason.

Units are *detected* here (a label and the factor into the canonical unit) but *converted*
in :func:`hub.ingest.validation.validate`, after the values are parsed: :func:`apply_mapping`
only renames, so that a value that is not a number is reported as it is in the file.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from contracts.cdm import Column, ColumnType, Table
from hub.errors import BadRequest
from hub.ingest.validation import (
    FACTORS_ATTR,
    FALSE_TOKENS,
    NA_TOKENS,
    SOURCES_ATTR,
    TRUE_TOKENS,
    looks_like_dates,
    normalise_categories,
    parse_number_strings,
)

FUZZY_THRESHOLD = 0.8
SAMPLE_SIZE = 2000  # values profiled per column: enough to see the shape, cheap on 1M rows
REMEMBERED = "remembered from your last upload"
CHOSEN = "chosen by you"

_CONFIDENCE = {"remembered": 1.0, "name": 0.95, "synonym": 0.9}
_FUZZY_WEIGHT = 0.9  # a fuzzy match at ratio r scores 0.9 r: below any exact match


# Names and units ------------------------------------------------------------------------


def fold(text: str) -> str:
    """Casefolded, accents stripped, ``µ`` read as ``u``, superscripts as digits."""
    text = unicodedata.normalize("NFKD", text.replace("µ", "u").replace("μ", "u"))
    return "".join(c for c in text if not unicodedata.combining(c)).casefold()


_UNIT_ALIASES = {
    "percent": "%",
    "pct": "%",
    "prozent": "%",
    "frac": "fraction",
    "y": "years",
    "yr": "years",
    "yrs": "years",
    "year": "years",
    "jahre": "years",
    "ans": "years",
    "d": "days",
    "day": "days",
    "tage": "days",
    "jours": "days",
    "c": "degc",
    "°c": "degc",
    "celsius": "degc",
    "lbs": "lb",
    "mcl": "ul",
    "/mcl": "/ul",
    "mm3": "ul",
    "/mm3": "/ul",
}
_GIGA_PER_LITRE = re.compile(r"^[xX×*]?\s*G\s*/\s*[lL]$")  # French labs: G/L = 10^9/L


def normalise_unit(label: str) -> str:
    """The form in which two unit labels count as the same: ``x10^9/L`` = ``10⁹/l`` =
    ``G/L``, ``cells/µL`` = ``/uL`` = ``/mm³``, ``(%)`` = ``percent``."""
    text = label.strip().strip("()[]{}").strip()
    if _GIGA_PER_LITRE.match(text):
        text = "10^9/L"
    s = fold(text).replace("×", "x").replace("*", "x")
    s = re.sub(r"\s+", "", s).replace("^", "")
    s = re.sub(r"10e(\d)", r"10\1", s)
    s = re.sub(r"^x(?=\d)", "", s)
    s = re.sub(r"per(?!cent)", "/", s)
    s = re.sub(r"cells?(?=/)", "", s)
    return _UNIT_ALIASES.get(s, s)


def _unit_core(normalised: str) -> str:
    """A unit without the word "cells" (``10^9 cells`` ~ ``x10^9``), for a second look."""
    return normalised.replace("cells", "").replace("cell", "")


_BRACKETED = re.compile(r"[\(\[\{]([^\)\]\}]*)[\)\]\}]")
_UNITISH = re.compile(r"[%/^°µμ×\d]")


def _is_unit(text: str, known: frozenset[str]) -> bool:
    key = normalise_unit(text)
    return bool(key) and (
        key in known or key in _UNIT_ALIASES.values() or bool(_UNITISH.search(text))
    )


def split_unit(header: str, known_units: frozenset[str] = frozenset()) -> tuple[str, str | None]:
    """``("ALC", "x10^9/L")`` from ``"ALC (x10^9/L)"``: the name without a unit in brackets
    (or a trailing ``%`` or known unit), and the unit kept aside as a hint."""
    hint = None
    name = header
    for match in _BRACKETED.finditer(header):
        if _is_unit(match.group(1), known_units):
            hint = match.group(1).strip()
            name = name.replace(match.group(0), " ")
    if hint is None:
        parts = header.rsplit(None, 1)
        if len(parts) == 2 and parts[0].strip():
            last = parts[1]
            key = normalise_unit(last)
            in_word = re.sub(r"(?i)\s+(in|en)$", "", parts[0])
            if last == "%" or key in known_units or key in ("%", "fraction"):
                hint, name = last, in_word
            elif re.fullmatch(r"[xX×]?10\^?\d+/\S+|/\S+", last):
                hint, name = last, in_word
    return name, hint


def normalise_name(header: str, known_units: frozenset[str] = frozenset()) -> str:
    """The key two column names are compared by: units set aside, case, accents and
    punctuation ignored (``"Viabilität (%)"`` → ``"viabilitat"``, ``"Lot No."`` →
    ``"lotno"``)."""
    name, _ = split_unit(header, known_units)
    return re.sub(r"[^0-9a-z]+", "", fold(name))


def _known_units(table: Table) -> frozenset[str]:
    return frozenset(
        normalise_unit(label)
        for col in table.columns
        if col.unit
        for label in (col.unit, *col.alternate_units)
    )


# Results --------------------------------------------------------------------------------


@dataclass
class ColumnMatch:
    """One source column, the CDM column proposed for it (or None), and its unit."""

    source: str
    target: str | None
    confidence: float
    reason: str
    unit: str | None = None
    factor: float = 1.0
    unit_reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "confidence": round(float(self.confidence), 3),
            "factor": float(self.factor),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ColumnMatch:
        if not isinstance(data, Mapping) or not isinstance(data.get("source"), str):
            raise ValueError(f"a column match needs a `source` name, not {data!r}")
        target = data.get("target") or None
        factor = float(data.get("factor", 1.0))
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"column {data['source']!r}: factor must be positive")
        return cls(
            source=data["source"],
            target=str(target) if target else None,
            confidence=float(data.get("confidence", 0.0)),
            reason=str(data.get("reason", "")),
            unit=data.get("unit") or None,
            factor=factor,
            unit_reason=str(data.get("unit_reason", "")),
        )


@dataclass
class MappingProposal:
    """Proposed (or confirmed) mapping of an upload's columns onto one CDM table."""

    table: str
    columns: list[ColumnMatch]
    missing_required: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)

    def match(self, source: str) -> ColumnMatch:
        for m in self.columns:
            if m.source == source:
                return m
        raise KeyError(source)

    def as_mapping(self) -> dict[str, str]:
        """``{source: target}`` of the mapped columns, to remember for the next upload."""
        return {m.source: m.target for m in self.columns if m.target}

    def sources(self) -> dict[str, str]:
        """``{target: source}``."""
        return {m.target: m.source for m in self.columns if m.target}

    def factors(self) -> dict[str, float]:
        """``{target: factor}`` converting each mapped column into its canonical unit."""
        return {m.target: float(m.factor) for m in self.columns if m.target}

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "columns": [m.to_dict() for m in self.columns],
            "missing_required": list(self.missing_required),
            "unmapped": list(self.unmapped),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MappingProposal:
        if not isinstance(data, Mapping) or not isinstance(data.get("table"), str):
            raise ValueError("a mapping needs a `table` name and `columns`")
        columns = data.get("columns", [])
        if not isinstance(columns, list):
            raise ValueError("`columns` must be a list of column matches")
        return cls(
            table=data["table"],
            columns=[ColumnMatch.from_dict(c) for c in columns],
            missing_required=[str(c) for c in data.get("missing_required", [])],
            unmapped=[str(c) for c in data.get("unmapped", [])],
        )

    def with_choices(self, choices: Mapping[str, Any], table: Table) -> MappingProposal:
        """The mapping after the contributor's choices ``{source: {"target": column or "",
        "unit": label}}`` (a plain string is a target). Sources not mentioned keep the
        proposal; a target chosen twice or a unit we cannot convert is refused."""
        if self.table != table.name:
            raise ValueError(f"mapping is for `{self.table}`, not `{table.name}`")
        known = {m.source for m in self.columns}
        unknown = sorted(set(choices) - known)
        if unknown:
            raise BadRequest(
                "the file has no column "
                + ", ".join(repr(u) for u in unknown)
                + "; choose among the file's columns.",
                code="unknown_source",
            )
        units = _known_units(table)
        out: list[ColumnMatch] = []
        for m in self.columns:
            choice = choices.get(m.source)
            if choice is None:
                out.append(ColumnMatch(**asdict(m)))
                continue
            if isinstance(choice, str):
                choice = {"target": choice}
            if not isinstance(choice, Mapping):
                raise BadRequest(f"the choice for {m.source!r} must name a target column.")
            target = choice.get("target", m.target) or None
            if target is not None and target not in table.column_names:
                raise BadRequest(
                    f"`{target}` is not a column of the `{table.name}` table; choose one of "
                    + ", ".join(table.column_names)
                    + ".",
                    code="unknown_target",
                )
            changed = target != m.target
            new = ColumnMatch(
                m.source,
                target,
                1.0 if changed else m.confidence,
                CHOSEN if changed else m.reason,
                m.unit,
                m.factor,
                m.unit_reason,
            )
            unit = choice.get("unit") or None
            if target is None:
                new.unit, new.factor, new.unit_reason = None, 1.0, ""
            elif unit is not None and table.column(target).unit:
                col = table.column(target)
                found = match_unit(col, unit)
                if found is None:
                    labels = ", ".join(label for label, _ in _unit_labels(col))
                    raise BadRequest(
                        f"unit {unit!r} cannot be converted for `{target}`; choose one of "
                        f"{labels}.",
                        code="unknown_unit",
                    )
                new.unit, new.factor = found
                if found[0] != m.unit or changed:
                    new.unit_reason = CHOSEN
            elif changed:
                _, hint = split_unit(m.source, units)
                new.unit, new.factor, new.unit_reason = detect_unit(
                    table.column(target), hint, pd.Series([], dtype=object)
                )
            out.append(new)
        seen: dict[str, str] = {}
        for m in out:
            if m.target is None:
                continue
            if m.target in seen:
                raise BadRequest(
                    f"`{m.target}` is chosen for both {seen[m.target]!r} and {m.source!r}; "
                    "choose it for one column only.",
                    code="duplicate_target",
                )
            seen[m.target] = m.source
        return _finish(table, out)


def _finish(table: Table, columns: list[ColumnMatch]) -> MappingProposal:
    mapped = {m.target for m in columns if m.target}
    return MappingProposal(
        table=table.name,
        columns=columns,
        missing_required=[c.name for c in table.columns if c.required and c.name not in mapped],
        unmapped=[m.source for m in columns if m.target is None],
    )


# Units ----------------------------------------------------------------------------------


def _unit_labels(col: Column) -> list[tuple[str, float]]:
    if not col.unit:
        return []
    return [(col.unit, 1.0), *((k, float(v)) for k, v in col.alternate_units.items())]


def match_unit(col: Column, hint: str) -> tuple[str, float] | None:
    """``(label, factor)`` of the column's unit (canonical first) that ``hint`` names."""
    key = normalise_unit(hint)
    labels = _unit_labels(col)
    for label, factor in labels:
        if label == hint.strip():
            return label, factor
    for label, factor in labels:
        if normalise_unit(label) == key:
            return label, factor
    core = _unit_core(key)
    for label, factor in labels:
        if core and _unit_core(normalise_unit(label)) == core:
            return label, factor
    return None


def detect_unit(col: Column, hint: str | None, sample: pd.Series) -> tuple[str | None, float, str]:
    """``(unit label, factor to canonical, reason)`` from the header's unit hint, else from
    the values: fractions in a % column, or a median that fits the range only in another
    unit (cells/µL where 10^9/L is expected)."""
    if not col.unit:
        return None, 1.0, ""
    prefix = ""
    if hint:
        found = match_unit(col, hint)
        if found is not None:
            label, factor = found
            if factor == 1.0:
                return label, factor, f"unit '{hint}' in the header"
            return label, factor, (f"unit '{hint}' in the header: ×{factor:g} to {col.unit}")
        prefix = f"header unit '{hint}' is not one we can convert for `{col.name}`; "
    numbers = pd.Series([], dtype=float)
    if len(sample):
        numbers = parse_number_strings(sample)[0].dropna()
    if len(numbers):
        fraction = next(
            (x for x in _unit_labels(col)[1:] if normalise_unit(x[0]) == "fraction"), None
        )
        if (
            fraction is not None
            and normalise_unit(col.unit) == "%"
            and numbers.between(0, 1).all()
            and not numbers.isin([0, 1]).all()
        ):
            return (
                fraction[0],
                fraction[1],
                (
                    prefix + f"all values are between 0 and 1: read as fractions "
                    f"(×{fraction[1]:g} to {col.unit})"
                ),
            )
        low = -np.inf if col.minimum is None else col.minimum
        high = np.inf if col.maximum is None else col.maximum
        median = float(numbers.median())
        if not low <= median <= high:
            best: tuple[float, str, float] | None = None
            for label, factor in _unit_labels(col)[1:]:
                if low <= median * factor <= high:
                    share = float(numbers.mul(factor).between(low, high).mean())
                    if best is None or share > best[0]:
                        best = (share, label, factor)
            if best is not None:
                return (
                    best[1],
                    best[2],
                    (
                        prefix + f"values (median {median:g}) do not fit {low:g}–{high:g} "
                        f"{col.unit} but fit {best[1]} (×{best[2]:g})"
                    ),
                )
        return col.unit, 1.0, prefix + f"no unit in the header; values fit {col.unit}"
    return col.unit, 1.0, prefix + f"no unit in the header; assumed {col.unit}"


# Proposing ------------------------------------------------------------------------------


@dataclass
class _Candidate:
    confidence: float
    target: str
    reason: str


@dataclass
class _Entry:
    """A CDM column reachable by one normalised key, and the labels that lead there."""

    column: str
    own: bool  # the column's own name normalises to the key
    labels: dict[str, str]  # normalised unit hint ("" for none) -> first label with it

    @property
    def label(self) -> str:
        return next(iter(self.labels.values()))

    def label_for(self, hint: str | None) -> str:
        """The label as written whose unit matches ``hint`` (``'Viab %'`` for ``Viab %``)."""
        return self.labels.get(normalise_unit(hint) if hint else "", self.label)


_INDEXES: dict[int, tuple[Table, frozenset[str], dict[str, list[_Entry]]]] = {}


def _vocabulary(table: Table) -> tuple[frozenset[str], dict[str, list[_Entry]]]:
    """The table's unit labels and name index, built once per table object (the CDM's
    tables live for the process; the entry holds the table so its id is not reused)."""
    cached = _INDEXES.get(id(table))
    if cached is None or cached[0] is not table:
        if len(_INDEXES) >= 64:
            _INDEXES.clear()
        units = _known_units(table)
        cached = (table, units, _name_index(table, units))
        _INDEXES[id(table)] = cached
    return cached[1], cached[2]


def _name_index(table: Table, units: frozenset[str]) -> dict[str, list[_Entry]]:
    """normalised key -> the columns whose name or synonyms normalise to it."""
    index: dict[str, list[_Entry]] = {}
    for col in table.columns:
        for label, own in ((col.name, True), *((s, False) for s in col.synonyms)):
            key = normalise_name(label, units)
            if not key:
                continue
            _, hint = split_unit(label, units)
            entries = index.setdefault(key, [])
            entry = next((e for e in entries if e.column == col.name), None)
            if entry is None:
                entry = _Entry(col.name, own, {})
                entries.append(entry)
            entry.labels.setdefault(normalise_unit(hint) if hint else "", label)
    return index


def _disambiguate(entries: list[_Entry], hint: str | None, table: Table) -> _Entry | None:
    """One of several columns sharing a key (``Dose`` and ``Dose (x10^6/kg)``), chosen by
    the unit hint: a unit only one of them can convert, else the same hint as a synonym."""
    if hint:
        fits = [e for e in entries if match_unit(table.column(e.column), hint) is not None]
        if len(fits) == 1:
            return fits[0]
    key = normalise_unit(hint) if hint else ""
    same = [e for e in entries if key in e.labels]
    return same[0] if len(same) == 1 else None


def _by_name(
    source: str, index: Mapping[str, list[_Entry]], units: frozenset[str], table: Table
) -> _Candidate | None:
    key = normalise_name(source, units)
    if not key:
        return None
    hits = index.get(key, [])
    hint = split_unit(source, units)[1]
    hit = hits[0] if len(hits) == 1 else _disambiguate(hits, hint, table) if hits else None
    if hit is not None:
        if hit.own:
            return _Candidate(_CONFIDENCE["name"], hit.column, f"name matches `{hit.column}`")
        return _Candidate(_CONFIDENCE["synonym"], hit.column, f"synonym '{hit.label_for(hint)}'")
    if len(key) < 3:
        return None
    best: tuple[float, _Entry] | None = None
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(key)
    for other, entries in index.items():
        if len(entries) != 1 or len(other) < 3:
            continue
        matcher.set_seq1(other)
        if matcher.real_quick_ratio() < FUZZY_THRESHOLD or matcher.quick_ratio() < (
            FUZZY_THRESHOLD
        ):
            continue
        ratio = matcher.ratio()
        if ratio >= FUZZY_THRESHOLD and (best is None or ratio > best[0]):
            best = (ratio, entries[0])
    if best is None:
        return None
    ratio, entry = best
    where = f"'{entry.label}'" if entry.own else f"'{entry.label}' (synonym of `{entry.column}`)"
    return _Candidate(
        round(_FUZZY_WEIGHT * ratio, 3), entry.column, f"fuzzy name match {ratio:.2f} with {where}"
    )


def _sample(values: pd.Series) -> pd.Series:
    """Up to SAMPLE_SIZE non-empty stripped values: on a big file, those at random rows
    (a fixed seed), falling back to all non-empty ones for a mostly empty column."""
    rng = np.random.default_rng(0)
    n = len(values)
    if n > 4 * SAMPLE_SIZE:
        rows = np.unique(rng.integers(0, n, 4 * SAMPLE_SIZE))
        picked = values.iloc[rows].dropna()
        if len(picked) < SAMPLE_SIZE // 4:
            picked = values.dropna()
    else:
        picked = values.dropna()
    if len(picked) > SAMPLE_SIZE:
        picked = picked.iloc[np.sort(rng.choice(len(picked), SAMPLE_SIZE, replace=False))]
    text = picked.astype(str).str.strip()
    return text[~text.str.casefold().isin(NA_TOKENS)].reset_index(drop=True)


_DIN = re.compile(r"^[A-Z]\d{4}\s?\d{2}\s?\d{6}(?:\s?[0-9A-Z]{2}\s?[0-9A-Z*]?)?$")


def _is_din_column(col: Column) -> bool:
    standard = (col.standard or "").casefold()
    return "din" in col.name.split("_") or "donation identification number" in standard


def _rank(
    source: str, found: list[tuple[Column, float]], units: frozenset[str]
) -> tuple[list[Column], bool]:
    """Candidates best first (profile score, then name likeness to ``source``), and whether
    the first stands out: a better score, or a name clearly more alike (difference 0.1)."""
    key = normalise_name(source, units)

    def likeness(col: Column) -> float:
        names = (col.name, *col.synonyms)
        return max(
            difflib.SequenceMatcher(None, key, normalise_name(n, units)).ratio() for n in names
        )

    scored = sorted(
        ((score, likeness(c), c) for c, score in found), key=lambda x: x[:2], reverse=True
    )
    ranked = [c for _, _, c in scored]
    if len(scored) == 1:
        return ranked, True
    (s1, l1, _), (s2, l2, _) = scored[0], scored[1]
    return ranked, s1 > s2 or (l1 >= 0.5 and l1 - l2 >= 0.1)


def _by_values(
    source: str, sample: pd.Series, free: list[Column], units: frozenset[str]
) -> tuple[_Candidate | None, str]:
    """A candidate from the values of an unmatched column, or None and why not."""
    if sample.empty:
        return None, "no CDM column with a similar name, and the column is empty"
    distinct = pd.Series(sample.unique())
    checks: list[tuple[str, float, float, list[tuple[Column, float]]]] = []
    if sample.str.match(_DIN).mean() >= 0.9:
        checks.append(
            (
                "values look like ISBT 128 DINs",
                0.8,
                0.6,
                [(c, 1.0) for c in free if _is_din_column(c)],
            )
        )
    folded = distinct.str.casefold()
    if folded.isin(TRUE_TOKENS | FALSE_TOKENS).all():
        checks.append(
            (
                "values are yes/no",
                0.6,
                0.4,
                [(c, 1.0) for c in free if c.type == ColumnType.BOOLEAN],
            )
        )
    cats = []
    for c in free:
        if c.allowed:
            canon = normalise_categories(distinct, c.allowed)
            if canon.notna().all():
                cats.append((c, canon.nunique() / len(c.allowed)))
    if cats:
        checks.append(("values are all allowed values of", 0.75, 0.5, cats))
    if looks_like_dates(sample).mean() >= 0.9:
        timed = bool(sample.str.contains(r"\d:\d\d").any())
        want = ColumnType.DATETIME if timed else ColumnType.DATE
        dated = [
            (c, 1.0 if c.type == want else 0.5)
            for c in free
            if c.type in (ColumnType.DATE, ColumnType.DATETIME)
        ]
        checks.append(("values look like dates" + (" and times" if timed else ""), 0.6, 0.4, dated))
    numbers, _ = parse_number_strings(sample)
    if numbers.notna().mean() >= 0.9:
        nums = numbers.dropna()
        whole = bool((nums == nums.round()).all())
        fitting = []
        for c in free:
            if c.type not in (ColumnType.NUMBER, ColumnType.INTEGER):
                continue
            if c.type == ColumnType.INTEGER and not whole:
                continue
            low = -np.inf if c.minimum is None else c.minimum
            high = np.inf if c.maximum is None else c.maximum
            if nums.between(low, high).all():
                bounded = c.minimum is not None and c.maximum is not None
                fitting.append((c, 1.0 if bounded else 0.5))
        span = f"numbers {nums.min():g}–{nums.max():g} fit the range of"
        checks.append((span, 0.5, 0.3, fitting))
    for what, sure, unsure, found in checks:
        if not found:
            continue
        ranked, clear = _rank(source, found, units)
        best = ranked[0]
        others = [c.name for c in ranked[1:]]
        reason = f"{what} `{best.name}`" if what.endswith(" of") else f"{what}: `{best.name}`"
        if not others:
            return _Candidate(sure, best.name, reason), ""
        listed = ", ".join(f"`{o}`" for o in others[:4]) + (" …" if len(others) > 4 else "")
        if clear:
            return _Candidate(unsure, best.name, f"{reason} (could also be {listed})"), ""
        every = ", ".join(f"`{c.name}`" for c in ranked[:5]) + (" …" if len(ranked) > 5 else "")
        what = what.removesuffix(" of").replace("fit the range", "fit the ranges")
        return None, f"{what}: could be {every}; choose one"
    return None, "no CDM column with a similar name or matching values"


def _assign(
    wanted: Iterable[tuple[int, str, _Candidate]],
    taken: dict[str, tuple[str, float]],
    result: dict[str, ColumnMatch],
) -> None:
    """Give each CDM column to its most confident source; the others are left unmapped."""
    for _, source, cand in sorted(wanted, key=lambda w: (-w[2].confidence, w[0])):
        if cand.target in taken:
            winner, score = taken[cand.target]
            result[source] = ColumnMatch(
                source,
                None,
                0.0,
                f"also matched `{cand.target}` ({cand.reason}, {cand.confidence:.2f}), which "
                f"{winner!r} fitted better ({score:.2f})",
            )
            continue
        taken[cand.target] = (source, cand.confidence)
        result[source] = ColumnMatch(source, cand.target, cand.confidence, cand.reason)


def propose_mapping(
    frame: pd.DataFrame, table: Table, remembered: Mapping[str, str] | None = None
) -> MappingProposal:
    """A proposed CDM column (or None), confidence, reason and unit for every source column
    of ``frame``. ``remembered`` is the institution's last confirmed ``{source: target}``."""
    units, index = _vocabulary(table)
    sources = [str(c) for c in frame.columns]
    if len(set(sources)) != len(sources):
        dupes = sorted({s for s in sources if sources.count(s) > 1})
        raise BadRequest(
            "the file has more than one column named "
            + ", ".join(repr(d) for d in dupes)
            + "; rename them and upload again."
        )
    remembered = {str(k): str(v) for k, v in (remembered or {}).items() if v}
    result: dict[str, ColumnMatch] = {}
    taken: dict[str, tuple[str, float]] = {}
    first: list[tuple[int, str, _Candidate]] = []
    for i, source in enumerate(sources):
        target = remembered.get(source)
        if target in table.column_names:
            first.append((i, source, _Candidate(_CONFIDENCE["remembered"], target, REMEMBERED)))
            continue
        cand = _by_name(source, index, units, table)
        if cand is not None:
            first.append((i, source, cand))
    _assign(first, taken, result)
    second: list[tuple[int, str, _Candidate]] = []
    why_not: dict[str, str] = {}
    samples = {s: _sample(frame[s]) for s in sources}
    free = [c for c in table.columns if c.name not in taken]
    for i, source in enumerate(sources):
        if source in result:
            continue
        cand, why = _by_values(source, samples[source], free, units)
        if cand is None:
            why_not[source] = why
        else:
            second.append((i, source, cand))
    _assign(second, taken, result)
    columns: list[ColumnMatch] = []
    for source in sources:
        match = result.get(source) or ColumnMatch(source, None, 0.0, why_not[source])
        if match.target is not None:
            _, hint = split_unit(source, units)
            match.unit, match.factor, match.unit_reason = detect_unit(
                table.column(match.target), hint, samples[source]
            )
        columns.append(match)
    return _finish(table, columns)


# Applying -------------------------------------------------------------------------------


def apply_mapping(frame: pd.DataFrame, proposal: MappingProposal, table: Table) -> pd.DataFrame:
    """The upload with CDM column names, in CDM order, values still raw strings.

    Unmapped source columns are dropped; optional CDM columns without a source are added
    empty; a required column without a source stays absent, so validation reports it.
    Units are not converted here: ``frame.attrs`` carries the factors and source names for
    :func:`~hub.ingest.validation.validate`, which converts after parsing."""
    if proposal.table != table.name:
        raise ValueError(f"mapping is for `{proposal.table}`, not `{table.name}`")
    pairs = [(m.source, m.target) for m in proposal.columns if m.target]
    targets = [t for _, t in pairs]
    if len(set(targets)) != len(targets):
        raise BadRequest("a CDM column is mapped from more than one source column.")
    for source, target in pairs:
        if target not in table.column_names:
            raise BadRequest(f"`{target}` is not a column of the `{table.name}` table.")
        if source not in frame.columns:
            raise BadRequest(
                f"the file has no column {source!r}; upload the file the mapping "
                "was made for or map its columns again."
            )
    if frame.columns.duplicated().any():
        raise BadRequest("the file has two columns with the same name; rename one.")
    by_target = {t: s for s, t in pairs}
    n = len(frame)
    data: dict[str, Any] = {}
    for col in table.columns:
        if col.name in by_target:
            data[col.name] = frame[by_target[col.name]]
        elif not col.required:
            data[col.name] = pd.Series(np.full(n, None, dtype=object), index=frame.index)
    out = pd.DataFrame(data, index=frame.index)
    out.attrs[SOURCES_ATTR] = proposal.sources()
    out.attrs[FACTORS_ATTR] = proposal.factors()
    out.attrs["cdm_table"] = table.name
    return out
