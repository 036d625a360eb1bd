"""The full de-identification engine: classify every column, act on its class, check risk.

:func:`deidentify_frame` runs, in order,

1. :func:`anonymisation.classify.classify_frame` (with optional CDM ``hints``);
2. one action per column, by class:

   * direct identifiers are dropped;
   * linkable identifiers become keyed pseudonyms (:func:`anonymisation.pseudonyms.pseudonymise`);
   * quasi-identifiers are generalised: dates become whole days since the row's anchor (looked
     up by ``anchor_key`` in ``anchors``; the column keeps its name) or, without anchors, the
     month; ages become 5-year bands; weights are rounded to 5; other categories rarer than
     ``k`` are merged into ``"other"``;
   * free text is scrubbed over its distinct texts (CGT identifier regexes and a gazetteer of
     the frame's own direct and linkable identifier values, built before those columns are
     dropped, on every text; spaCy NER only on texts with a capitalised word that is not
     known non-name vocabulary, see :func:`scrub_column`), or dropped when
     ``scrub_free_text`` is false;
   * sensitive and safe columns are kept as they are;
3. :func:`anonymisation.risk.enforce_k` over the quasi-identifiers (date offsets excluded by
   default), with coarser generalisation ladders computed from the raw values.

Everything is vectorised over columns and distinct values; rows are never iterated.
:func:`anonymisation.deid.deidentify` (the hub pipeline's minimal step) is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from anonymisation.classify import (
    ORG_WORDS,
    SAFE_VOCABULARY,
    ColumnDecision,
    allow_set,
    classify_frame,
)
from anonymisation.dates import coarsen, offsets_by_key
from anonymisation.generalise import age_band, merge_rare, round_to
from anonymisation.identifiers import DIRECT, FREE_TEXT, LINKABLE, QUASI, SENSITIVE
from anonymisation.progress import Progress, Steps
from anonymisation.pseudonyms import KeyChain, pseudonymise
from anonymisation.recognizers import ISBT_PRODUCT_CODE, LOT_CODE, VALUE_PATTERNS, ValuePattern
from anonymisation.risk import RiskResult, enforce_k
from anonymisation.scrub import (
    NON_NAME_WORDS,
    Gazetteer,
    ScrubResult,
    Span,
    gazetteer_from_frame,
    may_hold_name,
    name_vocabulary,
    scrub_texts,
)

EXAMPLES = 3
# spaCy labels -> Presidio-style entity types used as placeholders (<PERSON>, <LOCATION> ...).
NER_TYPES: dict[str, str] = {
    "PERSON": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
    "ORG": "ORGANIZATION",
    "NORP": "NRP",
    "DATE": "DATE_TIME",
    "TIME": "DATE_TIME",
}
# Labels the small model sometimes gives a person's name: such a span is a PERSON when it
# holds a capitalised word outside the non-name vocabulary, else it is ignored.
NAME_LIKE_LABELS = frozenset({"EVENT", "PRODUCT", "WORK_OF_ART", "LAW"})
# Patterns searched inside free text: every identifier shape except the safe product code
# and the weak lot-code shape (shared with deviation and reagent codes).
TEXT_PATTERNS: tuple[ValuePattern, ...] = tuple(
    p for p in VALUE_PATTERNS if p not in (ISBT_PRODUCT_CODE, LOT_CODE)
)
_ADDRESS_COMMA = re.compile(r"\s*,\s*$")
_ORG_PHRASE = re.compile(r"(?:[^\W\d_][\w&'’.\-]*\s+){0,6}[^\W\d_][\w&'’.\-]*\s*,\s*$")
_AGE_NAME = re.compile(r"(^|_)age(_|$)")
_WEIGHT_NAME = re.compile(r"(^|_)weight")


@dataclass
class EngineResult:
    """The de-identified frame and the report of what was done to each column."""

    frame: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)
    risk: RiskResult | None = None


def progress_steps(n_columns: int) -> int:
    """How many steps :func:`deidentify_frame` reports for a frame of ``n_columns``
    (classification, one per column, the risk check)."""
    return n_columns + 2


def _norm(name: object) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")


def _mask(value: object) -> str:
    """First and last character only: ``"John Smith"`` -> ``"J********h"``."""
    text = str(value)
    if len(text) <= 2:
        return "*" * len(text)
    return text[0] + "*" * (len(text) - 2) + text[-1]


def _text_pattern_spans(texts: list[str]) -> list[list[Span]]:
    """CGT identifier, e-mail, phone and date regex spans in each text (validators applied);
    each pattern's ``finditer`` runs only on the texts its vectorised pre-check selects."""
    out: list[list[Span]] = [[] for _ in texts]
    if not texts:
        return out
    series = pd.Series(texts, dtype=object)
    for pattern in TEXT_PATTERNS:
        hits = np.flatnonzero(pattern.contains(series).to_numpy())
        for i in hits:
            for m in pattern.text_re.finditer(texts[i]):
                if pattern.validator is None or pattern.validator(m.group(0)):
                    out[i].append((m.start(), m.end(), pattern.entity))
    return out


