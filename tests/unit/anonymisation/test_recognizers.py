"""CGT pattern recognizers: vectorised fast path, Presidio recognizers, offline analyzer."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pandas as pd
import pytest
from presidio_analyzer import AnalyzerEngine

from anonymisation import nlp
from anonymisation.recognizers import (
    CGT_RECOGNIZERS,
    COI_ID,
    DATE,
    DEVICE_SERIAL,
    EMAIL,
    ISBT_DIN,
    ISBT_FIN,
    ISBT_PRODUCT_CODE,
    LOT_ID,
    MRN,
    PHONE,
    UK_NHS,
    US_SSN,
    ValuePattern,
    nhs_checksum_ok,
)


def _refuse(*args: object, **kwargs: object) -> None:
    raise OSError("network access attempted during an offline test")


@pytest.fixture(scope="session")
def offline_analyzer() -> Iterator[AnalyzerEngine]:
    """The analyzer, built with every socket connection refused. The block is lifted before
    the fixture yields: a session-long block would break every later test that talks to a
    local server (tests that analyse text block sockets again themselves)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _refuse)
        patch.setattr(socket.socket, "connect_ex", _refuse)
        patch.setattr(socket, "create_connection", _refuse)
        analyzer = nlp.get_analyzer()
    yield analyzer


def _full(pattern: ValuePattern, values: list[str]) -> list[bool]:
    return pattern.fullmatch(pd.Series(values, dtype=object)).tolist()


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (
            ISBT_DIN,
            ["A9999 21 123456", "A999921123456", "W1234 24 000789 00 K", "G0001 19 654321 A1"],
            ["A9999 21 12345", "O9999 21 123456", "9999 21 123456", "S2041A00"],
        ),
        (ISBT_PRODUCT_CODE, ["S11804A0", "S2041A00", "E0291V00"], ["S2041000", "H1234567"]),
        (
            COI_ID,
            ["COI-A1234-21-000123", "COI-1", "A123421C000123", "A1234-21000123-C", "CoI 77"],
            ["A9999 21 123456", "Prodigy", "UC21-00012"],
        ),
        (LOT_ID, ["LOT21000012", "Lot: 23A-991", "BATCH-2024-17"], ["UC21-00012", "Lotion"]),
        (
            MRN,
            ["MRN123456", "MRN: 00123456", "mrn-12345678", "H1234567", "MRN-1234-5678"],
            ["123456", "MRN", "HN12"],
        ),
        (DEVICE_SERIAL, ["TL12345678", "SN-00012345", "S/N 4471-22"], ["TL12", "Prodigy"]),
        (EMAIL, ["a.b@example.com", "x+y@sub.example.co.uk"], ["a@b", "example.com"]),
        (
            PHONE,
            [
                "(212) 555-0123",
                "212-555-0123",
                "+1 212 555 0123",
                "07700 900123",
                "+44 (0)20 7946 0000",
                "+49 30 1234567",
                "0033 1 23 45 67 89",
            ],
            ["12.5", "2021", "1234", "S2041A00", "00000000000"],
        ),
        (
            DATE,
            [
                "2021-03-14",
                "2021-03-14T08:30:00Z",
                "14/03/2021",
                "3/14/21",
                "14.03.2021",
                "14 Mar 2021",
                "March 14, 2021",
                "14-Mar-2021",
            ],
            ["14/2021", "Mar", "2021", "12.5"],
        ),
    ],
)
def test_value_patterns_fullmatch(pattern: ValuePattern, good: list[str], bad: list[str]) -> None:
    assert _full(pattern, good) == [True] * len(good)
    assert _full(pattern, bad) == [False] * len(bad)


def test_nhs_checksum_valid_and_invalid() -> None:
    assert nhs_checksum_ok("943 476 5919")
    assert nhs_checksum_ok("9434765919")
    assert not nhs_checksum_ok("943 476 5918")  # wrong check digit
    assert not nhs_checksum_ok("123 456 7890")  # check value 10: never issued
    assert not nhs_checksum_ok("943476591")
    assert _full(UK_NHS, ["943 476 5919", "943-476-5919", "943 476 5918"]) == [True, True, False]


