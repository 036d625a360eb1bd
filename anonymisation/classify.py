"""Guess each column's identifier class from its name, dtype and values, with evidence.

The common data model's hints are trusted but checked: a column is never demoted below its
hint, and is promoted when its values clearly hold something worse (a "safe" column of
e-mail addresses). Without a hint, the decision combines

1. a column-name prior (``mrn``, ``dob``, ``phone``, ``notes`` ...), weak on its own;
2. dtype routing: numeric, boolean and datetime columns never go through NER, and object
   columns whose values all parse as numbers are treated as numeric;
3. vectorised pattern recognizers (:mod:`anonymisation.recognizers`) over a seeded sample of
   the column's distinct non-empty values;
4. person names on every short-text column, whatever its cardinality or header, over its
   distinct values: name patterns (titles such as Dr, Nurse, Sr.; "Surname, Given";
   initials; any script) and spaCy NER (:func:`anonymisation.nlp.ner_batch`) on the other
   name-shaped values; NER over the values of free-text columns. A column of names is a
   direct identifier (PERSON). Allow-listed values (``allow``: the data model's categories,
   a site's released vocabulary), organisation words (:data:`ORG_WORDS`) and known
   equipment and supplier names are never names.

Labels come from hit *fractions*, never single hits: an entity labels a column when it
matches at least ``LABEL_RATE`` (0.6) of the sampled distinct values (and at least two of
them, unless there is only one); between ``ATTENTION_RATE`` (0.1) and that the column is
flagged ``needs_attention`` with the evidence, but keeps its label. Where name and values
disagree, the more severe class wins (so ``notes`` full of MRNs is a direct identifier and
``id`` full of names is PERSON), except that safe lookalikes stay safe: ISBT 128 product
codes (the CDM class of ``product_code`` is safe), weak lot-code shapes unless the column
name says lot or batch, lot and serial numbers in reagent/kit/equipment columns (shared by
many patients), and known equipment and reagent names (``Prodigy``, ``CliniMACS``,
``Spectra Optia`` ...), which spaCy sometimes tags as people.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anonymisation.identifiers import (
    CLASSES,
    DIRECT,
    FREE_TEXT,
    LINKABLE,
    QUASI,
    SAFE,
    SEVERITY,
)
from anonymisation.recognizers import VALUE_PATTERNS, ValuePattern

LABEL_RATE = 0.6
ATTENTION_RATE = 0.1
MIN_LABEL_HITS = 2
NER_SAMPLE_MAX = 500  # NER is ~250 texts/s; a rate over 500 values is precise enough
FREE_TEXT_MIN_CHARS = 25
FREE_TEXT_MIN_WORDS = 4

# Identifier class of each entity (CGT-DATA.md "Identifiers"): MRNs, national numbers and
# contact details are direct identifiers; DINs, COIs, lots and serials are linkable.
ENTITY_CLASS: dict[str, str] = {
    "PERSON": DIRECT,
    "EMAIL_ADDRESS": DIRECT,
    "PHONE_NUMBER": DIRECT,
    "UK_NHS": DIRECT,
    "US_SSN": DIRECT,
    "NATIONAL_ID": DIRECT,
    "MRN": DIRECT,
    "IP_ADDRESS": DIRECT,
    "LOCATION": DIRECT,
    "UK_POSTCODE": DIRECT,
    "ISBT_DIN": LINKABLE,
    "COI_ID": LINKABLE,
    "LOT_ID": LINKABLE,
    "DEVICE_SERIAL": LINKABLE,
    "DATE_TIME": QUASI,
    "AGE": QUASI,
    "ISBT_FIN": LINKABLE,
    "ISBT_PRODUCT_CODE": SAFE,
}

# Known equipment, reagent and product names: never people, whatever NER says.
SAFE_VOCABULARY = frozenset(
    v.lower()
    for v in (
        "Prodigy",
        "CliniMACS",
        "CliniMACS Prodigy",
        "CliniMACS Plus",
        "Spectra Optia",
        "Optia",
        "Amicus",
        "COBE Spectra",
        "Sepax",
        "Lovo",
        "Rotea",
        "Xuri",
        "WAVE",
        "G-Rex",
        "Cocoon",
        "Kryo 560",
        "CryoMed",
        "Dynabeads",
        "TransAct",
        "TexMACS",
        "X-VIVO 15",
        "CryoStor CS10",
        "Plasma-Lyte",
        "ACD-A",
        "Kymriah",
        "Yescarta",
        "Tecartus",
        "Breyanzi",
        "Abecma",
        "Carvykti",
        # Device makers and reagent suppliers (NER tags several of them as people).
        "Miltenyi",
        "Miltenyi Biotec",
        "Terumo",
        "Terumo BCT",
        "Fresenius",
        "Fresenius Kabi",
        "Haemonetics",
        "Lonza",
        "Cytiva",
        "Thermo Fisher",
        "Thermo Fisher Scientific",
        "Gibco",
        "Sartorius",
        "Macopharma",
        "BioLife Solutions",
        "Sigma-Aldrich",
        "Baxter",
        "Grifols",
    )
)
# Words that make a capitalised phrase an organisation or a place, never a person
# ("Northbridge Cell Therapies", "Miltenyi Biotec", "St Mary's Hospital").
ORG_WORDS = frozenset(
    w.casefold()
    for w in """
    ltd limited plc inc incorporated llc llp corp corporation co company gmbh ag sa sas bv nv
    kg spa srl oy group holdings biotec biotech biotechnology biologics bio bioscience
    biosciences therapeutics therapies therapy cell cells gene pharma pharmaceutical
    pharmaceuticals laboratories laboratory labs lab scientific sciences science diagnostics
    medical healthcare health systems solutions technologies technology services hospital
    hospitals clinic infirmary university universitaire universitätsklinikum klinikum
    institute institut instituto centre center trust foundation nhs unit facility blood bank
    service services transfusion apheresis manufacturing site campus park road street
    """.split()
)
# Titles that put a person's name after them ("Dr A. Patel", "Sr. O'Neill", "Nurse Kim").
NAME_TITLES = frozenset(
    {
        "dr",
        "prof",
        "professor",
        "nurse",
        "sr",
        "sister",
        "mr",
        "mrs",
        "ms",
        "mx",
        "miss",
        "rev",
        "revd",
        "sir",
        "dame",
        "matron",
        "pharmacist",
    }
)
_NAME_PARTICLES = frozenset(
    {
        "van",
        "von",
        "de",
        "da",
        "del",
        "della",
        "der",
        "den",
        "di",
        "du",
        "la",
        "le",
        "bin",
        "ibn",
        "al",
        "el",
        "ter",
        "ten",
        "dos",
        "das",
        "y",
    }
)
_NULL_TOKENS = frozenset({"", "nan", "none", "null", "na", "n/a", "nat", "-", "--", "unknown"})


@dataclass
class Evidence:
    """One observation behind a decision: where it came from and how strong it was."""

    source: str  # "cdm hint", "column name", "dtype", a recognizer name, or "ner"
    entity: str | None = None
    hit_rate: float | None = None
    sample_size: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ColumnDecision:
    """The identifier class chosen for one column, and why."""

    column: str
    klass: str
    entity: str | None
    confidence: float
    evidence: list[Evidence] = field(default_factory=list)
    needs_attention: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "klass": self.klass,
            "entity": self.entity,
            "confidence": round(self.confidence, 3),
            "needs_attention": self.needs_attention,
            "evidence": [e.to_dict() for e in self.evidence],
        }


# Column-name priors ------------------------------------------------------------------------

_NAME_PRIORS: tuple[tuple[re.Pattern[str], str, str | None, float], ...] = tuple(
    (re.compile(pattern), klass, entity, confidence)
    for pattern, klass, entity, confidence in (
        (
            r"(^|_)(dob|d_o_b|date_of_birth|birth_?date|born|geburtsdatum)(_|$)",
            DIRECT,
            "DATE_TIME",
            0.8,
        ),
        (
            r"(^|_)(mrn|medical_record|hosp(ital)?_(no|num|number)|fallnummer|record_number)"
            r"(_|$)",
            DIRECT,
            "MRN",
            0.8,
        ),
        (r"(^|_)nhs(_|$)", DIRECT, "UK_NHS", 0.8),
        (
            r"(^|_)(ssn|social_security|national_id|national_number|health_number|"
            r"versichertennummer)(_|$)",
            DIRECT,
            "NATIONAL_ID",
            0.8,
        ),
        (r"(^|_)(e_?mail|courriel)(_|$)", DIRECT, "EMAIL_ADDRESS", 0.8),
        (
            r"(^|_)(phone|telephone|tel|mobile|fax|telefon|contact_number)(_|$)",
            DIRECT,
            "PHONE_NUMBER",
            0.8,
        ),
        (
            r"(^|_)(address|street|postcode|post_code|zip|zip_code|anschrift|adresse)(_|$)",
            DIRECT,
            "LOCATION",
            0.8,
        ),
        (
            r"^((patient|full|first|last|given|family|donor|staff|nurse|doctor|physician|"
            r"contact|next_of_kin)_)?name$|(^|_)(surname|forename|patientenname)(_|$)|"
            r"_by$|(^|_)(operator|nurse|physician|doctor|clinician|signatory|collector)(_|$)",
            DIRECT,
            "PERSON",
            0.7,
        ),
        (
            r"(^|_)(notes?|comments?|remarks?|description|narrative|free_?text|details|"
            r"bemerkungen|commentaires)(_|$)",
            FREE_TEXT,
            None,
            0.7,
        ),
        (
            r"(^|_)(reagent|kit|media|medium|consumable|vector|equipment|instrument|device_model)"
            r"(_|$)",
            SAFE,
            None,
            0.5,
        ),
        (r"(^|_)product_code", SAFE, "ISBT_PRODUCT_CODE", 0.6),
        (r"(^|_)(coi|chain_of_identity|patient_id|subject_id)(_|$)", LINKABLE, "COI_ID", 0.7),
        (
            r"(^|_)(din|donation(_id)?|unit_(id|no|number)|bag_(id|no|number)|unit_din)(_|$)",
            LINKABLE,
            "ISBT_DIN",
            0.7,
        ),
        (
            r"(^|_)(fin|facility_(id|code|no|number|identification(_number)?)|isbt_facility)"
            r"(_|$)",
            LINKABLE,
            "ISBT_FIN",
            0.7,
        ),
        (r"(^|_)(lot|batch|charge)(_|$)", LINKABLE, "LOT_ID", 0.7),
        (r"(^|_)(logger|serial|sn|tracker)(_|$)", LINKABLE, "DEVICE_SERIAL", 0.7),
        (r"(^|_)(awb|shipment(_id)?|order(_id)?|waybill)(_|$)", LINKABLE, None, 0.6),
        (r"(^|_)(age)(_|$)", QUASI, "AGE", 0.7),
        (r"(^|_)(date|time|timestamp|datetime|dt|day)(_|$)|_(at|on)$", QUASI, "DATE_TIME", 0.6),
        (
            r"(^|_)(sex|gender|weight|height|bmi|site|centre|center|hospital|facility|abo|rh|"
            r"blood_group|blood_type|indication|diagnosis|ethnicity|race)(_|$)",
            QUASI,
            None,
            0.5,
        ),
        (r"(^|_)(id|no|nr|number|code|ref|reference|key)$", LINKABLE, None, 0.4),
    )
)
_LOTISH_NAME = re.compile(r"(^|_)(lot|batch|charge)(_|$)")
_SHARED_NAME = re.compile(r"(^|_)(reagent|kit|media|medium|consumable|vector|equipment)(_|$)")


def _normalise_name(name: object) -> str:
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")


def name_prior(name: object) -> tuple[str, str | None, float] | None:
    """``(class, entity, confidence)`` suggested by a column's name, or None."""
    normalised = _normalise_name(name)
    for pattern, klass, entity, confidence in _NAME_PRIORS:
        if pattern.search(normalised):
            return klass, entity, confidence
    return None


