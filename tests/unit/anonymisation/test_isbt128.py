"""ISBT 128 structures: DIN check characters (ISO/IEC 7064 mod 37-2), eye-readable forms,
product codes, facility identification numbers and chain-of-identity identifiers."""

from __future__ import annotations

import pytest

from anonymisation.isbt128 import (
    ALPHABET,
    Din,
    din_check_character,
    din_check_ok,
    is_coi,
    is_din,
    is_fin,
    is_product_code,
    parse_din,
)


def textbook_mod37_2(text: str) -> str:
    """ISO/IEC 7064 mod 37-2 in its iterative (pure system) form, written independently of
    the module's weight table: p = ((p + value) * 2) mod 37 per character, then the check
    value c solves (p + c) mod 37 == 1."""
    chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*"
    p = 0
    for ch in text:
        p = ((p + chars.index(ch)) * 2) % 37
    return chars[(1 - p) % 37]


def test_published_worked_example() -> None:
    # The UK Red Book's worked example: donation number G123 498 654 321 has check H.
    assert din_check_character("G123498654321") == "H"
    assert din_check_character("G1234 98 654321") == "H"


@pytest.mark.parametrize(
    "din13",
    ["W123424123456", "A999921123456", "G000119654321", "Z999999999999", "B000100000000"],
)
def test_check_character_agrees_with_the_iterative_form(din13: str) -> None:
    assert din_check_character(din13) == textbook_mod37_2(din13)


def test_every_check_value_reachable_and_star_is_36() -> None:
    seen = {din_check_character(f"A1234{n:08d}") for n in range(400)}
    assert seen == set(ALPHABET)  # all 37 check characters occur, including "*"


@pytest.mark.parametrize("bad", ["W12342412345", "W1234241234567", "W1234-24-12345*"])
def test_check_character_refuses_a_wrong_length(bad: str) -> None:
    with pytest.raises(ValueError, match="13 letters and digits"):
        din_check_character(bad)


def test_parse_eye_readable_forms() -> None:
    check = textbook_mod37_2("W123424123456")
    expected = Din("W1234", "24", "123456")
    assert parse_din("W123424123456") == expected
    assert parse_din("W1234 24 123456") == expected
    assert parse_din(" w1234 24 123456 ") == expected
    assert parse_din("W1234-24-123456") == expected
    assert parse_din("=W123424123456 00") == Din("W1234", "24", "123456", flags="00")
    assert parse_din(f"W1234 24 123456 00 {check}") == Din("W1234", "24", "123456", "00", check)
    assert parse_din(f"W123424123456{check}") == Din("W1234", "24", "123456", None, check)
    assert parse_din("W1234 24 123456").eye_readable == "W1234 24 123456"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "text", ["O1234 24 123456", "1234 24 123456", "W1234 24 12345", "W123 24 123456", "", "DIN"]
)
def test_parse_refuses_what_is_not_a_din(text: str) -> None:
    assert parse_din(text) is None
    assert not is_din(text)


def test_check_ok_right_wrong_and_absent() -> None:
    right = textbook_mod37_2("W123424123456")
    wrong = "K" if right != "K" else "L"
    assert din_check_ok(f"W1234 24 123456 00 {right}") is True
    assert din_check_ok(f"W123424123456{right}") is True
    assert din_check_ok(f"W1234 24 123456 00 {wrong}") is False
    assert din_check_ok("W1234 24 123456") is None
    assert din_check_ok("=W123424123456 00") is None  # flag 00: no check encoded
    assert din_check_ok("not a DIN") is False
    assert is_din(f"W1234 24 123456 00 {right}")
    assert not is_din(f"W1234 24 123456 00 {wrong}")


def test_check_encoded_in_barcode_flags() -> None:
    # Flag values 60-96 carry the checksum plus 60 (the bar code's own check).
    value = ALPHABET.index(textbook_mod37_2("A999921123456"))
    assert din_check_ok(f"=A999921123456{60 + value}") is True
    assert din_check_ok(f"=A999921123456{60 + (value + 1) % 37}") is False


def test_product_codes_fin_and_coi() -> None:
    for code in ["S1180A00", "E0291V00", "=<E0291V00", "T0001000", "E0291VA0", "E0291V0a"]:
        assert is_product_code(code), code
    for code in ["S118A00", "11800A00", "S1180A0", "S1180A000"]:
        assert not is_product_code(code), code
    assert is_fin("W1234") and is_fin(" a9999 ")
    assert not is_fin("O1234") and not is_fin("W123") and not is_fin("12345")
    assert is_coi("A123421C000123") and is_coi("A1234-21000123-C")
    assert not is_coi("A1234 21 000123") and not is_coi("A123421X000123")
