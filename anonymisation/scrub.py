"""Free-text scrubbing: entity spans replaced by typed placeholders (``<PERSON>``, ``<MRN>``).

Spans come from two sources and are merged:

* an injected analyzer, ``analyze(texts) -> [[(start, end, entity_type), ...], ...]`` (one
  list per text, called once with a batch), typically an NER model; it is only given texts
  that pass a cheap pre-filter: a text with no capital letter, no digit and no ``@`` cannot
  hold a name, an identifier, a date, a phone number or an e-mail address as such models
  find them, and is not sent;
* gazetteers built from the table's own identifier columns (patient names, MRNs, DINs...):
  exact, case-insensitive, whole-word matches of any listed term, longest first, through a
  single compiled regex. This catches what NER misses (a lowercase name, an MRN in a
  comment) and runs on every text, pre-filtered or not.

Overlapping spans are merged into one (typed as the longest of them) before presidio's
``AnonymizerEngine`` replaces them. Work is done once per distinct text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from presidio_anonymizer import AnonymizerEngine
from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

Span = tuple[int, int, str]
Analyzer = Callable[[list[str]], Sequence[Sequence[Span]]]

MIN_TERM_LENGTH = 3  # shorter gazetteer terms ("A", "12") would match everywhere
_MAY_HOLD_ENTITY = re.compile(r"[\d@]")
_SPACES = re.compile(r"\s+")


@dataclass
class ScrubResult:
    """Scrubbed texts (same index, nulls kept) and what was done."""

    texts: pd.Series
    texts_scanned: int = 0  # distinct non-null texts examined
    texts_skipped: int = 0  # of those, not sent to the analyzer by the pre-filter
    texts_changed: int = 0  # distinct texts with at least one replacement
    entities: Counter[str] = field(default_factory=Counter)  # replacements by type

    def to_dict(self) -> dict[str, Any]:
        return {
            "texts_scanned": self.texts_scanned,
            "texts_skipped": self.texts_skipped,
            "texts_changed": self.texts_changed,
            "entities": dict(sorted(self.entities.items())),
        }


def _norm_term(text: str) -> str:
    return _SPACES.sub(" ", text).strip().casefold()


class Gazetteer:
    """Exact-match finder for known identifiers: one compiled regex, longest terms first."""

    def __init__(self, terms: Mapping[str, Iterable[object]]):
        self.types: dict[str, str] = {}
        for entity, values in terms.items():
            for value in values:
                if value is None or (isinstance(value, float) and value != value):
                    continue
                term = _norm_term(str(value))
                if len(term) >= MIN_TERM_LENGTH:
                    self.types.setdefault(term, entity.upper())
        ordered = sorted(self.types, key=lambda t: (-len(t), t))
        alternatives = [r"\s+".join(map(re.escape, t.split(" "))) for t in ordered]
        self.pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE)
            if alternatives
            else None
        )

    def find(self, text: str) -> list[Span]:
        if self.pattern is None:
            return []
        return [
            (m.start(), m.end(), self.types.get(_norm_term(m.group(0)), "IDENTIFIER"))
            for m in self.pattern.finditer(text)
        ]


def gazetteer_from_frame(
    frame: pd.DataFrame, columns: Mapping[str, str], *, name_parts: bool = False
) -> dict[str, set[str]]:
    """Gazetteer terms from a table's identifier columns: ``{"patient_name": "PERSON",
    "mrn": "MRN"}`` gives ``{"PERSON": {...names}, "MRN": {...}}``. With ``name_parts``,
    the words of PERSON values (surnames alone, "Mr Smith") are added too."""
    terms: dict[str, set[str]] = {}
    for column, entity in columns.items():
        if column not in frame:
            continue
        values = {str(v).strip() for v in frame[column].dropna().unique()}
        bucket = terms.setdefault(entity.upper(), set())
        bucket.update(v for v in values if v)
        if name_parts and entity.upper() == "PERSON":
            bucket.update(w for v in values for w in v.split() if len(w) >= MIN_TERM_LENGTH)
    return terms


def merge_spans(spans: Iterable[Span]) -> list[Span]:
    """Overlapping spans merged into one, typed as the longest contributing span."""
    merged: list[list[Any]] = []  # [start, end, type, longest length]
    for start, end, kind in sorted(spans, key=lambda s: (s[0], -s[1])):
        if end <= start:
            continue
        if merged and start < merged[-1][1]:
            last = merged[-1]
            if end - start > last[3]:
                last[2], last[3] = kind, end - start
            last[1] = max(last[1], end)
        else:
            merged.append([start, end, kind, end - start])
    return [(s, e, k) for s, e, k, _ in merged]


def may_hold_entity(texts: pd.Series) -> pd.Series:
    """Pre-filter: True where a text has a capital letter, a digit or an ``@``."""
    text = texts.astype(str)
    return (text.str.lower() != text) | text.str.contains(_MAY_HOLD_ENTITY)


_ENGINE: AnonymizerEngine | None = None


def _engine() -> AnonymizerEngine:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = AnonymizerEngine()
    return _ENGINE


def _replace(text: str, spans: list[Span]) -> str:
    results = [RecognizerResult(kind, start, end, 1.0) for start, end, kind in spans]
    operators = {"DEFAULT": OperatorConfig("replace")}  # "<ENTITY_TYPE>"
    return _engine().anonymize(text=text, analyzer_results=results, operators=operators).text


def scrub_texts(
    texts: pd.Series,
    analyze: Analyzer,
    *,
    gazetteer: Mapping[str, Iterable[object]] | Gazetteer | None = None,
) -> ScrubResult:
    """Replace entities in ``texts`` by typed placeholders (see the module docstring)."""
    present = texts.notna()
    codes, uniques = pd.factorize(texts[present].astype(str))
    distinct = pd.Series(uniques, dtype="object")
    gaz = gazetteer if isinstance(gazetteer, Gazetteer) else Gazetteer(gazetteer or {})

    send = may_hold_entity(distinct).to_numpy() if len(distinct) else []
    to_analyze = [t for t, s in zip(distinct, send, strict=True) if s]
    found = list(analyze(to_analyze)) if to_analyze else []
    if len(found) != len(to_analyze):
        raise ValueError("the analyzer must return one span list per text")
    model_spans = iter(found)

    entities: Counter[str] = Counter()
    changed = 0
    scrubbed = []
    for text, sent in zip(distinct, send, strict=True):
        spans = list(gaz.find(text))
        if sent:
            for start, end, kind in next(model_spans):
                start, end = max(0, int(start)), min(len(text), int(end))
                spans.append((start, end, str(kind).upper()))
        spans = merge_spans(spans)
        if spans:
            changed += 1
            entities.update(kind for _, _, kind in spans)
            text = _replace(text, spans)
        scrubbed.append(text)

    out = pd.Series(np.full(len(texts), None, dtype=object), index=texts.index)
    if len(scrubbed):
        out[present] = pd.Series(scrubbed, dtype="object").to_numpy()[codes]
    return ScrubResult(
        texts=out,
        texts_scanned=len(distinct),
        texts_skipped=int(len(distinct) - len(to_analyze)),
        texts_changed=changed,
        entities=entities,
    )
