"""Free-text scrubbing: entity spans replaced by typed placeholders (``<PERSON>``, ``<MRN>``).

Spans come from two sources and are merged:

* an injected analyzer, ``analyze(texts) -> [[(start, end, entity_type), ...], ...]`` (one
  list per text, called once with a batch), typically identifier patterns plus an NER model;
  it is only given texts that pass a cheap pre-filter: a text with no capital letter, no digit
  and no ``@`` cannot hold a name, an identifier, a date, a phone number or an e-mail address
  as such models find them, and is not sent. A second pre-filter, for the NER model alone,
  is :func:`may_hold_name`: a text whose capitalised words are all known non-name vocabulary
  (:data:`NON_NAME_WORDS`, minus every word of the table's own identifiers) and which names
  no month or weekday cannot hold a name NER would find; the engine's analyzer
  (:func:`anonymisation.engine.analyze_texts`) skips NER on it but still runs the patterns;
* a :class:`Gazetteer` built from the table's own identifier columns (patient names, MRNs,
  DINs...): exact, case-insensitive, whitespace-insensitive, whole-word matches of any listed
  term, longest first, by hash look-ups. This catches what NER misses (a lowercase name, an
  MRN in a comment) and runs on every text, pre-filtered or not.

Overlapping spans are merged into one (typed as the longest of them) and replaced by
``<TYPE>`` (:func:`replace_spans`, what presidio's ``replace`` operator does). Work is done
once per distinct text.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anonymisation.classify import NAME_TITLES, SAFE_VOCABULARY

Span = tuple[int, int, str]
Analyzer = Callable[[list[str]], Sequence[Sequence[Span]]]

MIN_TERM_LENGTH = 3  # shorter gazetteer terms ("A", "12") would match everywhere
_MAY_HOLD_ENTITY = re.compile(r"[\d@]")
_SPACES = re.compile(r"\s+")
_RUNS = re.compile(r"\s+|\S+")
_ODD_SPACE = re.compile(r"[^\S ]|  ")  # whitespace other than single spaces
_CANDIDATE = re.compile(r"(?<!\w)\S")  # where a whole-word term may start
_WORD = re.compile(r"\w+")
_NAME_PART = re.compile(r"[^\W\d_][\w'’\-]*")

_CAPITALISED = re.compile(r"(?<![\w'’\-])[^\W\d_a-z][^\W\d_]*(?:['’\-][^\W\d_]+)*")
_DATE_WORD = re.compile(
    r"\b(?:january|february|march|april|may|june|july|august|september|october|november|"
    r"december|monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b",
    re.IGNORECASE,
)
# Capitalised words that are not names: sentence openers, function words and the vocabulary
# of cell and gene therapy process notes, plus single letters (units, "A", "I"). Kept out on
# purpose: titles (Dr, Mr, Nurse ...: a name follows), month and weekday names (May, June,
# dates), and words that are also common names or surnames (Will, Grace, Rose, Day, Hall,
# Green, Ward, Mason, Cooper ...). Extend it with words, never with names.
_NON_NAME_TEXT = """
a an the this that these those it its there here he she they we i you his her their our
my your who whom which what when where why how all any both each every few more most
other some such no nor not only own same so than too very just also again further then
once and but or if because as until while of at by for with about against between into
through during before after above below to from up down in out on off over under per
via re vs versus within without across along around following prior since upon
is are was were be been being have has had having do does did done doing can could
should would must shall might yes ok okay please thanks note notes see seen
ran run runs running rerun used using use took taken given sent
patient patients pt pts donor donors recipient subject subjects participant family
relative courier carrier driver team staff site centre center clinic unit lab
laboratory hospital pharmacy apheresis collection collected collect harvest harvested
selection selected activation activated transduction transduced expansion expanded
formulation formulated cryopreservation cryopreserved cryo thaw thawed thawing infusion
infused infuse shipment shipped ship shipping receipt received receive delivery
delivered dispatch dispatched transport transported transfer transferred storage stored
release released qc qa qp pass passed fail failed failure pending hold held quarantine
deviation deviations capa oos investigation incident event adverse ae sae sop batch lot
bag bags label labels labelled wristband cassette kit kits tubing line vial vials sample
samples aliquot aliquots product products dose doses volume weight temp temperature
count counts viability purity potency sterility endotoxin mycoplasma identity cells
cell tnc wbc rbc plt cd cd3 cd4 cd8 cd19 cd34 cd45 car crp il ldh ferritin hb mnc pbmc
hsc nk tcr dmso acd ffp hla abo rh spoke call called calling phoned rang emailed
informed told asked advised discussed reviewed review checked check confirmed confirm
verified noted reported report recorded documented logged updated requested request
arranged scheduled rescheduled booked cancelled postponed delayed delay late early
started start stopped stop completed complete finished done ongoing planned plan
consent consented consenting follow-up followup follow visit visits appointment
next previous last first second third final initial repeat repeated new old
mild moderate severe fever rigors nausea vomiting headache rash hypotension hypoxia
crs icans neutropenia infection sepsis stable unstable well unwell good poor normal
abnormal high low raised elevated reduced ok fine clear ready available unavailable
bag slightly warm cold frozen intact leak leaking damaged broken missing lost found
morning afternoon evening night today tomorrow yesterday tonight weekend week weeks
month months year years hour hours minute minutes min mins h hr hrs am pm
mg ml mcg kg g l dl mmol umol iu pg ng ul e9 e6 x c f
mrn nhs din coi isbt sn s/n id ids ref no nos number numbers tel phone mobile email
"""
NON_NAME_WORDS: frozenset[str] = frozenset(
    {w.casefold() for w in _NON_NAME_TEXT.split()}
    | {chr(c).casefold() for c in range(ord("a"), ord("z") + 1)}
    | {w for v in SAFE_VOCABULARY for w in (v, *v.split())}
)


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


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


class Gazetteer:
    r"""Exact-match finder for known identifiers: case-insensitive, whitespace-insensitive
    (any run of whitespace in the text matches one space of a term), whole-word (no word
    character on either side, as ``(?<!\w)`` and ``(?!\w)``) and longest term first, left to
    right, without overlaps.

    Terms live in a dict; a candidate start is any non-space character not preceded by a word
    character, and only the lengths of terms sharing its first :data:`MIN_TERM_LENGTH`
    characters are looked up there. Cost grows with the text, not with the number of terms
    (one alternation regex of 10^5 identifier values takes minutes to compile and run)."""

    def __init__(self, terms: Mapping[str, Iterable[object]]):
        self.types: dict[str, str] = {}
        for entity, values in terms.items():
            for value in values:
                if value is None or (isinstance(value, float) and value != value):
                    continue
                term = _norm_term(str(value))
                if len(term) >= MIN_TERM_LENGTH:
                    self.types.setdefault(term, entity.upper())
        by_prefix: dict[str, set[int]] = {}
        for term in self.types:
            by_prefix.setdefault(term[:MIN_TERM_LENGTH], set()).add(len(term))
        self._lengths = {p: sorted(ls, reverse=True) for p, ls in by_prefix.items()}

    def words(self) -> frozenset[str]:
        """Every casefolded word of every term (``"John Smith"`` gives john and smith)."""
        return frozenset(w for t in self.types for w in _WORD.findall(t))

    def find(self, text: str) -> list[Span]:
        if not self.types or len(text) < MIN_TERM_LENGTH:
            return []
        if _ODD_SPACE.search(text):  # collapse whitespace runs, remembering the offsets
            pieces: list[str] = []
            positions: list[int] = []
            for m in _RUNS.finditer(text):
                if m.group(0)[0].isspace():
                    pieces.append(" ")
                    positions.append(m.start())
                else:
                    pieces.append(m.group(0))
                    positions.extend(range(m.start(), m.end()))
            flat, starts = "".join(pieces), positions
        else:
            flat, starts = text, None
        folded = flat.casefold()
        if len(folded) != len(flat):  # casefold changed lengths (e.g. "ß"): compare lowered
            folded = flat.lower() if len(flat.lower()) == len(flat) else flat
        spans: list[Span] = []
        n, lengths, types = len(flat), self._lengths, self.types
        after = 0  # end of the last match: no overlaps
        for m in _CANDIDATE.finditer(flat):
            i = m.start()
            if i < after:
                continue
            for length in lengths.get(folded[i : i + MIN_TERM_LENGTH], ()):
                stop = i + length
                if stop > n or (stop < n and _is_word(flat[stop])):
                    continue
                kind = types.get(folded[i:stop])
                if kind is not None:
                    if starts is None:
                        spans.append((i, stop, kind))
                    else:
                        spans.append((starts[i], starts[stop - 1] + 1, kind))
                    after = stop
                    break
        return spans


def gazetteer_from_frame(
    frame: pd.DataFrame, columns: Mapping[str, str], *, name_parts: bool = False
) -> dict[str, set[str]]:
    """Gazetteer terms from a table's identifier columns: ``{"patient_name": "PERSON",
    "mrn": "MRN"}`` gives ``{"PERSON": {...names}, "MRN": {...}}``. With ``name_parts``,
    the words of PERSON values (surnames alone, "Mr Smith") are added too, without titles
    ("Nurse Kim" adds Kim, never nurse) and without punctuation ("Müller, Jörg" adds Müller
    and Jörg)."""
    terms: dict[str, set[str]] = {}
    for column, entity in columns.items():
        if column not in frame:
            continue
        values = {str(v).strip() for v in frame[column].dropna().unique()}
        bucket = terms.setdefault(entity.upper(), set())
        bucket.update(v for v in values if v)
        if name_parts and entity.upper() == "PERSON":
            bucket.update(
                w
                for v in values
                for w in _NAME_PART.findall(v)
                if len(w) >= MIN_TERM_LENGTH and w.casefold() not in NAME_TITLES
            )
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


def may_hold_name(texts: Iterable[str], vocabulary: frozenset[str] = NON_NAME_WORDS) -> np.ndarray:
    """Second pre-filter, for the NER model only: True where a text has a capitalised word
    (first letter upper case) whose casefolded form is not in ``vocabulary``, or a month or
    weekday name in any case (dates NER would find). A text for which this is False has no
    word a name could be (every capitalised word is known vocabulary), so NER is skipped on
    it; identifier patterns and the gazetteer still run on it. Pass the vocabulary without
    the gazetteer's words (:func:`name_vocabulary`) so a known name is never vocabulary."""
    out = []
    for text in texts:
        hit = _DATE_WORD.search(text) is not None
        if not hit:
            for word in _CAPITALISED.findall(text):
                if word[0].isupper() and word.casefold() not in vocabulary:
                    hit = True
                    break
        out.append(hit)
    return np.array(out, dtype=bool)


def name_vocabulary(gazetteer: Gazetteer | None = None) -> frozenset[str]:
    """:data:`NON_NAME_WORDS` minus every word of the gazetteer's terms (a patient called
    Rose or Ward stays a name in this table)."""
    if gazetteer is None:
        return NON_NAME_WORDS
    return NON_NAME_WORDS - gazetteer.words()


def replace_spans(text: str, spans: Sequence[Span]) -> str:
    """``text`` with each of the sorted, non-overlapping ``spans`` replaced by ``<TYPE>``
    (what presidio's ``replace`` operator does with its default value)."""
    parts: list[str] = []
    last = 0
    for start, end, kind in spans:
        parts.append(text[last:start])
        parts.append(f"<{kind}>")
        last = end
    parts.append(text[last:])
    return "".join(parts)


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
            text = replace_spans(text, spans)
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