# Sampling ---------------------------------------------------------------------------------


def distinct_sample(values: pd.Series, sample_size: int, seed: int) -> tuple[pd.Series, int]:
    """Up to ``sample_size`` distinct non-empty values as stripped strings (seeded sample,
    in first-seen order), and how many distinct non-empty values there are."""
    present = values.dropna()
    if present.empty:
        return pd.Series([], dtype=object), 0
    # Distinct raw values first (cheap), then strings: 100,000 rows rarely have many.
    raw = pd.Series(pd.unique(present.to_numpy()), dtype=object)
    text = pd.Series(pd.unique(raw.astype(str).str.strip()), dtype=object)
    text = text[~text.str.lower().isin(_NULL_TOKENS)].reset_index(drop=True)
    total = len(text)
    if total > sample_size:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(total, size=sample_size, replace=False))
        text = text.iloc[keep].reset_index(drop=True)
    return text, total


def allow_set(values: Iterable[object] | None) -> frozenset[str]:
    """Allow-list values, stripped and casefolded (empty and null-like values dropped)."""
    out = set()
    for value in values or ():
        if value is None or (isinstance(value, float) and value != value):
            continue
        text = re.sub(r"\s+", " ", str(value)).strip().casefold()
        if text and text not in _NULL_TOKENS:
            out.add(text)
    return frozenset(out)


