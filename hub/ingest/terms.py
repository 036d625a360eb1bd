"""A site's terms for category values, mapped to the data model's shared codes.

A site writes "Kymriah" where the data model says ``tisa-cel``, "BacT/ALERT" for
``sterility``, "O pos" for ``O+``. When an upload's columns are mapped, every value of a
category column that is not already one of the column's values (case, accents and spacing
aside) is a *term* to map:

1. a term the institution confirmed before (:class:`~hub.ingest.models.InstitutionTerm`)
   is mapped as it was, and shown as remembered;
2. otherwise a proposal is made from the code book (``contracts/codes.yaml``: display texts,
   codes and the terms sites use), exactly or, failing that, by a fuzzy match;
3. otherwise the term is new and nothing is proposed.

Nothing but a remembered term is applied without the contributor's say: proposals and new
terms are *open* until the contributor confirms a value or chooses to hold the rows back
(:func:`decide`). Every value confirmed is remembered for the institution's next upload; a
term held back is not (it may be a stray identifier), so it is asked about again.
Only columns with at most :data:`MAX_TERMS` distinct values are asked about; values of a
longer column that are not the data model's are held back by validation, as before.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from contracts.cdm import ColumnType, Table
from contracts.codes import MAX_ASKED_TERMS, CodeList, load_codes, term_key
from hub.errors import BadRequest
from hub.ingest.validation import normalise_categories

MAX_TERMS = MAX_ASKED_TERMS
FUZZY_CUTOFF = 0.82
"""How alike (difflib ratio, on folded text) a term and a known term must be to propose."""
_PEEK = 5_000
"""Rows looked at first: a column with more distinct values than the limit there is skipped."""
HOLD_BACK = ""
"""The decision that maps a term to nothing: its rows are held back by validation."""


@dataclass(frozen=True)
class Term:
    """One site term of a category column and what is proposed for it."""

    term: str
    rows: int
    value: str | None  # proposed (or remembered) CDM value; None when new
    how: str  # "remembered", "synonym", "fuzzy" or "new"
    why: str  # in words, for the page and the API

    @property
    def open(self) -> bool:
        """Needs the contributor's confirmation."""
        return self.how != "remembered"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "open": self.open}


def distinct_values(frame: pd.DataFrame, limit: int = MAX_TERMS) -> dict[str, list[list[Any]]]:
    """``{source column: [[value, rows], ...]}`` for every column with at most ``limit``
    distinct non-empty values (stripped), most frequent first; kept in the upload's profile
    so terms can be asked about without reading the file again."""
    out: dict[str, list[list[Any]]] = {}
    for name in frame.columns:
        column = frame[name]
        if column.head(_PEEK).nunique(dropna=True) > limit:
            continue  # an identifier, a number, a date: not a list of terms
        raw = column.value_counts(dropna=True)  # counted as written, stripped afterwards
        if len(raw) > 4 * limit:
            continue
        counts: dict[str, int] = {}
        for value, n in raw.items():
            text = str(value).strip()
            if text:
                counts[text] = counts.get(text, 0) + int(n)
        if 0 < len(counts) <= limit:
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            out[str(name)] = [[v, n] for v, n in ranked]
    return out


def _fold(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text)
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    return "".join(ch for ch in plain.casefold() if ch.isalnum() or ch in "+<>≥≤")


def propose(
    table: Table,
    sources: Mapping[str, str],
    distinct: Mapping[str, list[list[Any]]],
    remembered: Mapping[tuple[str, str], str],
) -> dict[str, list[Term]]:
    """The terms to map, per category target column: ``sources`` is ``{target: source}`` of
    the confirmed column mapping, ``distinct`` the profile's distinct values per source,
    ``remembered`` ``{(column, term_key): value}`` of the institution's confirmed terms."""
    book = load_codes()
    out: dict[str, list[Term]] = {}
    for target, source in sources.items():
        column = table.column(target)
        if column.type != ColumnType.CATEGORY or not column.allowed or source not in distinct:
            continue
        codes = book.column(table.name, target)
        known = _by_fold(codes)
        pairs = distinct[source]
        values = pd.Series([v for v, _ in pairs], dtype=object)
        canonical = normalise_categories(values, column.allowed)
        terms = [
            _propose_one(str(term), int(rows), target, codes, known, remembered, column.allowed)
            for (term, rows), canon in zip(pairs, canonical, strict=True)
            if pd.isna(canon)
        ]
        if terms:
            out[target] = terms
    return out


