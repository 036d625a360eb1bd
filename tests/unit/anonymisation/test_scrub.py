"""Free-text scrubbing with a fake analyzer and gazetteers."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from anonymisation.scrub import (
    NON_NAME_WORDS,
    Gazetteer,
    gazetteer_from_frame,
    may_hold_entity,
    may_hold_name,
    merge_spans,
    name_vocabulary,
    replace_spans,
    scrub_texts,
)

NAME = re.compile(r"\b(?:Dr|Mr|Ms) ([A-Z][a-z]+(?: [A-Z][a-z]+)?)")
PHONE = re.compile(r"\+?\d[\d ]{8,}\d")


class FakeAnalyzer:
    """Finds titled capitalised names and phone numbers; records what it was given."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.calls = 0

    def __call__(self, texts: list[str]) -> list[list[tuple[int, int, str]]]:
        self.calls += 1
        self.seen.extend(texts)
        out = []
        for text in texts:
            spans = [(m.start(1), m.end(1), "PERSON") for m in NAME.finditer(text)]
            spans += [(m.start(), m.end(), "PHONE_NUMBER") for m in PHONE.finditer(text)]
            out.append(spans)
        return out


def test_names_replaced_and_placeholders_typed() -> None:
    analyzer = FakeAnalyzer()
    notes = pd.Series(["Bag checked by Dr Jane Doe, call +44 20 7946 0958", None])
    result = scrub_texts(notes, analyzer)
    assert result.texts.tolist() == ["Bag checked by Dr <PERSON>, call <PHONE_NUMBER>", None]
    assert result.entities == {"PERSON": 1, "PHONE_NUMBER": 1}
    assert result.texts_scanned == 1 and result.texts_changed == 1


def test_gazetteer_catches_what_the_analyzer_misses() -> None:
    frame = pd.DataFrame({"patient_name": ["John Smith", None], "mrn": ["MRN0042", "77123"]})
    gaz = gazetteer_from_frame(frame, {"patient_name": "PERSON", "mrn": "MRN"})
    notes = pd.Series(
        [
            "spoke to john  smith about delay",  # lowercase, double space: NER misses it
            "Label shows mrn0042; 77123 on bag",
            "Johnson and 771234 are not identifiers here",
        ]
    )
    result = scrub_texts(notes, FakeAnalyzer(), gazetteer=gaz)
    assert result.texts.tolist() == [
        "spoke to <PERSON> about delay",
        "Label shows <MRN>; <MRN> on bag",
        "Johnson and 771234 are not identifiers here",
    ]
    assert result.entities == {"PERSON": 1, "MRN": 2}


def test_longest_first_and_name_parts() -> None:
    gaz = Gazetteer({"PERSON": ["John", "John Smith"], "MRN": ["12"]})  # "12" is too short
    assert gaz.find("John Smith 12") == [(0, 10, "PERSON")]
    frame = pd.DataFrame({"patient_name": ["Ada Lovelace"]})
    terms = gazetteer_from_frame(frame, {"patient_name": "person"}, name_parts=True)
    assert terms == {"PERSON": {"Ada Lovelace", "Ada", "Lovelace"}}
    out = scrub_texts(pd.Series(["Mrs Lovelace phoned"]), FakeAnalyzer(), gazetteer=terms)
    assert out.texts[0] == "Mrs <PERSON> phoned"


def test_safe_text_unchanged_and_prefilter_skips_it() -> None:
    analyzer = FakeAnalyzer()
    notes = pd.Series(
        ["bag slightly warm on arrival", "bag slightly warm on arrival", "Temp 9C at receipt", ""]
    )
    result = scrub_texts(notes, analyzer)
    assert result.texts.tolist() == notes.tolist()
    assert analyzer.calls == 1 and analyzer.seen == ["Temp 9C at receipt"]
    assert result.texts_scanned == 3 and result.texts_skipped == 2
    assert result.texts_changed == 0 and not result.entities


def test_analyzer_not_called_when_everything_is_safe() -> None:
    analyzer = FakeAnalyzer()
    result = scrub_texts(pd.Series(["all fine", None]), analyzer)
    assert analyzer.calls == 0 and result.texts.tolist() == ["all fine", None]


def test_prefilter() -> None:
    texts = pd.Series(["lower only", "Capital", "digit 7", "a@b", "émile", "Émile"])
    assert may_hold_entity(texts).tolist() == [False, True, True, True, False, True]


def test_each_distinct_text_analysed_once() -> None:
    analyzer = FakeAnalyzer()
    notes = pd.Series(["Seen by Dr Ann Lee"] * 500, index=range(10, 510))
    result = scrub_texts(notes, analyzer)
    assert analyzer.seen == ["Seen by Dr Ann Lee"]
    assert (result.texts == "Seen by Dr <PERSON>").all()
    assert result.texts.index.equals(notes.index)


def test_overlapping_spans_merged() -> None:
    assert merge_spans([(0, 10, "PERSON"), (5, 20, "LOCATION"), (20, 22, "MRN")]) == [
        (0, 20, "LOCATION"),
        (20, 22, "MRN"),
    ]

    def analyze(texts: list[str]) -> list[list[tuple[int, int, str]]]:
        return [[(0, 8, "person"), (5, 14, "PERSON"), (4, 6, "LOCATION")] for _ in texts]

    result = scrub_texts(pd.Series(["John Mac Smith rang"]), analyze)
    assert result.texts[0] == "<PERSON> rang"
    assert result.entities == {"PERSON": 1}


def test_analyzer_must_answer_every_text() -> None:
    with pytest.raises(ValueError):
        scrub_texts(pd.Series(["Dr Who"]), lambda texts: [])