# Classification ---------------------------------------------------------------------------


@dataclass
class _Hit:
    entity: str
    source: str
    hits: int
    rate: float
    strong: bool


def _labels(hit: _Hit, n: int) -> bool:
    return hit.rate >= LABEL_RATE and hit.hits >= min(MIN_LABEL_HITS, n)


def _scan_patterns(
    sample: pd.Series, patterns: tuple[ValuePattern, ...], *, whole: bool
) -> list[_Hit]:
    """Hit counts per pattern (whole-value matches, or matches anywhere for free text);
    patterns of the same entity are merged so a value counts once."""
    n = len(sample)
    masks: dict[str, tuple[pd.Series, pd.Series, list[str]]] = {}
    for pattern in patterns:
        mask = pattern.fullmatch(sample) if whole else pattern.contains(sample)
        if not mask.any():
            continue
        any_mask, strong_mask, names = masks.get(
            pattern.entity,
            (pd.Series(False, index=sample.index), pd.Series(False, index=sample.index), []),
        )
        masks[pattern.entity] = (
            any_mask | mask,
            strong_mask | mask if pattern.strong else strong_mask,
            [*names, pattern.name],
        )
    hits = []
    for entity, (any_mask, strong_mask, names) in masks.items():
        count = int(any_mask.sum())
        strong = int(strong_mask.sum()) >= LABEL_RATE * n
        hits.append(_Hit(entity, "+".join(names), count, count / n, strong))
    return hits