def _has_org_word(text: str) -> bool:
    return any(w.casefold() in ORG_WORDS for w in re.findall(r"[^\W\d_]+", text))


def _in_address(text: str, start: int, allowed: list[Span]) -> bool:
    """True when the span starting at ``start`` follows an organisation and a comma
    ("Northbridge Cell Therapies, Harwell"): a place in the organisation's address. The
    organisation is an allow-listed term or a capitalised phrase with an organisation
    word."""
    before = text[:start]
    comma = _ADDRESS_COMMA.search(before)
    if comma is None:
        return False
    if any(e == comma.start() for _, e, _ in allowed):
        return True
    phrase = _ORG_PHRASE.search(before)
    return phrase is not None and _has_org_word(phrase.group(0))


def analyze_texts(
    texts: list[str],
    *,
    ner_vocabulary: frozenset[str] | None = None,
    stats: dict[str, int] | None = None,
    allow: Gazetteer | None = None,
) -> list[list[Span]]:
    """The analyzer :func:`anonymisation.scrub.scrub_texts` expects: the vectorised
    identifier regexes of :mod:`anonymisation.recognizers` on every text, plus spaCy NER
    (labels mapped to Presidio types; known equipment and reagent names are never entities).

    With ``ner_vocabulary``, NER runs only on the texts :func:`anonymisation.scrub.
    may_hold_name` keeps (a capitalised word outside that vocabulary, or a month or weekday
    name); without it, on every text. ``stats["ner_texts"]`` counts the texts NER ran on.

    Organisations and places are never people: an NER span inside an ``allow`` term (the
    site's vocabulary) is dropped, a PERSON span holding an organisation word becomes
    ORGANIZATION, and a PERSON or place span right after an organisation and a comma (a
    town in its address) is left in the text."""
    from anonymisation.nlp import ner_batch

    regex_spans = _text_pattern_spans(texts)
    if ner_vocabulary is None:
        needs_ner = np.ones(len(texts), dtype=bool)
    else:
        needs_ner = may_hold_name(texts, ner_vocabulary)
    ner_texts = [t for t, keep in zip(texts, needs_ner, strict=True) if keep]
    if stats is not None:
        stats["ner_texts"] = stats.get("ner_texts", 0) + len(ner_texts)
    ner_found = iter(ner_batch(ner_texts) if ner_texts else [])
    vocabulary = NON_NAME_WORDS if ner_vocabulary is None else ner_vocabulary
    out = []
    for text, found, keep in zip(texts, regex_spans, needs_ner, strict=True):
        spans = list(found)
        ner = next(ner_found) if keep else ()
        allowed = allow.find(text) if allow is not None and ner else []
        for start, end, label in ner:
            kind = NER_TYPES.get(label)
            words = text[start:end]
            if label in NAME_LIKE_LABELS and may_hold_name([words], vocabulary)[0]:
                kind = "PERSON"
            if kind is None or words.strip().lower() in SAFE_VOCABULARY:
                continue
            if any(a <= start and end <= b for a, b, _ in allowed):
                continue
            if _in_address(text, start, allowed):
                continue
            if kind == "PERSON" and _has_org_word(words):
                kind = "ORGANIZATION"
            spans.append((start, end, kind))
        out.append(spans)
    return out


def scrub_column(
    values: pd.Series, gazetteer: Gazetteer, allow: Gazetteer | None = None
) -> tuple[ScrubResult, dict[str, Any]]:
    """Scrub one free-text column as :func:`deidentify_frame` does: over distinct texts, the
    identifier patterns and ``gazetteer`` everywhere, NER only where a name may be (the
    gazetteer's words never count as safe vocabulary; NER spans inside an ``allow`` term
    are kept). Returns the result and its report entry (:meth:`ScrubResult.to_dict` plus
    ``ner_texts``)."""
    stats: dict[str, int] = {"ner_texts": 0}
    analyze = partial(
        analyze_texts, ner_vocabulary=name_vocabulary(gazetteer), stats=stats, allow=allow
    )
    scrubbed = scrub_texts(values, analyze, gazetteer=gazetteer)
    return scrubbed, {**scrubbed.to_dict(), "ner_texts": stats["ner_texts"]}


def _is_date(decision: ColumnDecision, values: pd.Series) -> bool:
    return decision.entity == "DATE_TIME" or pd.api.types.is_datetime64_any_dtype(values.dtype)


