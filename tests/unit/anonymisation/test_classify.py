"""Column classification: labelled fixtures of identifiers in many forms and places."""

from __future__ import annotations

import socket
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from anonymisation import nlp
from anonymisation.classify import (
    ATTENTION_RATE,
    LABEL_RATE,
    ColumnDecision,
    classify_frame,
    distinct_sample,
    name_prior,
    name_shape,
)
from anonymisation.identifiers import DIRECT, FREE_TEXT, LINKABLE, QUASI, SAFE

N = 60
FIRST = ["John", "Mary", "Ahmed", "Sarah", "Olivia", "James", "Fatima", "Peter", "Anna", "David"]
LAST = ["Smith", "Jones", "Khan", "Brown", "Taylor", "Patel", "Nguyen", "Rossi", "Clarke"]


def _nhs(rng: np.random.Generator, *, valid: bool) -> str:
    while True:
        digits = [int(d) for d in rng.integers(0, 10, 9)]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits)) % 11
        check = 0 if check == 11 else check
        if check == 10:
            continue
        if not valid:
            check = (check + 1 + int(rng.integers(0, 8))) % 10
        text = "".join(map(str, digits)) + str(check)
        return f"{text[:3]} {text[3:6]} {text[6:]}"


def _names(rng: np.random.Generator, n: int = N) -> list[str]:
    return [f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(n)]


@pytest.fixture(scope="session")
def labelled() -> pd.DataFrame:
    """One column per case; the expected decision is in EXPECTED."""
    rng = np.random.default_rng(7)
    names = _names(rng)
    return pd.DataFrame(
        {
            "id": names,  # misleading: names under an ID header
            "notes": [f"MRN{rng.integers(100000, 999999)}" for _ in range(N)],  # misleading
            "comments": [
                f"Line clotted, restarted by {names[i]}. Called the ward at 10:{i:02d} "
                "to push the slot by an hour."
                for i in range(N)
            ],
            "patient_email": [f"p{i}.x@example.com" for i in range(N)],
            "col_a": [f"({rng.integers(201, 990)}) 555-01{i:02d}" for i in range(N)],
            "col_b": [f"+44 7700 900{i:03d}" for i in range(N)],
            "col_c": [f"07700 900{i:03d}" for i in range(N)],
            "col_d": [f"+49 30 {rng.integers(1000000, 9999999)}" for _ in range(N)],
            "col_e": [_nhs(rng, valid=True) for _ in range(N)],
            "col_f": [
                f"{rng.integers(100, 665)}-{rng.integers(10, 99)}-{rng.integers(1000, 9999)}"
                for _ in range(N)
            ],
            "when_1": [f"2021-03-{i % 28 + 1:02d}" for i in range(N)],
            "when_2": [f"{i % 28 + 1:02d}/{i % 12 + 1:02d}/2021" for i in range(N)],
            "when_3": [f"{i % 28 + 1} Mar 2021" for i in range(N)],
            "date_of_birth": [
                f"{i % 28 + 1:02d}.{i % 12 + 1:02d}.19{50 + i % 40}" for i in range(N)
            ],
            "equipment": rng.choice(["Prodigy", "CliniMACS", "Spectra Optia"], N),
            "product_code": rng.choice(["S2041A00", "S1180A00", "S11804A0"], N),
            "unit": [f"A9999 21 {100000 + i:06d}" for i in range(N)],
            "ref_x": [f"A9999{21}{100000 + i:06d}" for i in range(N)],
            "chain": [f"COI-A1234-21-{i:06d}" for i in range(N)],
            "lot_number": [f"UC21-{i:05d}" for i in range(N)],
            "reagent_lot": [f"LOT{i:06d}" for i in range(N)],
            "data_logger": [f"TL{rng.integers(10**7, 10**8)}" for _ in range(N)],
            "age": rng.integers(18, 80, N),
            "cd34_per_ul": rng.normal(40, 10, N),
            "collected_ts": pd.date_range("2021-01-01", periods=N, freq="D"),
            "complication": rng.random(N) < 0.5,
            "count_text": [str(v) for v in rng.integers(0, 500, N)],
        }
    )