def _by_fold(codes: CodeList | None) -> dict[str, tuple[str, str]]:
    """``{folded term: (value, term)}`` of every term the code book knows for a column,
    the first term of each folded form kept."""
    by_fold: dict[str, tuple[str, str]] = {}
    for label, value in codes.synonyms() if codes is not None else ():
        by_fold.setdefault(_fold(label), (value, label))
    return by_fold


def _propose_one(
    term: str,
    rows: int,
    target: str,
    codes: CodeList | None,
    by_fold: Mapping[str, tuple[str, str]],
    remembered: Mapping[tuple[str, str], str],
    allowed: tuple[str, ...],
) -> Term:
    known = remembered.get((target, term_key(term)))
    if known in allowed:
        return Term(term, rows, known, "remembered", "mapped like this in an earlier upload")
    if codes is None:
        return Term(term, rows, None, "new", "not a value of this column")
    folded = _fold(term)
    if folded in by_fold:
        value, label = by_fold[folded]
        code = codes.codes[value]
        what = "its code" if label == code.code else f"the term “{label}”"
        return Term(term, rows, value, "synonym", f"{what} for “{code.label}”")
    if len(folded) >= 4:
        candidates = [f for f in by_fold if len(f) >= 4]
        close = difflib.get_close_matches(folded, candidates, n=1, cutoff=FUZZY_CUTOFF)
        if close:
            value, label = by_fold[close[0]]
            return Term(term, rows, value, "fuzzy", f"spelt like “{label}”: check")
    return Term(term, rows, None, "new", "new to your institution: choose its value")


def decide(
    terms: Mapping[str, list[Term]],
    decisions: Mapping[str, Mapping[str, str]],
    table: Table,
    *,
    accept_proposals: bool = False,
) -> dict[str, dict[str, str]]:
    """``{target: {term: value or HOLD_BACK}}`` for every term, from the contributor's
    ``decisions`` (same shape), the remembered terms and, with ``accept_proposals``, the
    proposals. Refuses (``terms_unconfirmed``) while a term is still open, naming each with
    its proposal, and refuses a value the column does not have."""
    out: dict[str, dict[str, str]] = {}
    still: list[str] = []
    for target, listed in terms.items():
        allowed = table.column(target).allowed or ()
        given = {term_key(k): v for k, v in (decisions.get(target) or {}).items()}
        chosen: dict[str, str] = {}
        for t in listed:
            value = given.get(term_key(t.term))
            if value is None and (not t.open or (accept_proposals and t.value is not None)):
                value = t.value
            if value is None:
                hint = f" (proposed: `{t.value}`)" if t.value else ""
                still.append(f"`{target}`: “{t.term}”{hint}")
                continue
            value = str(value).strip()
            if value and value not in allowed:
                raise BadRequest(
                    f"“{t.term}” cannot be mapped to {value!r}: `{target}` takes "
                    + ", ".join(f"`{a}`" for a in allowed)
                    + " (or leave it unmapped to hold its rows back).",
                    code="unknown_term_value",
                )
            chosen[t.term] = value
        out[target] = chosen
    if still:
        raise BadRequest(
            f"{len(still)} term(s) of your file are not values of the data model yet: "
            + "; ".join(still[:12])
            + ("; …" if len(still) > 12 else "")
            + ". Choose the value each one means, or hold its rows back.",
            code="terms_unconfirmed",
        )
    return out


def apply(frame: pd.DataFrame, decided: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    """The mapped frame with each decided term replaced by its value (a term held back is
    left as written, so validation holds its rows back and says why)."""
    for target, chosen in decided.items():
        if target not in frame.columns:
            continue
        mapped = {term: value for term, value in chosen.items() if value != HOLD_BACK}
        if not mapped:
            continue
        raw = frame[target]
        stripped = raw.astype(str).str.strip()
        replaced = stripped.map(mapped)
        frame[target] = raw.where(replaced.isna() | raw.isna(), replaced)
    return frame