def _is_age(decision: ColumnDecision) -> bool:
    return decision.entity == "AGE" or bool(_AGE_NAME.search(_norm(decision.column)))


def _categories(values: pd.Series) -> pd.Series:
    """Values as text categories (nulls kept) so ``"other"`` never mixes with numbers."""
    if pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype):
        return values.astype(object)
    text = values.astype(str).astype(object)
    return text.where(values.notna(), None)


def _quasi(
    name: str,
    decision: ColumnDecision,
    values: pd.Series,
    raw: pd.DataFrame,
    *,
    anchors: pd.Series | None,
    anchor_key: str,
    k: int,
) -> tuple[pd.Series, str, list[Callable[[pd.Series], tuple[pd.Series, str]]], bool]:
    """(generalised values, action, coarser ladder on the raw values, is a date offset)."""
    ladder: list[Callable[[pd.Series], tuple[pd.Series, str]]]
    if _is_date(decision, values):
        if anchors is not None and anchor_key in raw.columns and name != anchor_key:
            days = offsets_by_key(values, raw[anchor_key], anchors)
            return days, f"days since first collection (by {anchor_key})", [], True
        ladder = [lambda _v: (coarsen(values, "year"), "coarsened to year")]
        return coarsen(values, "month"), "coarsened to month", ladder, False
    if _is_age(decision):
        banded, how = age_band(values)
        ladder = [partial(_age_step, raw=values, width=w) for w in (10, 20)]
        return banded, how, ladder, False
    if _WEIGHT_NAME.search(_norm(name)):
        rounded, how = round_to(values, 5)
        ladder = [partial(_round_step, raw=values, step=s) for s in (10, 20)]
        return rounded, how, ladder, False
    merged, how = merge_rare(_categories(values), k)
    ladder = [lambda v: merge_rare(v, 2 * k)]
    return merged, f"rare categories {how}", ladder, False


def _age_step(_v: pd.Series, *, raw: pd.Series, width: int) -> tuple[pd.Series, str]:
    """A coarser age band, always computed from the raw ages."""
    return age_band(raw, width=width)


def _round_step(_v: pd.Series, *, raw: pd.Series, step: float) -> tuple[pd.Series, str]:
    """Coarser rounding, always computed from the raw values."""
    return round_to(raw, step)


def _examples(before: pd.Series, after: pd.Series | None, *, mask: bool) -> list[dict[str, Any]]:
    """Up to :data:`EXAMPLES` (before, after) pairs from the first rows with distinct values."""
    present = before.dropna()
    if present.empty:
        return []
    first = present[~present.astype(str).duplicated()].head(EXAMPLES)
    out = []
    for label, value in first.items():
        shown: Any = _mask(value) if mask else _jsonable(value)
        new = None
        if after is not None and label in after.index:
            new = _jsonable(after.loc[label])
        out.append({"before": shown, "after": new})
    return out


def _jsonable(value: Any) -> Any:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, int | float | str | bool):
        return value
    return str(value)