EXPECTED: dict[str, tuple[str, str | None]] = {
    "id": (DIRECT, "PERSON"),
    "notes": (DIRECT, "MRN"),
    "comments": (FREE_TEXT, "PERSON"),
    "patient_email": (DIRECT, "EMAIL_ADDRESS"),
    "col_a": (DIRECT, "PHONE_NUMBER"),
    "col_b": (DIRECT, "PHONE_NUMBER"),
    "col_c": (DIRECT, "PHONE_NUMBER"),
    "col_d": (DIRECT, "PHONE_NUMBER"),
    "col_e": (DIRECT, "UK_NHS"),
    "col_f": (DIRECT, "US_SSN"),
    "when_1": (QUASI, "DATE_TIME"),
    "when_2": (QUASI, "DATE_TIME"),
    "when_3": (QUASI, "DATE_TIME"),
    "date_of_birth": (DIRECT, "DATE_TIME"),
    "equipment": (SAFE, None),
    "product_code": (SAFE, "ISBT_PRODUCT_CODE"),
    "unit": (LINKABLE, "ISBT_DIN"),
    "ref_x": (LINKABLE, "ISBT_DIN"),
    "chain": (LINKABLE, "COI_ID"),
    "lot_number": (LINKABLE, "LOT_ID"),
    "reagent_lot": (SAFE, None),
    "data_logger": (LINKABLE, "DEVICE_SERIAL"),
    "age": (QUASI, "AGE"),
    "cd34_per_ul": (SAFE, None),
    "collected_ts": (QUASI, "DATE_TIME"),
    "complication": (SAFE, None),
    "count_text": (SAFE, None),
}


@pytest.fixture(scope="session")
def decisions(labelled: pd.DataFrame) -> dict[str, ColumnDecision]:
    return {d.column: d for d in classify_frame(labelled)}


@pytest.mark.parametrize("column", list(EXPECTED))
def test_labelled_columns(decisions: dict[str, ColumnDecision], column: str) -> None:
    decision = decisions[column]
    assert (decision.klass, decision.entity) == EXPECTED[column], decision.to_dict()
    assert 0.0 <= decision.confidence <= 1.0


def test_every_column_decided_in_order(
    labelled: pd.DataFrame, decisions: dict[str, ColumnDecision]
) -> None:
    assert list(decisions) == list(labelled.columns)


def test_value_evidence_carries_hit_rate_and_sample_size(
    labelled: pd.DataFrame, decisions: dict[str, ColumnDecision]
) -> None:
    (email,) = [
        e
        for e in decisions["patient_email"].evidence
        if e.entity == "EMAIL_ADDRESS" and e.hit_rate is not None
    ]
    assert email.source == "Email"
    assert email.hit_rate == 1.0
    assert email.sample_size == N
    (ner,) = [e for e in decisions["id"].evidence if e.source == "ner"]
    assert ner.hit_rate is not None and ner.hit_rate >= LABEL_RATE
    assert ner.sample_size == labelled["id"].nunique() < N  # distinct values, not rows
    assert any(e.source == "column name" for e in decisions["notes"].evidence)


def test_invalid_nhs_checksums_are_not_nhs() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "nhs_number": [_nhs(rng, valid=False) for _ in range(N)],
            "ref": [_nhs(rng, valid=False) for _ in range(N)],
        }
    )
    by = {d.column: d for d in classify_frame(frame)}
    # The name still makes it a direct identifier, but the values are not NHS numbers.
    assert by["nhs_number"].klass == DIRECT
    assert not any(e.entity == "UK_NHS" and e.hit_rate for e in by["nhs_number"].evidence)
    assert by["ref"].entity != "UK_NHS"


def test_nhs_numbers_stored_as_integers() -> None:
    rng = np.random.default_rng(4)
    values = [int(_nhs(rng, valid=True).replace(" ", "")) for _ in range(N)]
    frame = pd.DataFrame({"value": [v for v in values if v >= 10**9]})
    (decision,) = classify_frame(frame)
    assert (decision.klass, decision.entity) == (DIRECT, "UK_NHS")
    assert all(e.source != "ner" for e in decision.evidence)