def test_ssn_structure_rules() -> None:
    assert _full(US_SSN, ["123-45-6789", "000-12-3456", "666-12-3456", "123-00-6789"]) == [
        True,
        False,
        False,
        False,
    ]


def test_contains_finds_identifiers_in_text_and_validates() -> None:
    text = pd.Series(
        [
            "Quarantined unit A9999 21 123456 for Mr Smith (MRN 00123456).",
            "NHS 943 476 5919 confirmed",
            "NHS 943 476 5918 looks wrong",
            "no identifiers here",
        ],
        dtype=object,
    )
    assert ISBT_DIN.contains(text).tolist() == [True, False, False, False]
    assert MRN.contains(text).tolist() == [True, False, False, False]
    assert UK_NHS.contains(text).tolist() == [False, True, False, False]


def test_fast_path_is_vectorised_over_series() -> None:
    values = pd.Series([f"COI-{i:06d}" for i in range(5000)] + [None], dtype=object)
    mask = COI_ID.fullmatch(values)
    assert mask.dtype == bool
    assert int(mask.sum()) == 5000


def test_cgt_recognizers_cover_entities() -> None:
    entities = {r.supported_entities[0] for r in CGT_RECOGNIZERS}
    assert {"ISBT_DIN", "ISBT_PRODUCT_CODE", "COI_ID", "LOT_ID", "MRN", "UK_NHS"} <= entities
    assert "DEVICE_SERIAL" in entities
    assert all(r.context for r in CGT_RECOGNIZERS)


def test_presidio_nhs_recognizer_validates_checksum() -> None:
    (nhs_rec,) = [r for r in CGT_RECOGNIZERS if r.supported_entities == ["UK_NHS"]]
    good = nhs_rec.analyze("NHS number 943 476 5919", ["UK_NHS"])
    bad = nhs_rec.analyze("NHS number 943 476 5918", ["UK_NHS"])
    assert [r.start for r in good] == [11]
    assert bad == []


def test_offline_tldextract_never_fetches() -> None:
    extractor = nlp.OFFLINE_TLD_EXTRACT
    assert extractor.suffix_list_urls == ()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _refuse)
        assert extractor("someone@example.co.uk").suffix == "co.uk"


def test_analyzer_offline_finds_cgt_and_generic_entities(offline_analyzer: AnalyzerEngine) -> None:
    names = {r.name for r in offline_analyzer.registry.recognizers}
    assert "EmailRecognizer" not in names  # the networked stock recognizer is gone
    assert "OfflineEmailRecognizer" in names
    text = (
        "Mail jane.doe@example.com about DIN A9999 21 123456, COI-A1234-21-000123, "
        "MRN: 00123456, NHS 943 476 5919 and logger TL12345678. Dr Sarah Jones agreed."
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _refuse)
        found = {
            (r.entity_type, text[r.start : r.end])
            for r in offline_analyzer.analyze(text, language="en")
        }
    for expected in [
        ("EMAIL_ADDRESS", "jane.doe@example.com"),
        ("ISBT_DIN", "A9999 21 123456"),
        ("COI_ID", "COI-A1234-21-000123"),
        ("UK_NHS", "943 476 5919"),
        ("DEVICE_SERIAL", "TL12345678"),
        ("PERSON", "Sarah Jones"),
    ]:
        assert expected in found
    assert any(e == "MRN" and "00123456" in t for e, t in found)


def test_get_analyzer_is_cached(offline_analyzer: AnalyzerEngine) -> None:
    assert nlp.get_analyzer() is offline_analyzer


def test_ner_batch_order_duplicates_and_cache(offline_analyzer: AnalyzerEngine) -> None:
    texts = ["Called Sarah Jones at noon.", "Prodigy", "Called Sarah Jones at noon."]
    spans = nlp.ner_batch(texts)
    assert len(spans) == 3
    assert spans[0] == spans[2]
    assert ("PERSON", "Sarah Jones") in {(label, texts[0][s:e]) for s, e, label in spans[0]}
    assert spans[1] == []
    assert texts[0] in nlp._ner_cache


# ISBT 128 by structure ----------------------------------------------------------------------