def _looks_free_text(sample: pd.Series) -> bool:
    lengths = sample.str.len()
    words = sample.str.count(r"\s+") + 1
    return bool(lengths.mean() >= FREE_TEXT_MIN_CHARS and words.mean() >= FREE_TEXT_MIN_WORDS)


_TOKEN = re.compile(r",|[^\s,]+")


def _name_word(token: str) -> bool:
    """A capitalised word of letters, apostrophes and hyphens, any script ("O'Neill",
    "Müller", "Jörg", "Nguyễn"), not all capitals unless short."""
    word = token.rstrip(".")
    if len(word) < 2 or not word[0].isupper():
        return False
    if not all(c.isalpha() or c in "'’-" for c in word):
        return False
    return any(c.islower() for c in word) or len(word) <= 3 and "." not in token


def _initial(token: str) -> bool:
    """One or more initials: "A.", "A", "J.R.", "AB" after a surname."""
    letters = token.replace(".", "")
    return 1 <= len(letters) <= 2 and letters.isalpha() and letters.isupper()


def name_shape(value: str) -> str | None:
    """How ``value`` is written if it could be a person's name: ``"title"`` ("Dr A. Patel",
    "Nurse Kim", "Sr. O'Neill"), ``"surname_given"`` ("Müller, Jörg"), ``"initials"``
    ("A. Patel", "Patel A"), ``"plain"`` ("Sophie Dubois", for NER to confirm), or None.
    Values holding an organisation word (:data:`ORG_WORDS`) or a digit are never names."""
    tokens = _TOKEN.findall(value.strip())
    if not tokens or len(tokens) > 6 or any(c.isdigit() for c in value):
        return None
    words = [t for t in tokens if t != ","]
    if any(t.rstrip(".").casefold() in ORG_WORDS for t in words):
        return None
    if any(w.lower() in SAFE_VOCABULARY for w in (value.strip(), *words)):
        return None

    def part(t: str) -> bool:
        return _name_word(t) or _initial(t) or t.casefold() in _NAME_PARTICLES

    if words[0].rstrip(".").casefold() in NAME_TITLES:
        rest = words[1:]
        if rest and all(part(t) for t in rest) and any(_name_word(t) for t in rest):
            return "title"
        return None
    if tokens.count(",") == 1 and tokens[0] != "," and tokens[-1] != ",":
        i = tokens.index(",")
        left, right = tokens[:i], tokens[i + 1 :]
        if (
            1 <= len(left) <= 2
            and 1 <= len(right) <= 2
            and all(part(t) for t in words)
            and _name_word(left[-1])
        ):
            return "surname_given"
        return None
    if "," in tokens or not all(part(t) for t in words) or len(words) < 2:
        return None
    if (
        _initial(words[0])
        and _name_word(words[-1])
        or (_name_word(words[0]) and all(_initial(t) for t in words[1:]))
    ):
        return "initials"
    if sum(_name_word(t) for t in words) >= 2:
        return "plain"
    return None