def deidentify_frame(
    frame: pd.DataFrame,
    *,
    key: bytes | Sequence[bytes],
    hints: Mapping[str, str] | None = None,
    kinds: Mapping[str, str] | None = None,
    anchors: pd.Series | None = None,
    anchor_key: str = "coi_id",
    k: int = 5,
    quasi: Sequence[str] | None = None,
    scrub_free_text: bool = True,
    progress: Progress | None = None,
    allow: Iterable[str] | None = None,
) -> EngineResult:
    """De-identify ``frame`` (see the module docstring) and report every decision.

    ``key`` is one HMAC key or a key chain (oldest first), each at least 16 bytes. ``kinds``
    maps columns to logical types; a ``date``/``datetime`` kind marks a date column whatever
    the classifier's entity. ``anchors`` is :func:`anonymisation.dates.anchor_table` output,
    keyed by the raw ``anchor_key`` values. ``quasi`` overrides the columns checked for
    ``k``-anonymity. ``progress(steps_done, label)`` is called after each of
    :func:`progress_steps` steps. ``allow`` lists values that are never people (the data
    model's categories, the site's released vocabulary and institution name): the
    classifier never counts them as names and free-text scrubbing leaves NER entities
    inside them alone. The result keeps the input's index (minus rows the risk step had to
    drop)."""
    key_chain: KeyChain = key if isinstance(key, bytes | bytearray) else list(key)
    pseudonymise(pd.Series([], dtype=object), key_chain)  # validates the key(s) up front
    if k < 1:
        raise ValueError("k must be at least 1")
    kinds = kinds or {}
    step = Steps(progress)
    original_index = frame.index
    raw = frame.reset_index(drop=True)
    raw.columns = [str(c) for c in raw.columns]
    allowed = allow_set(allow)
    decisions = classify_frame(raw, hints, allow=allowed)
    allow_terms = Gazetteer({"ALLOW": allowed}) if allowed else None
    step("classified columns")
    for d in decisions:  # a declared date kind wins over the classifier's entity
        if kinds.get(d.column) in ("date", "datetime") and d.klass == QUASI:
            d.entity = "DATE_TIME"

    identifiers = {
        d.column: (d.entity or ("PERSON" if d.klass == DIRECT else "IDENTIFIER"))
        for d in decisions
        if d.klass in (DIRECT, LINKABLE)
    }
    out: dict[str, pd.Series] = {}
    actions: dict[str, str] = {}
    ladders: dict[str, list[Callable[[pd.Series], tuple[pd.Series, str]]]] = {}
    default_quasi: list[str] = []
    attention: list[str] = []
    scrub_stats: dict[str, dict[str, Any]] = {}
    gazetteer = None
    for d in decisions:
        name, values = d.column, raw[d.column]
        if d.klass == DIRECT:
            actions[name] = "drop"
        elif d.klass == LINKABLE:
            out[name] = pseudonymise(values, key_chain)
            actions[name] = "pseudonymise (HMAC-SHA256)"
        elif d.klass == QUASI:
            new, how, ladder, is_offset = _quasi(
                name, d, values, raw, anchors=anchors, anchor_key=anchor_key, k=k
            )
            out[name] = new
            actions[name] = f"generalise: {how}"
            if ladder:
                ladders[name] = ladder
            if not is_offset:
                default_quasi.append(name)
        elif d.klass == FREE_TEXT and scrub_free_text:
            if gazetteer is None:
                gazetteer = Gazetteer(gazetteer_from_frame(raw, identifiers, name_parts=True))
            scrubbed, scrub_stats[name] = scrub_column(values, gazetteer, allow_terms)
            out[name] = scrubbed.texts
            actions[name] = "scrub: NER + identifier patterns + gazetteer"
            if scrubbed.texts_changed:
                attention.append(
                    f"{name}: free text scrubbed ({scrubbed.texts_changed} distinct texts "
                    "changed); review a sample before release"
                )
        elif d.klass == FREE_TEXT:
            actions[name] = "drop"
        else:
            out[name] = values
            actions[name] = "keep"
        step(f"{name}: {actions[name]}")

    if anchors is not None and anchor_key not in raw.columns:
        attention.append(f"anchors given but no {anchor_key!r} column: dates coarsened to month")
    released = pd.DataFrame(out, index=raw.index)
    check = [c for c in (quasi if quasi is not None else default_quasi) if c in released]
    sensitive = next((d.column for d in decisions if d.klass == SENSITIVE), None)
    risk = enforce_k(released, check, k, generalisers=ladders, sensitive=sensitive)
    step("risk check")
    if risk.budget_exceeded:
        attention.append(
            f"k={k} needed more suppression than the budget ({risk.rows_suppressed} rows, "
            f"{risk.cells_suppressed} cells)"
        )
    result = risk.frame
    for d in decisions:
        if d.needs_attention:
            attention.append(
                f"{d.column}: classified {d.klass}"
                + (f" ({d.entity})" if d.entity else "")
                + f" at confidence {d.confidence:.2f}; check the evidence"
            )

    columns = []
    for d in decisions:
        masked = d.klass in (DIRECT, LINKABLE, FREE_TEXT)
        after = result[d.column] if d.column in result else None
        entry: dict[str, Any] = {
            "name": d.column,
            "class": d.klass,
            "entity": d.entity,
            "confidence": round(d.confidence, 3),
            "action": actions[d.column],
            "evidence": [e.to_dict() for e in d.evidence],
            "needs_attention": d.needs_attention,
            "examples": _examples(raw[d.column], after, mask=masked),
        }
        touched = [s for s in risk.steps if re.search(rf" {re.escape(d.column)}( in|:)", s)]
        if touched:
            entry["risk_steps"] = touched
        if d.column in scrub_stats:
            entry["scrub"] = scrub_stats[d.column]
        columns.append(entry)

    report: dict[str, Any] = {
        "columns": columns,
        "rows_in": int(len(frame)),
        "rows_out": int(len(result)),
        "k": k,
        "quasi": check,
        "risk": risk.to_dict(),
        "attention": attention,
    }
    if risk.l is not None:
        report["l"] = risk.l
        report["l_sensitive"] = sensitive
    result = result.copy()
    result.index = original_index[result.index.to_numpy()]
    return EngineResult(result, report, risk)