def test_nhs_numbers_as_floats_with_gaps() -> None:
    rng = np.random.default_rng(5)
    values: list[float] = [float(_nhs(rng, valid=True).replace(" ", "")) for _ in range(N)]
    values = [v for v in values if v >= 1e9] + [np.nan] * 5
    (decision,) = classify_frame(pd.DataFrame({"value": values}))
    assert (decision.klass, decision.entity) == (DIRECT, "UK_NHS")


def test_empty_and_duplicate_columns() -> None:
    frame = pd.DataFrame([[None, "a@example.com", "b@example.com"]] * 3, columns=["x", "y", "y"])
    result = classify_frame(frame)
    assert [d.column for d in result] == ["x", "y", "y"]
    assert result[0].klass == SAFE
    assert [d.entity for d in result[1:]] == ["EMAIL_ADDRESS", "EMAIL_ADDRESS"]


def test_hint_is_kept_when_values_agree(labelled: pd.DataFrame) -> None:
    frame = labelled[["chain", "equipment"]]
    by = {d.column: d for d in classify_frame(frame, {"chain": LINKABLE, "equipment": SAFE})}
    assert by["chain"].klass == LINKABLE and by["chain"].entity == "COI_ID"
    assert by["equipment"].klass == SAFE
    assert by["equipment"].evidence[0].source == "cdm hint"
    assert not by["equipment"].needs_attention


def test_safe_hint_full_of_emails_is_promoted(labelled: pd.DataFrame) -> None:
    frame = labelled[["patient_email"]].rename(columns={"patient_email": "status"})
    (decision,) = classify_frame(frame, {"status": SAFE})
    assert decision.klass == DIRECT
    assert decision.entity == "EMAIL_ADDRESS"
    assert decision.needs_attention
    assert any("contradict" in e.note for e in decision.evidence)


def test_hint_is_never_demoted(labelled: pd.DataFrame) -> None:
    frame = labelled[["equipment", "product_code"]]
    hints = {"equipment": DIRECT, "product_code": LINKABLE}
    by = {d.column: d for d in classify_frame(frame, hints)}
    assert by["equipment"].klass == DIRECT
    assert by["product_code"].klass == LINKABLE


def test_unknown_hint_class_is_rejected(labelled: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="unknown identifier class"):
        classify_frame(labelled[["age"]], {"age": "secret"})


def test_a_few_hits_flag_attention_but_do_not_label() -> None:
    values = [f"R-{i:04d}" for i in range(40)]
    values[:8] = [f"person{i}@example.com" for i in range(8)]  # 20 %
    values[8] = "MRN123456"  # a single MRN: no label, and below the attention rate alone
    (decision,) = classify_frame(pd.DataFrame({"status_code": values}))
    assert decision.entity != "EMAIL_ADDRESS"
    assert decision.needs_attention
    (email,) = [e for e in decision.evidence if e.entity == "EMAIL_ADDRESS"]
    assert ATTENTION_RATE <= (email.hit_rate or 0) < LABEL_RATE
    assert "attention" in email.note
    assert not any(e.entity == "MRN" for e in decision.evidence)


def test_single_distinct_hit_among_many_never_labels() -> None:
    values = ["ok"] * 50 + ["jane@example.com"]
    (decision,) = classify_frame(pd.DataFrame({"flag": values}))
    assert decision.klass == SAFE


def test_names_in_notes_make_free_text(labelled: pd.DataFrame) -> None:
    frame = labelled[["comments"]].rename(columns={"comments": "x"})
    (decision,) = classify_frame(frame)
    assert decision.klass == FREE_TEXT
    (ner,) = [e for e in decision.evidence if e.source == "ner"]
    assert (ner.hit_rate or 0) > 0.5