def _person_hits(sample: pd.Series, seed: int, allow: frozenset[str]) -> tuple[int, int, int]:
    """(values written as names by pattern, values NER finds a person in, values checked)
    over the distinct values of a short-text column, whatever its cardinality: a column of
    three staff names repeated on every row is read value by value like any other.

    Allow-listed values (the data model's categories, the site's released vocabulary) and
    known equipment and supplier names are never people. Titles, "Surname, Given" and
    initials count by pattern; other two-to-four-word capitalised values are sent to NER,
    whose PERSON entity must cover most of the value."""
    from anonymisation.nlp import ner_batch

    if len(sample) > NER_SAMPLE_MAX:
        rng = np.random.default_rng(seed + 1)
        sample = sample.iloc[np.sort(rng.choice(len(sample), NER_SAMPLE_MAX, replace=False))]
    by_pattern = 0
    to_ner: list[str] = []
    for text in sample.tolist():
        if text.casefold() in allow or text.lower() in SAFE_VOCABULARY:
            continue
        shape = name_shape(text)
        if shape in ("title", "surname_given", "initials"):
            by_pattern += 1
        elif shape == "plain":
            to_ner.append(text)
    by_ner = 0
    for text, spans in zip(to_ner, ner_batch(to_ner) if to_ner else [], strict=True):
        people = sum(e - s for s, e, label in spans if label == "PERSON")
        if people >= 0.5 * len(text):
            by_ner += 1
    return by_pattern, by_ner, len(sample)


