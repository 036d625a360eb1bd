"""ISBT 128 identifiers recognised by their structure (ICCBBA's standard).

Pure functions, no pandas: the recognisers of :mod:`anonymisation.recognizers` and the upload
validation of the hub call them on the few values their regexes select.

- **Donation Identification Number** (DIN, data structure 001): 13 characters, the facility
  identification number (FIN: one letter A-N or P-Z, then four digits), the two-digit year
  and a six-digit sequence. Bar codes add two flag characters; printed labels show the DIN as
  ``W1234 24 123456`` followed by the flags and a boxed check character computed with
  ISO/IEC 7064 mod 37-2 over the 13 characters.
- **Product code** (data structure 003): a product description code (a letter, such as E for
  blood components, S for cellular therapy or T for tissues, then four digits), the type of
  donation (one character) and the division (two characters): ``S1180A00``, ``E0291V00``.
- **Chain of Identity identifier** (ST-028, data structure 040): built from the FIN of the
  facility that assigns it and a sequence; written ``W123424C000123`` or ``W1234-24000123-C``
  in site exports. It carries no check character, so it is recognised by its shape only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: ISO/IEC 7064 mod 37-2 alphabet: a character's value is its index (``*`` is 36 and can only
#: be a check character).
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ*"
_VALUE = {c: i for i, c in enumerate(ALPHABET[:36])}
# Weight of the character n places from the right end of 13 is 2**n mod 37 (n = 13 ... 1).
_WEIGHTS = tuple(pow(2, n, 37) for n in range(13, 0, -1))

FIN_RE = r"[A-NP-Z]\d{4}"
#: A DIN as it is written: optional ``=`` data identifier, FIN, year and sequence with or
#: without spaces, then optional flags (2) and/or a check character (1), spaced or not.
_DIN = re.compile(
    rf"=?\s*(?P<fin>{FIN_RE})[\s-]?(?P<year>\d{{2}})[\s-]?(?P<seq>\d{{6}})"
    r"(?:[\s-]?(?P<flags>[0-9A-Z]{2}))?(?:\s?(?P<check>[0-9A-Z*]))?"
)
_FIN = re.compile(FIN_RE)
# product description code, type of donation, division (second division character may be
# lower case: ``E0291VA0``, ``E0291V0a``)
_PRODUCT = re.compile(r"(?:=<)?\s*[A-Z]\d{4}\s?[0-9A-Z]\s?[0-9A-Z][0-9A-Za-z]")
_COI = re.compile(rf"{FIN_RE}\d{{2}}C\d{{6}}|{FIN_RE}-\d{{8}}-C")


@dataclass(frozen=True)
class Din:
    """One Donation Identification Number, split into its parts."""

    fin: str
    year: str
    sequence: str
    flags: str | None = None
    check: str | None = None

    @property
    def din13(self) -> str:
        return f"{self.fin}{self.year}{self.sequence}"

    @property
    def eye_readable(self) -> str:
        """The DIN as labels print it, without flags or check character: ``W1234 24 123456``."""
        return f"{self.fin} {self.year} {self.sequence}"

    @property
    def expected_check(self) -> str:
        return din_check_character(self.din13)

    @property
    def given_check(self) -> str | None:
        """The check character the value carries: the eye-readable one, else the one encoded
        in the flags (flag values 60-96 are the mod 37-2 checksum plus 60)."""
        if self.check is not None:
            return self.check
        if self.flags is not None and self.flags.isdigit() and 60 <= int(self.flags) <= 96:
            return ALPHABET[int(self.flags) - 60]
        return None


def din_check_character(din13: str) -> str:
    """The ISO/IEC 7064 mod 37-2 check character of a 13-character DIN (spaces ignored).

    Raises ``ValueError`` when ``din13`` is not 13 letters and digits."""
    text = din13.replace(" ", "").upper()
    if len(text) != 13 or any(c not in _VALUE for c in text):
        raise ValueError(f"a DIN has 13 letters and digits, not {din13!r}")
    total = sum(_VALUE[c] * w for c, w in zip(text, _WEIGHTS, strict=True))
    return ALPHABET[(38 - total % 37) % 37]


def parse_din(text: str) -> Din | None:
    """The DIN written in ``text`` (the whole value), or None when it is not one.

    Accepts ``W123424123456``, ``W1234 24 123456``, ``=W123424123456 00``, with flags and
    with the printed check character (``W1234 24 123456 00 7`` or ``W1234 24 123456 7``)."""
    m = _DIN.fullmatch(text.strip().upper())
    if m is None:
        return None
    return Din(m.group("fin"), m.group("year"), m.group("seq"), m.group("flags"), m.group("check"))


def din_check_ok(text: str) -> bool | None:
    """True when the DIN in ``text`` carries the right check character, False when it
    carries a wrong one (or ``text`` is not a DIN), None when it carries none."""
    din = parse_din(text)
    if din is None:
        return False
    given = din.given_check
    if given is None:
        return None
    return given == din.expected_check


def is_din(text: str) -> bool:
    """``text`` is a DIN whose check character, when present, is right."""
    return parse_din(text) is not None and din_check_ok(text) is not False


def is_fin(text: str) -> bool:
    """``text`` is a facility identification number (``W1234``)."""
    return _FIN.fullmatch(text.strip().upper()) is not None


def is_product_code(text: str) -> bool:
    """``text`` is an ISBT 128 product code (``S1180A00``, ``E0291V00``, ``=<E0291V00``)."""
    return _PRODUCT.fullmatch(text.strip()) is not None


def is_coi(text: str) -> bool:
    """``text`` is a chain-of-identity identifier built from a FIN and a sequence."""
    return _COI.fullmatch(text.strip().upper()) is not None