def test_numeric_and_datetime_columns_skip_ner(
    decisions: dict[str, ColumnDecision], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real: Callable[..., list[list[tuple[int, int, str]]]] = nlp.ner_batch

    def spy(texts: list[str], batch_size: int = 256) -> list[list[tuple[int, int, str]]]:
        calls.append(len(texts))
        return real(texts, batch_size)

    monkeypatch.setattr(nlp, "ner_batch", spy)
    frame = pd.DataFrame(
        {
            "a": np.arange(200),
            "b": np.linspace(0, 1, 200),
            "c": pd.date_range("2020-01-01", periods=200),
            "d": [str(i) for i in range(200)],
            "e": [True, False] * 100,
        }
    )
    result = classify_frame(frame)
    assert calls == []
    assert [d.klass for d in result] == [SAFE, SAFE, QUASI, SAFE, SAFE]
    assert any(e.source == "dtype" for e in result[3].evidence)


def test_sampling_caps_distinct_values_and_is_deterministic() -> None:
    values = pd.Series([f"p{i}@example.com" for i in range(5000)] * 2)
    sample, total = distinct_sample(values, 300, seed=1)
    assert total == 5000 and len(sample) == 300 and sample.is_unique
    again, _ = distinct_sample(values, 300, seed=1)
    other, _ = distinct_sample(values, 300, seed=2)
    assert sample.tolist() == again.tolist()
    assert sample.tolist() != other.tolist()
    (decision,) = classify_frame(pd.DataFrame({"v": values}), sample_size=300)
    assert all(e.sample_size == 300 for e in decision.evidence if e.sample_size is not None)


def test_classification_is_deterministic_for_a_seed(labelled: pd.DataFrame) -> None:
    one = [d.to_dict() for d in classify_frame(labelled, sample_size=25, seed=5)]
    two = [d.to_dict() for d in classify_frame(labelled, sample_size=25, seed=5)]
    assert one == two


def test_full_classification_runs_offline(
    labelled: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    nlp._ner_cache.clear()  # force spaCy to run again under the block
    result = classify_frame(labelled, seed=11)
    assert {d.column: (d.klass, d.entity) for d in result} == EXPECTED
    assert nlp.get_analyzer().analyze("mail jane@example.com", language="en")


def test_to_dict_is_plain_data(decisions: dict[str, ColumnDecision]) -> None:
    data = decisions["notes"].to_dict()
    assert data["column"] == "notes"
    assert data["klass"] == DIRECT
    assert isinstance(data["evidence"], list) and data["evidence"]
    assert set(data["evidence"][0]) == {"source", "entity", "hit_rate", "sample_size", "note"}


@pytest.mark.parametrize(
    ("name", "klass", "entity"),
    [
        ("Patient Name", DIRECT, "PERSON"),
        ("device_name", None, None),
        ("MRN", DIRECT, "MRN"),
        ("D.O.B.", DIRECT, "DATE_TIME"),
        ("Contact Email", DIRECT, "EMAIL_ADDRESS"),
        ("Collected By", DIRECT, "PERSON"),
        ("Comments", FREE_TEXT, None),
        ("Lot No.", LINKABLE, "LOT_ID"),
        ("Collection Date", QUASI, "DATE_TIME"),
        ("viability_pct", None, None),
    ],
)
def test_name_priors(name: str, klass: str | None, entity: str | None) -> None:
    prior = name_prior(name)
    got = (prior[0], prior[1]) if prior else (None, None)
    assert got == (klass, entity)


# Staff names in low-cardinality columns, under any header (issue 17) -------------------------

STAFF = ["Dr A. Patel", "Nurse Kim", "Sr. O'Neill", "Müller, Jörg"]


@pytest.mark.parametrize(
    "header", ["Consultant", "Operator", "Released by", "QP", "Signed", "Checked", "Status"]
)
def test_repeated_staff_names_are_direct_identifiers_whatever_the_header(header: str) -> None:
    frame = pd.DataFrame({header: STAFF * 250})  # four distinct values over 1000 rows
    (decision,) = classify_frame(frame)
    assert (decision.klass, decision.entity) == (DIRECT, "PERSON")
    found = [e for e in decision.evidence if e.entity == "PERSON" and e.hit_rate is not None]
    assert found and found[0].hit_rate == 1.0 and found[0].sample_size == len(STAFF)


def test_a_safe_hint_does_not_hide_a_column_of_staff_names() -> None:
    frame = pd.DataFrame({"released_by": ["Prof. Ingrid Svensson", "Mx Rivera", "J. Wong"] * 40})
    (decision,) = classify_frame(frame, {"released_by": SAFE})
    assert decision.klass == DIRECT and decision.needs_attention


@pytest.mark.parametrize(
    ("value", "shape"),
    [
        ("Dr A. Patel", "title"),
        ("Sister Nakamura", "title"),
        ("Rev. T. Oduya", "title"),
        ("Nakamura, Yuki", "surname_given"),
        ("Müller, Jörg", "surname_given"),
        ("J. Wong", "initials"),
        ("Patel AB", "initials"),
        ("Sophie Dubois", "plain"),
        ("Northbridge Cell Therapies, Harwell", None),
        ("Miltenyi Biotec", None),
        ("Spectra Optia", None),
        ("Cryopreserved", None),
        ("Dr 12", None),
    ],
)
def test_name_shapes(value: str, shape: str | None) -> None:
    assert name_shape(value) == shape


def test_cdm_categories_and_organisations_stay_safe() -> None:
    frame = pd.DataFrame(
        {
            "state": ["Fresh", "Cryopreserved"] * 50,
            "facility": ["Northbridge Cell Therapies", "St Anne's Hospital"] * 50,
            "supplier": ["Miltenyi Biotec", "Terumo BCT", "Fresenius Kabi", "Lonza"] * 25,
            "device": ["Spectra Optia", "CliniMACS Prodigy"] * 50,
        }
    )
    decisions = {d.column: d for d in classify_frame(frame, {"state": SAFE})}
    assert decisions["state"].klass == SAFE and not decisions["state"].needs_attention
    for column in ("facility", "supplier", "device"):
        assert decisions[column].entity != "PERSON", column
        assert decisions[column].klass != DIRECT, column


def test_allow_list_is_honoured() -> None:
    """A site's own vocabulary that looks like names ("Harwell, Oxfordshire") is not a
    column of people once it is on the allow-list; a real name beside it still counts."""
    frame = pd.DataFrame({"label": ["Harwell, Oxfordshire", "Didcot, Oxfordshire"] * 30})
    (without,) = classify_frame(frame)
    assert without.klass == DIRECT
    (allowed,) = classify_frame(frame, allow=["harwell, oxfordshire", " Didcot,  Oxfordshire "])
    assert allowed.klass == SAFE
    mixed = pd.DataFrame({"label": ["Harwell, Oxfordshire", "Nakamura, Yuki", "J. Wong"] * 30})
    (partial,) = classify_frame(mixed, allow=["Harwell, Oxfordshire"])
    assert (partial.klass, partial.entity) == (DIRECT, "PERSON")
    person = next(e for e in partial.evidence if e.entity == "PERSON")
    assert person.hit_rate == pytest.approx(2 / 3, abs=1e-3)


# Facility identification numbers (ISBT 128 FIN) ------------------------------------------


@pytest.mark.parametrize("header", ["Collection FIN", "Facility ID", "isbt_facility"])
def test_a_fin_column_is_linkable_when_its_name_says_so(header: str) -> None:
    frame = pd.DataFrame({header: ["G1517", "G1518", "W0042", "A9999"] * 30})
    (decision,) = classify_frame(frame)
    assert (decision.klass, decision.entity) == (LINKABLE, "ISBT_FIN")
    found = [e for e in decision.evidence if e.entity == "ISBT_FIN" and e.hit_rate is not None]
    assert found and found[0].hit_rate == 1.0


def test_fin_shapes_alone_do_not_label_a_column() -> None:
    """Five characters (letter + four digits) are also reagent catalogue and room codes: the
    weak FIN pattern needs the column's name to agree, and never reads as a phone or date."""
    frame = pd.DataFrame({"room": ["G1517", "G1518", "W0042", "A9999"] * 30})
    (decision,) = classify_frame(frame)
    assert decision.entity not in ("ISBT_FIN", "PHONE_NUMBER", "DATE_TIME")
    # "O" is not a FIN's first letter: such values are no FIN evidence (the name alone still
    # makes the column linkable, the cautious reading).
    (other,) = classify_frame(pd.DataFrame({"FIN": ["O1517", "O1518"] * 60}))
    assert not [e for e in other.evidence if e.entity == "ISBT_FIN" and e.hit_rate is not None]