_DIN_FORMS = [
    "W123424123456",
    "W1234 24 123456",
    "W1234-24-123456",
    "=W123424123456 00",
    "W1234 24 123456 00 4",
    "W1234241234564",
    "A0102 03 040506",
    "G1234 98 654321 00 H",
    "Z0001 00 000000",
]


def test_dins_are_dins_and_never_phones_dates_or_national_numbers() -> None:
    values = pd.Series(_DIN_FORMS, dtype=object)
    in_text = values.map(lambda v: f"Unit {v} issued on request.")
    assert ISBT_DIN.fullmatch(values).all()
    assert ISBT_DIN.contains(in_text).all()
    for other in (PHONE, DATE, US_SSN, UK_NHS):
        assert not other.fullmatch(values).any(), other.name
        assert not other.contains(in_text).any(), other.name


def test_din_in_text_takes_the_check_character_but_not_the_next_word() -> None:
    spans = [m.group(0) for m in ISBT_DIN.text_re.finditer("DIN W1234 24 123456 00 4 ok")]
    assert spans == ["W1234 24 123456 00 4"]
    spans = [m.group(0) for m in ISBT_DIN.text_re.finditer("DIN W1234 24 123456 A patient")]
    assert spans == ["W1234 24 123456"]


def test_din_with_a_wrong_check_character_is_still_pseudonymised() -> None:
    # A mistyped check character must not let the DIN through de-identification.
    assert _full(ISBT_DIN, ["W1234 24 123456 00 K"]) == [True]


def test_presidio_din_score_raised_by_the_checksum(offline_analyzer: AnalyzerEngine) -> None:
    def score(text: str) -> float:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(socket.socket, "connect", _refuse)
            found = offline_analyzer.analyze(text, language="en", entities=["ISBT_DIN"])
        return max(r.score for r in found)

    # no context words, so only the checksum can move the score
    assert score("Ref W1234 24 123456 00 4 ok") == 1.0
    assert score("Ref W1234 24 123456 00 K ok") < 1.0


def test_presidio_reads_a_din_whole_and_case_sensitively(offline_analyzer: AnalyzerEngine) -> None:
    text = "Bag W123424123456 was issued and A0102 03 040506 returned."
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _refuse)
        found = offline_analyzer.analyze(text, language="en")
    dins = [(r.start, r.end) for r in found if r.entity_type == "ISBT_DIN"]
    assert [text[s:e] for s, e in dins] == ["W123424123456", "A0102 03 040506"]
    # Presidio's own phone and date recognisers may fire inside a DIN; every such hit lies
    # within the DIN's span, so the longer DIN span wins when spans are merged.
    for r in found:
        if r.entity_type in ("PHONE_NUMBER", "DATE_TIME"):
            assert any(s <= r.start and r.end <= e for s, e in dins), text[r.start : r.end]


def test_engine_replaces_a_din_in_text_as_one_isbt_span() -> None:
    from anonymisation.engine import _text_pattern_spans
    from anonymisation.scrub import merge_spans

    text = "Bag A0102 03 040506 issued; call +44 20 7946 0000."
    spans = merge_spans(_text_pattern_spans([text])[0])
    kinds = {text[s:e]: k for s, e, k in spans}
    assert kinds["A0102 03 040506"] == "ISBT_DIN"
    assert "PHONE_NUMBER" in kinds.values()


def test_fin_by_structure_in_values_and_after_fin_in_text() -> None:
    assert _full(ISBT_FIN, ["G1517", "=W0042", "A9999"]) == [True, True, True]
    assert _full(ISBT_FIN, ["O1517", "G151", "G15170", "g1517"]) == [False] * 4
    assert not ISBT_FIN.strong  # five characters are too common to label a column alone
    text = "Shipped to FIN: W0042 and FIN G1517; room B1234 cleaned."
    spans = [m.group(0) for m in ISBT_FIN.text_re.finditer(text)]
    assert spans == ["W0042", "G1517"]  # "FIN" itself stays, room codes stay
    for other in (PHONE, DATE, US_SSN, UK_NHS):
        assert not other.fullmatch(pd.Series(["G1517", "W0042"])).any(), other.name