GAZ_TERMS = {
    "PERSON": ["John Smithson", "Smithson", "John", "Al", "O'Neil", "Ada  Lovelace", "Rose"],
    "MRN": ["MRN4100000"],
    "EMAIL_ADDRESS": ["john.1@example.org"],
    "ISBT_DIN": ["W1234 24 500001"],
    "CODE": ["(abc)"],
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Pt JOHN   smithson (mrn4100000), e-mail john.1@example.org; bag W1234  24 500001.",
            [(3, 18, "PERSON"), (20, 30, "MRN"), (40, 58, "EMAIL_ADDRESS"), (64, 80, "ISBT_DIN")],
        ),
        # whole words only; "Al" is shorter than MIN_TERM_LENGTH; trailing punctuation is fine
        ("Johnny Smithsonian is not a match; Al is too short; john.", [(52, 56, "PERSON")]),
        ("", []),
        ("MRN41000001 and xMRN4100000 are other words", []),
        # tabs and newlines inside a term, apostrophes, a term starting with punctuation
        (
            "o'neil\tand ada\n lovelace; x(abc) (abc)",
            [(0, 6, "PERSON"), (11, 24, "PERSON"), (33, 38, "CODE")],
        ),
        ("John\u00a0Smithson_x John_ Smithson", [(0, 4, "PERSON"), (22, 30, "PERSON")]),
        ("ROSE, rose and Rosemary", [(0, 4, "PERSON"), (6, 10, "PERSON")]),
        ("Straße John", [(7, 11, "PERSON")]),  # casefold changes the length: compared lowered
    ],
)
def test_gazetteer_matches(text: str, expected: list[tuple[int, int, str]]) -> None:
    assert Gazetteer(GAZ_TERMS).find(text) == expected


def test_gazetteer_longest_first_and_no_overlap() -> None:
    gaz = Gazetteer({"PERSON": ["Ann Lee", "Lee Ann", "Ann"], "MRN": ["Ann Lee Ann"]})
    assert gaz.find("Ann Lee Ann Lee Ann") == [(0, 11, "MRN"), (12, 19, "PERSON")]
    assert Gazetteer({}).find("anything") == []
    assert Gazetteer({"PERSON": [None, float("nan"), "  "]}).types == {}


def test_gazetteer_words() -> None:
    assert Gazetteer({"PERSON": ["Rose Ward"], "MRN": ["MRN-12"]}).words() == {
        "rose",
        "ward",
        "mrn",
        "12",
    }


def test_name_prefilter_keeps_unknown_capitalised_words_and_dates() -> None:
    texts = [
        "MRN4100000: bag label checked before harvest, TNC 3.1e9, CRP 4 mg/L.",
        "No deviation during expansion; volume 120 mL on day 4.",
        "Spoke to Olivia about the slot.",  # an unknown capitalised word
        "Seen by Dr",  # a title: a name may follow
        "Émile rang",  # non-ASCII capital
        "courier late, arrived monday",  # a weekday in any case: NER finds dates
        "Ran on CliniMACS Prodigy and G-Rex.",  # equipment vocabulary
        "bag collected 3rd of MARCH",
        "O'Brien called",
    ]
    assert may_hold_name(texts).tolist() == [
        False,
        False,
        True,
        True,
        True,
        True,
        False,
        True,
        True,
    ]


def test_name_prefilter_never_skips_a_gazetteer_name() -> None:
    """Words of the table's identifiers are never vocabulary, even common words."""
    terms = {"PERSON": ["Will Call", "Patient Courier", "Rose"]}
    gaz = Gazetteer(terms)
    vocabulary = name_vocabulary(gaz)
    assert {"call", "patient", "courier"} <= NON_NAME_WORDS
    assert not ({"will", "call", "patient", "courier", "rose"} & vocabulary)
    texts = ["Call back tomorrow", "Patient Courier rang", "Courier: bag ok", "Rose rang"]
    assert may_hold_name(texts, vocabulary).all()
    assert not may_hold_name(texts[:1]).any()  # without the gazetteer "Call" is vocabulary
    # every single-word name and every word of a multi-word name, capitalised, is kept
    for word in ("Will", "Call", "Patient", "Courier", "Rose"):
        assert may_hold_name([f"{word} ok"], vocabulary).all(), word


def test_name_vocabulary_holds_no_listed_name() -> None:
    names = {"will", "grace", "rose", "day", "hall", "green", "ward", "mason", "cooper", "may"}
    assert not names & NON_NAME_WORDS
    assert not {"dr", "mr", "mrs", "ms", "miss", "prof", "nurse", "sister"} & NON_NAME_WORDS


def test_replace_spans() -> None:
    assert replace_spans("call Ann on 0123", [(5, 8, "PERSON"), (12, 16, "PHONE")]) == (
        "call <PERSON> on <PHONE>"
    )
    assert replace_spans("abc", []) == "abc"


def test_name_parts_leave_out_titles_and_punctuation() -> None:
    frame = pd.DataFrame({"operator": ["Nurse Kim", "Müller, Jörg", "Sr. O'Neill"]})
    terms = gazetteer_from_frame(frame, {"operator": "PERSON"}, name_parts=True)["PERSON"]
    assert {"Müller", "Jörg", "O'Neill", "Nurse Kim"} <= terms
    assert not {"Nurse", "Sr.", "Müller,"} & terms
    result = scrub_texts(
        pd.Series(["Nurse on duty: Kim", "Nurse Kim and jörg müller"]),
        lambda texts: [[] for _ in texts],
        gazetteer=Gazetteer({"PERSON": terms}),
    )
    assert result.texts.tolist() == ["Nurse on duty: <PERSON>", "<PERSON> and <PERSON> <PERSON>"]
