"""The full de-identification engine on a small, realistic apheresis table."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from anonymisation.dates import anchor_table
from anonymisation.engine import (
    EngineResult,
    analyze_texts,
    deidentify_frame,
    progress_steps,
)
from anonymisation.pseudonyms import pseudonymise
from anonymisation.risk import k_anonymity
from anonymisation.scrub import NON_NAME_WORDS, Gazetteer

KEY = b"engine-test-key-0123456789abcdef"
FIRST = ["John", "Mary", "Ahmed", "Priya", "Olivia", "George", "Fatima", "William", "Sophie"]
LAST = ["Smithson", "Jones", "Patel", "Khan", "Williams", "Brown", "Taylor", "Davies", "Evans"]
N = 60


def make_frame(n: int = N) -> pd.DataFrame:
    """Two collections per chain of identity; every identifier also appears in the notes."""
    names = [f"{FIRST[i % 9]} {LAST[(i * 4 + i // 9) % 9]}" for i in range(n)]
    mrns = [f"MRN{4100000 + i * 37}" for i in range(n)]
    phones = [f"07700 900{100 + i:03d}" for i in range(n)]
    emails = [f"{nm.split()[0].lower()}.{i}@example.org" for i, nm in enumerate(names)]
    dates = pd.Series(pd.date_range("2024-01-01", periods=n, freq="5D"))
    notes = [
        f"Pt {names[i]} (MRN {mrns[i]}) collected; Mr {names[i].split()[1]} to call "
        f"{phones[i]} or {emails[i]}. {names[i].split()[0].lower()} was fine."
        if i % 4
        else f"Uneventful collection, bag W1234 24 {500000 + i:06d} sent to the lab."
        for i in range(n)
    ]
    return pd.DataFrame(
        {
            "patient_name": names,
            "mrn": mrns,
            "email": emails,
            "phone": phones,
            "coi_id": [f"COI-{7000 + i // 2}" for i in range(n)],
            "din": [f"W1234 24 {500000 + i:06d}" for i in range(n)],
            "collection_date": dates.dt.strftime("%Y-%m-%d"),
            "age": [str(25 + (i * 7) % 50) for i in range(n)],
            "weight_kg": [f"{58 + (i * 3.3) % 40:.1f}" for i in range(n)],
            "sex": ["F" if i % 2 else "M" for i in range(n)],
            "equipment": ["Spectra Optia" if i % 3 else "CliniMACS Prodigy" for i in range(n)],
            "cd34_count": [f"{120 + i * 11}" for i in range(n)],
            "notes": notes,
        }
    )


def pii_strings(frame: pd.DataFrame) -> set[str]:
    """Every injected identifier, plus each name part on its own."""
    values: set[str] = set()
    for column in ("patient_name", "mrn", "email", "phone", "coi_id", "din"):
        values.update(frame[column])
    values.update(part for name in frame["patient_name"] for part in name.split())
    values.update(m.removeprefix("MRN") for m in frame["mrn"])
    return values


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def anchored(frame: pd.DataFrame) -> EngineResult:
    return deidentify_frame(frame, key=KEY, anchors=anchor_table(frame), k=5)


def test_no_known_pii_left_anywhere(frame: pd.DataFrame, anchored: EngineResult) -> None:
    cells = anchored.frame.astype(str).to_numpy().ravel().tolist()
    text = "\n".join(cells + [str(c) for c in anchored.frame.columns]).lower()
    leaked = sorted(v for v in pii_strings(frame) if v.lower() in text)
    assert leaked == []


def test_report_examples_do_not_leak(frame: pd.DataFrame, anchored: EngineResult) -> None:
    dumped = json.dumps(anchored.report).lower()
    full = set(frame["patient_name"]) | set(frame["mrn"]) | set(frame["email"])
    assert sorted(v for v in full if v.lower() in dumped) == []


def test_direct_dropped_and_safe_kept(frame: pd.DataFrame, anchored: EngineResult) -> None:
    out = anchored.frame
    for column in ("patient_name", "mrn", "email", "phone"):
        assert column not in out
    kept = frame.loc[out.index]
    pd.testing.assert_series_equal(out["equipment"], kept["equipment"])
    pd.testing.assert_series_equal(out["cd34_count"], kept["cd34_count"])


def test_pseudonyms_match_pseudonymise(frame: pd.DataFrame, anchored: EngineResult) -> None:
    out = anchored.frame
    for column in ("coi_id", "din"):
        expected = pseudonymise(frame[column], KEY).loc[out.index]
        assert out[column].tolist() == expected.tolist()
    # Two collections per chain of identity still link.
    assert out["coi_id"].nunique() == frame["coi_id"].nunique()


def test_day_offsets_from_first_collection(frame: pd.DataFrame, anchored: EngineResult) -> None:
    dates = pd.to_datetime(frame["collection_date"])
    first = dates.groupby(frame["coi_id"]).transform("min")
    expected = (dates - first).dt.days
    out = anchored.frame["collection_date"]
    assert str(out.dtype) == "Int64"
    assert out.tolist() == expected.loc[out.index].tolist()
    assert set(out.dropna()) == {0, 5}


def test_generalised_and_k_reached(anchored: EngineResult) -> None:
    out, report = anchored.frame, anchored.report
    assert report["quasi"] == ["age", "weight_kg", "sex"]
    assert "collection_date" not in report["quasi"]
    assert k_anonymity(out, report["quasi"]) >= 5
    assert report["risk"]["k_after"] >= 5
    bands = set(out["age"].dropna())
    assert bands and all("-" in b or b.endswith("+") for b in bands)
    assert (out["weight_kg"].dropna() % 5 == 0).all()


def test_notes_scrubbed_with_placeholders(anchored: EngineResult) -> None:
    notes = anchored.frame["notes"].dropna()
    assert notes.str.contains("<PERSON>").any()
    assert notes.str.contains("<EMAIL_ADDRESS>").any()
    assert notes.str.contains("collected").any()  # the prose survives


def test_report_shape(frame: pd.DataFrame, anchored: EngineResult) -> None:
    report = anchored.report
    assert report["rows_in"] == len(frame)
    assert report["rows_out"] == len(anchored.frame)
    assert report["k"] == 5
    assert isinstance(report["attention"], list)
    assert set(report["risk"]) >= {"k_target", "k_after", "rows_suppressed", "steps"}
    by_name = {c["name"]: c for c in report["columns"]}
    assert list(by_name) == list(frame.columns)
    for column in by_name.values():
        assert set(column) >= {
            "name",
            "class",
            "entity",
            "confidence",
            "action",
            "evidence",
            "needs_attention",
            "examples",
        }
    assert by_name["patient_name"]["class"] == "direct_identifier"
    assert by_name["patient_name"]["action"] == "drop"
    assert by_name["coi_id"]["class"] == "linkable_identifier"
    assert by_name["collection_date"]["class"] == "quasi_identifier"
    assert by_name["equipment"]["action"] == "keep"
    assert by_name["notes"]["class"] == "free_text"
    example = by_name["patient_name"]["examples"][0]
    assert example["after"] is None
    name = frame["patient_name"].iloc[0]
    assert example["before"] == name[0] + "*" * (len(name) - 2) + name[-1]
    assert by_name["collection_date"]["examples"][0] == {"before": "2024-01-01", "after": 0}
    json.dumps(report)  # serialisable as it is


def test_without_anchors_dates_become_months(frame: pd.DataFrame) -> None:
    result = deidentify_frame(frame, key=KEY, scrub_free_text=False, k=2)
    out = result.frame
    assert "notes" not in out
    # Month first; the risk step may coarsen further to the year to reach k.
    allowed = {f"2024-{m:02d}" for m in range(1, 13)} | {"2024"}
    assert set(out["collection_date"].dropna()) <= allowed
    by_name = {c["name"]: c for c in result.report["columns"]}
    assert by_name["collection_date"]["action"] == "generalise: coarsened to month"
    assert "collection_date" in result.report["quasi"]
    assert k_anonymity(out, result.report["quasi"]) >= 2


def test_hints_progress_and_index(frame: pd.DataFrame) -> None:
    seen: list[tuple[int, str]] = []
    small = frame.iloc[:20].copy()
    small.index = range(100, 120)
    result = deidentify_frame(
        small,
        key=[KEY, KEY[::-1]],
        hints={"cd34_count": "direct_identifier"},
        k=1,
        scrub_free_text=False,
        progress=lambda done, label: seen.append((done, label)),
    )
    assert "cd34_count" not in result.frame
    assert [d for d, _ in seen] == list(range(1, progress_steps(len(small.columns)) + 1))
    assert list(result.frame.index) == list(range(100, 120))
    assert (
        result.frame["coi_id"].tolist() == pseudonymise(small["coi_id"], [KEY, KEY[::-1]]).tolist()
    )


def test_short_key_refused(frame: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        deidentify_frame(frame, key=b"short")


def test_analyzer_types_and_safe_vocabulary() -> None:
    texts = ["Seen by Dr Sarah Connor in Leeds; call +44 20 7946 0000.", "Ran on Spectra Optia."]
    spans = analyze_texts(texts)
    kinds = {(texts[0][s:e], t) for s, e, t in spans[0]}
    assert ("+44 20 7946 0000", "PHONE_NUMBER") in kinds
    assert any(t == "PERSON" and "Connor" in s for s, t in kinds)
    assert not any("Optia" in texts[1][s:e] for s, e, _ in spans[1])


def test_ner_skipped_only_where_no_name_can_be() -> None:
    texts = [
        "MRN4100000: bag label checked before harvest, TNC 3.1e9.",  # vocabulary only
        "Spoke to Sarah Connor about the harvest slot.",  # unknown capitalised words
        "Courier arrived on Monday.",  # weekday: NER may find a date
    ]
    stats: dict[str, int] = {}
    spans = analyze_texts(texts, ner_vocabulary=NON_NAME_WORDS, stats=stats)
    assert stats == {"ner_texts": 2}
    assert [(texts[0][s:e], t) for s, e, t in spans[0]] == [("MRN4100000", "MRN")]
    assert any(t == "PERSON" and "Connor" in texts[1][s:e] for s, e, t in spans[1])


def test_scrub_report_counts_ner_texts(anchored: EngineResult) -> None:
    scrub = next(c for c in anchored.report["columns"] if c["name"] == "notes")["scrub"]
    assert set(scrub) >= {"texts_scanned", "texts_skipped", "texts_changed", "entities"}
    assert 0 < scrub["ner_texts"] <= scrub["texts_scanned"] - scrub["texts_skipped"]


def test_names_mislabelled_by_ner_are_people() -> None:
    """The small model labels this clinician EVENT; a name-like span of such a label counts."""
    text = "Selection bag signed off by Fergus Valdez, 25.4 mL, day 48."
    spans = analyze_texts([text], ner_vocabulary=NON_NAME_WORDS)[0]
    assert ("Fergus Valdez", "PERSON") in {(text[s:e], t) for s, e, t in spans}


# Organisations and places are not people (issue 17) -----------------------------------------

FACILITY = "Northbridge Cell Therapies, Harwell"


def _kinds(text: str, spans: list[tuple[int, int, str]]) -> set[tuple[str, str]]:
    return {(text[s:e], t) for s, e, t in spans}


def test_town_in_an_organisations_address_is_not_a_person() -> None:
    """The small model tags Harwell as PERSON here; the staff name is still found."""
    text = f"Bag checked by Nurse Kim at {FACILITY} before dispatch."
    kinds = _kinds(text, analyze_texts([text], ner_vocabulary=NON_NAME_WORDS)[0])
    assert not any("Harwell" in s for s, _ in kinds)
    assert ("Nurse Kim", "PERSON") in kinds


def test_organisation_tagged_as_a_person_is_not_a_person() -> None:
    text = "Selection kit lot from Fresenius Kabi Biotec received late."
    kinds = _kinds(text, analyze_texts([text])[0])
    assert not any(t == "PERSON" for _, t in kinds)


def test_allow_list_keeps_the_sites_vocabulary_in_notes() -> None:
    text = "Spoke to Sophie Dubois at Kestrel Park about the Halden Cryo bag."
    plain = _kinds(text, analyze_texts([text])[0])
    # Without the allow-list the site's place and supplier are scrubbed.
    assert any("Kestrel" in s for s, _ in plain) and any("Halden" in s for s, _ in plain)
    allow = Gazetteer({"ALLOW": ["kestrel park", "Halden Cryo"]})
    kinds = _kinds(text, analyze_texts([text], allow=allow)[0])
    assert not any("Kestrel" in s or "Halden" in s for s, _ in kinds)
    assert ("Sophie Dubois", "PERSON") in kinds


def test_staff_columns_dropped_organisations_kept_end_to_end() -> None:
    n = 40
    staff = ["Dr A. Patel", "Nurse Kim", "Sr. O'Neill", "Müller, Jörg"]
    frame = pd.DataFrame(
        {
            "Consultant": [staff[i % 4] for i in range(n)],
            "Checked": [staff[(i + 1) % 4] for i in range(n)],
            "facility": [FACILITY] * n,
            "supplier": ["Miltenyi Biotec", "Terumo BCT"] * (n // 2),
            "notes": [f"Harvest at {FACILITY}; checked by {staff[i % 4]}." for i in range(n)],
        }
    )
    result = deidentify_frame(frame, key=KEY, k=1, allow=[FACILITY, "Terumo BCT"])
    actions = {c["name"]: c["action"] for c in result.report["columns"]}
    assert actions["Consultant"] == actions["Checked"] == "drop"
    assert result.frame["supplier"].tolist() == frame["supplier"].tolist()
    assert set(result.frame["facility"]) == {FACILITY}
    notes = " ".join(result.frame["notes"])
    assert FACILITY in notes and "<PERSON>" in notes
    for name in ("Patel", "Kim", "O'Neill", "Müller", "Jörg"):
        assert name not in notes, name