def _ner_person_hits(sample: pd.Series, seed: int) -> tuple[int, int]:
    """(free texts with a PERSON entity, texts checked): NER over up to NER_SAMPLE_MAX."""
    from anonymisation.nlp import ner_batch

    if len(sample) > NER_SAMPLE_MAX:
        rng = np.random.default_rng(seed + 1)
        sample = sample.iloc[np.sort(rng.choice(len(sample), NER_SAMPLE_MAX, replace=False))]
    texts = [t for t in sample.tolist() if t.lower() not in SAFE_VOCABULARY]
    if not texts:
        return 0, len(sample)
    count = sum(any(label == "PERSON" for _, _, label in spans) for spans in ner_batch(texts))
    return count, len(sample)


def _decide(
    column: str,
    values: pd.Series,
    hint: str | None,
    sample_size: int,
    seed: int,
    allow: frozenset[str] = frozenset(),
) -> ColumnDecision:
    evidence: list[Evidence] = []
    attention = False
    prior = name_prior(column)
    if hint is not None:
        evidence.append(Evidence("cdm hint", note=f"CDM class {hint}"))
    if prior is not None:
        evidence.append(Evidence("column name", prior[1], note=f"name suggests {prior[0]}"))
    shared_name = bool(_SHARED_NAME.search(_normalise_name(column)))
    lotish_name = bool(_LOTISH_NAME.search(_normalise_name(column))) and not shared_name

    dtype = values.dtype
    kind = "text"
    if pd.api.types.is_bool_dtype(dtype):
        kind = "boolean"
    elif pd.api.types.is_datetime64_any_dtype(dtype) or isinstance(dtype, pd.PeriodDtype):
        kind = "datetime"
    elif pd.api.types.is_integer_dtype(dtype):
        kind = "numeric"
    elif pd.api.types.is_numeric_dtype(dtype):
        present = values.dropna()
        # Integers that became floats because of missing values (NHS numbers ...) are numbers;
        # real measurements are not written like any identifier we look for.
        integral = bool(len(present)) and bool((present % 1 == 0).all())
        kind = "numeric" if integral else "measurement"
    if kind in ("text", "numeric"):
        sample, _ = distinct_sample(values, sample_size, seed)
    else:
        sample = pd.Series([], dtype=object)
    n = len(sample)
    if kind == "text" and n and pd.to_numeric(sample, errors="coerce").notna().all():
        kind = "numeric-text"
    if kind != "text":
        evidence.append(Evidence("dtype", note=f"{kind} ({dtype}); no NER"))

    hits: list[_Hit] = []
    free_text = False
    ner_rate: float | None = None
    if n and kind in ("numeric", "numeric-text"):
        digits = sample.str.replace(r"\.0$", "", regex=True)
        hits = _scan_patterns(digits, tuple(p for p in VALUE_PATTERNS if p.numeric_ok), whole=True)
        if prior is not None and prior[1] == "AGE":
            ages = pd.to_numeric(sample, errors="coerce")
            rate = float(ages.between(0, 120).mean())
            hits.append(_Hit("AGE", "age range", int(ages.between(0, 120).sum()), rate, True))
    elif n and kind == "text":
        free_text = _looks_free_text(sample)
        hits = _scan_patterns(sample, VALUE_PATTERNS, whole=not free_text)
        patterned = any(_labels(h, n) for h in hits)
        if free_text:
            people, checked = _ner_person_hits(sample, seed)
            ner_rate = people / checked if checked else 0.0
            hits.append(_Hit("PERSON", "ner", people, ner_rate, True))
        elif not patterned:
            by_pattern, by_ner, checked = _person_hits(sample, seed, allow)
            if by_pattern + by_ner:
                source = "+".join(
                    name for name, count in (("name pattern", by_pattern), ("ner", by_ner)) if count
                )
                people = by_pattern + by_ner
                hits.append(_Hit("PERSON", source, people, people / checked, True))
    if free_text:
        evidence.append(Evidence("dtype", note="free-text values (long, several words)"))

    # Turn hit rates into evidence, labels and attention flags.
    labelled: list[_Hit] = []
    for hit in sorted(hits, key=lambda h: -h.rate):
        if hit.rate < ATTENTION_RATE and not (free_text and hit.hits):
            continue
        note = ""
        label = _labels(hit, n) and not free_text
        named_for_it = prior is not None and prior[1] == hit.entity
        if label and not hit.strong and not (lotish_name or named_for_it):
            label, note = False, "weak pattern: counts only where the column's name agrees"
        if label and shared_name and hit.entity in ("LOT_ID", "DEVICE_SERIAL"):
            label, note = False, "reagent/equipment column: shared lots and serials are safe"
        if label:
            labelled.append(hit)
            note = note or "labels the column"
        elif hit.rate >= ATTENTION_RATE and not free_text:
            attention = True
            note = note or "needs attention: below the labelling rate"
        elif free_text:
            note = "found inside free text"
            attention = attention or (hint not in (None, FREE_TEXT, DIRECT) and hit.hits > 0)
        evidence.append(Evidence(hit.source, hit.entity, round(hit.rate, 4), n, note))

    order = {p.entity: i for i, p in enumerate(VALUE_PATTERNS)}
    labelled.sort(key=lambda h: (-h.rate, order.get(h.entity, len(order))))
    value_label = labelled[0] if labelled else None

    # Combine hint, name prior and values.
    if free_text:
        found = [h for h in hits if h.hits]
        best = max(found, key=lambda h: h.rate).entity if found else None
        detected: tuple[str, str | None, float] | None = (FREE_TEXT, best, 0.8)
    elif value_label is not None:
        klass = ENTITY_CLASS.get(value_label.entity, LINKABLE)
        confidence = 0.5 + 0.4 * value_label.rate
        if prior is not None and prior[1] == value_label.entity:
            confidence += 0.09
        detected = (klass, value_label.entity, confidence)
    else:
        detected = None

    if hint is not None:
        klass, entity, confidence = hint, prior[1] if prior and prior[0] == hint else None, 0.95
        if detected is not None and SEVERITY[detected[0]] > SEVERITY.get(hint, 0):
            klass, entity, confidence = detected
            evidence.append(
                Evidence("cdm hint", detected[1], note=f"values contradict hint {hint}: promoted")
            )
            attention = True
        elif detected is not None and detected[0] == hint:
            entity = detected[1]
    else:
        candidates = []
        if detected is not None:
            candidates.append(detected)
        if prior is not None and not (
            detected is not None and prior[0] == SAFE and detected[0] != SAFE
        ):
            candidates.append(prior)
        if kind == "datetime":
            candidates.append((QUASI, "DATE_TIME", 0.8))
        if not candidates:
            candidates.append((SAFE, None, 0.4 if attention else 0.6))
        # Most severe wins; ties go to the value evidence (listed first).
        klass, entity, confidence = max(candidates, key=lambda c: SEVERITY[c[0]])
        if entity is None:
            entity = next((c[1] for c in candidates if c[0] == klass and c[1]), None)
    return ColumnDecision(
        str(column), klass, entity, float(min(confidence, 0.99)), evidence, attention
    )


def classify_frame(
    frame: pd.DataFrame,
    hints: Mapping[str, str] | None = None,
    *,
    sample_size: int = 1000,
    seed: int = 0,
    allow: Iterable[str] | None = None,
) -> list[ColumnDecision]:
    """One :class:`ColumnDecision` per column of ``frame``, in column order.

    ``hints`` maps column names to CDM identifier classes; hinted columns are still scanned
    and promoted (never demoted) when their values contradict the hint. Deterministic for a
    given ``seed``. ``allow`` lists values that are never people (the data model's
    categories, a site's released vocabulary, its institution name): compared
    case-insensitively with whole values.
    """
    hints = hints or {}
    allowed = allow_set(allow)
    for column, hint in hints.items():
        if hint not in CLASSES:
            raise ValueError(f"unknown identifier class {hint!r} for column {column!r}")
    return [
        _decide(str(column), frame.iloc[:, i], hints.get(str(column)), sample_size, seed, allowed)
        for i, column in enumerate(frame.columns)
    ]
