"""Pattern recognizers for identifiers of cell and gene therapy process data.

Each identifier is described once as a :class:`ValuePattern`: a regex for a whole cell value
(``value_regex``, used with ``Series.str.fullmatch`` over a column's distinct values), a regex
for an identifier inside running text (``text_regex``, used with ``Series.str.contains`` and by
Presidio), an optional validator (NHS modulus 11 ...) and context words. The same specs build
the Presidio :class:`PatternRecognizer` objects (``CGT_RECOGNIZERS``), so the analyzer and the
vectorised column classifier agree on what an identifier looks like, and classification never
has to call Presidio once per cell.

``VALUE_PATTERNS`` also holds offline regex equivalents of the generic Presidio entities the
classifier needs per column (e-mail, phone, SSN, dates, IP addresses): Presidio runs its
recognizers on one text at a time, which is far too slow for every value of a wide table.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

import pandas as pd

from anonymisation import isbt128

if TYPE_CHECKING:
    from presidio_analyzer import PatternRecognizer

Validator = Callable[[str], bool]
#: True when a checksum confirms a match (Presidio then scores it 1.0), None for no opinion.
Confirmer = Callable[[str], bool | None]


def nhs_checksum_ok(text: str) -> bool:
    """True when ``text`` holds ten digits whose last is the NHS modulus 11 check digit."""
    digits = [int(c) for c in text if c.isdigit()]
    if len(digits) != 10:
        return False
    check = 11 - sum(d * (10 - i) for i, d in enumerate(digits[:9])) % 11
    check = 0 if check == 11 else check
    return check != 10 and check == digits[9]


def ssn_plausible(text: str) -> bool:
    """US SSN structure rules: area not 000, 666 or 9xx; group and serial not all zeros."""
    digits = "".join(c for c in text if c.isdigit())
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def phone_plausible(text: str) -> bool:
    """At least 9 and at most 15 digits (E.164), and not one repeated digit."""
    digits = "".join(c for c in text if c.isdigit())
    return 9 <= len(digits) <= 15 and len(set(digits)) > 1


@dataclass(frozen=True)
class ValuePattern:
    """One way an identifier is written, usable both vectorised and by Presidio.

    ``strong`` patterns are specific enough to label a column on their own; weak ones (generic
    code shapes) only raise attention unless the column name agrees.
    """

    name: str
    entity: str
    value_regex: str
    text_regex: str
    score: float = 0.6
    context: tuple[str, ...] = ()
    validator: Validator | None = None
    flags: int = re.IGNORECASE
    strong: bool = True
    numeric_ok: bool = False  # also meaningful on integer columns (digits only)
    # A checksum that raises confidence without being required (a DIN's check character: a
    # DIN with a mistyped one is still a DIN and must still be pseudonymised).
    confirm: Confirmer | None = None
    _compiled: dict[str, re.Pattern[str]] = field(default_factory=dict, compare=False, repr=False)

    def _re(self, which: str) -> re.Pattern[str]:
        if which not in self._compiled:
            source = self.value_regex if which == "value" else self.text_regex
            self._compiled[which] = re.compile(source, self.flags)
        return self._compiled[which]

    @property
    def value_re(self) -> re.Pattern[str]:
        return self._re("value")

    @property
    def text_re(self) -> re.Pattern[str]:
        return self._re("text")

    def fullmatch(self, values: pd.Series) -> pd.Series:
        """Boolean mask: the whole (stripped) value is this identifier (validator applied)."""
        text = values.astype(str).str.strip()
        mask = text.str.fullmatch(self.value_regex, flags=self.flags).fillna(False).astype(bool)
        if self.validator is not None and mask.any():
            mask.loc[mask] = text[mask].map(self.validator).astype(bool)
        return mask

    def contains(self, values: pd.Series) -> pd.Series:
        """Boolean mask: the value contains this identifier somewhere (validator applied)."""
        text = values.astype(str)
        mask = text.str.contains(self.text_regex, flags=self.flags, regex=True)
        mask = mask.fillna(False).astype(bool)
        if self.validator is not None and mask.any():
            check = self.validator
            regex = self.text_re
            mask.loc[mask] = text[mask].map(
                lambda v: any(check(m.group(0)) for m in regex.finditer(v))
            )
        return mask.astype(bool)

    def recognizer(self) -> PatternRecognizer:
        """A Presidio recognizer for this pattern (with its validator and context words)."""
        from presidio_analyzer import Pattern

        return _recognizer_class()(
            supported_entity=self.entity,
            name=f"Cgt{self.name}Recognizer",
            patterns=[Pattern(self.name, _presidio_regex(self.text_regex, self.flags), self.score)],
            context=list(self.context),
            validator=self.validator,
            confirm=self.confirm,
        )


def _presidio_regex(source: str, flags: int) -> str:
    """Presidio compiles with its own flags (case-insensitive by default); carry the
    pattern's own case rule inline, so that "W1234 24 123456 was" does not read "wa" as
    DIN flags."""
    return f"(?i:{source})" if flags & re.IGNORECASE else f"(?-i:{source})"


@cache
def _recognizer_class() -> Any:
    """Presidio is imported on first use: it pulls in spaCy (and with it torch), which the
    web process, which only needs the patterns, never loads."""
    from presidio_analyzer import PatternRecognizer

    class _ValidatedPatternRecognizer(PatternRecognizer):
        """PatternRecognizer whose ``validate_result`` is a plain function (NHS checksum)."""

        def __init__(
            self,
            *args: object,
            validator: Validator | None = None,
            confirm: Confirmer | None = None,
            **kwargs: object,
        ):
            self._validator = validator
            self._confirm = confirm
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

        def validate_result(self, pattern_text: str) -> bool | None:
            # None means "no opinion" (keep the pattern score); False drops the match; True
            # raises the score to the maximum.
            if self._validator is not None and not self._validator(pattern_text):
                return False
            if self._confirm is not None and self._confirm(pattern_text):
                return True
            return None if self._validator is None else True

    return _ValidatedPatternRecognizer


_SEP = r"[\s\-]?"
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"

# CGT identifiers ---------------------------------------------------------------------------


def din_confirmed(text: str) -> bool:
    """A DIN whose check character (printed, or encoded in the flags) is right."""
    return isbt128.din_check_ok(text) is True


ISBT_DIN = ValuePattern(
    "IsbtDin",
    "ISBT_DIN",
    # ISBT 128 data structure 001 (see :mod:`anonymisation.isbt128`): FIN (letter + 4 digits),
    # 2-digit year, 6-digit sequence; optional "=" data identifier, 2 flag characters and the
    # mod 37-2 check character (printed boxed, sometimes after a space). A wrong check
    # character does not stop the match (a mistyped DIN is still a DIN); a right one raises
    # Presidio's score.
    r"=?\s?[A-NP-Z]\d{4}[\s\-]?\d{2}[\s\-]?\d{6}(?:[\s\-]?[0-9A-Z]{2})?(?:\s?[0-9A-Z*])?",
    # In text: the check character only when glued or after the flags, so that "DIN
    # W1234 24 123456 A patient ..." does not take the "A".
    r"\b[A-NP-Z]\d{4}[\s\-]?\d{2}[\s\-]?\d{6}(?:\s?[0-9A-Z]{2}(?:\s?[0-9A-Z*])?|[0-9A-Z*])?\b",
    0.7,
    ("din", "donation", "unit", "bag", "isbt", "apheresis"),
    flags=0,
    confirm=din_confirmed,
)
ISBT_PRODUCT_CODE = ValuePattern(
    "IsbtProductCode",
    "ISBT_PRODUCT_CODE",
    # Product description code (letter + 4 digits), donation type, 2 division characters:
    # S1180A00, S11804A0, E0291V00. At least one letter in the last three.
    r"[A-Z]\d{4}(?=[0-9A-Z]{0,2}[A-Z])[0-9A-Z]{3}",
    r"\b[A-Z]\d{4}(?=[0-9A-Z]{0,2}[A-Z])[0-9A-Z]{3}\b",
    0.5,
    ("product code", "isbt", "product"),
    flags=0,
)
COI_ID = ValuePattern(
    "ChainOfIdentity",
    "COI_ID",
    r"(?:COI|CoI|CID|CHAIN)[\s\-_:#]*[A-Z0-9](?:[A-Z0-9\-_/]*[A-Z0-9])?"
    r"|[A-Z]\d{4}\d{2}C\d{6}|[A-Z]\d{4}-\d{8}-C",
    r"\b(?:COI|CID)[\s\-_:#]*[A-Z0-9](?:[A-Z0-9\-_/]*[0-9])?\b"
    r"|\b[A-Z]\d{4}\d{2}C\d{6}\b|\b[A-Z]\d{4}-\d{8}-C\b",
    0.7,
    ("coi", "chain of identity", "identity", "subject", "patient id"),
    flags=0,
)
ISBT_FIN = ValuePattern(
    "IsbtFacility",
    "ISBT_FIN",
    # Facility identification number (FIN, the first five characters of a DIN): one letter
    # A-N or P-Z and four digits. Too short to stand on its own, so weak: it labels a column
    # only when the column's name says FIN or facility ID; in text only after "FIN".
    # The FIN's shape is isbt128's own (case-sensitive, so no validator is needed on top).
    rf"=?\s?{isbt128.FIN_RE}",
    rf"(?:(?<=FIN )|(?<=FIN:)|(?<=FIN: )|(?<=FIN#)|(?<=FIN-)){isbt128.FIN_RE}\b",
    0.5,
    ("fin", "facility", "isbt"),
    flags=0,
    strong=False,
)
LOT_ID = ValuePattern(
    "LotNumber",
    "LOT_ID",
    r"(?:LOT|BATCH|BN|LT)[\s\-_:#]*(?=[A-Z\-_/]*\d)[A-Z0-9][A-Z0-9\-_/]{2,}",
    r"\b(?:LOT|BATCH)[\s\-_:#]*[A-Z0-9]*\d[A-Z0-9\-_/]*\b",
    0.6,
    ("lot", "batch", "charge"),
)
LOT_CODE = ValuePattern(
    "LotCode",
    "LOT_ID",
    # Site-prefixed manufacturing codes (UC21-00012, UC-CAR-21-0012). Shared by deviation and
    # reagent codes, so weak: labels a column only when its name says lot or batch.
    r"[A-Z]{2,4}\d{2}-\d{4,6}|[A-Z]{2,4}-[A-Z]{2,4}-\d{2}-\d{3,6}",
    r"\b(?:[A-Z]{2,4}\d{2}-\d{4,6}|[A-Z]{2,4}-[A-Z]{2,4}-\d{2}-\d{3,6})\b",
    0.3,
    ("lot", "batch"),
    flags=0,
    strong=False,
)
MRN = ValuePattern(
    "MedicalRecordNumber",
    "MRN",
    r"(?:MRN|MR|HOSP(?:ITAL)?[\s_]*(?:NO|NUM|NUMBER)?|RTH|H)[\s\-_:#.]*\d{5,10}"
    r"|MRN[\s\-_:#]*\d{2,5}-\d{3,5}",
    r"\b(?:MRN|MR\s?No|Hosp(?:ital)?\s?(?:No|Number))[\s\-_:#.]*\d[\d\-]{4,11}\b",
    0.6,
    ("mrn", "medical record", "hospital number", "hosp no", "record"),
)
UK_NHS = ValuePattern(
    "UkNhsNumber",
    "UK_NHS",
    r"\d{3}[\s\-]?\d{3}[\s\-]?\d{4}",
    r"\b\d{3}[\s\-]?\d{3}[\s\-]?\d{4}\b",
    0.5,
    ("nhs", "nhs number", "nhs no", "health number"),
    validator=nhs_checksum_ok,
    flags=0,
    numeric_ok=True,
)
DEVICE_SERIAL = ValuePattern(
    "DeviceSerial",
    "DEVICE_SERIAL",
    # Logger and device serials: TL12345678, SN-00012345, S/N 4471-22.
    r"(?:TL|LG|DL|SN|S/N|SER|SERIAL)[\s\-_:#]*\d[\d\-]{4,}[A-Z]?",
    r"\b(?:TL|LG|DL|SN|S/N|SER|SERIAL)[\s\-_:#]*\d[\d\-]{4,}[A-Z]?\b",
    0.5,
    ("logger", "serial", "sn", "device", "data logger", "tracker"),
)

CGT_PATTERNS: tuple[ValuePattern, ...] = (
    ISBT_DIN,
    ISBT_PRODUCT_CODE,
    COI_ID,
    LOT_ID,
    LOT_CODE,
    MRN,
    UK_NHS,
    DEVICE_SERIAL,
)

# Offline equivalents of generic Presidio entities ---------------------------------------

EMAIL = ValuePattern(
    "Email",
    "EMAIL_ADDRESS",
    r"[\w.!#$%&'*+/=?^`{|}~\-]+@[\w\-]+(?:\.[\w\-]+)*\.[a-z]{2,}",
    r"\b[\w.!#$%&'*+/=?^`{|}~\-]+@[\w\-]+(?:\.[\w\-]+)*\.[a-z]{2,}\b",
    0.8,
    ("email", "e-mail", "mail"),
)
PHONE = ValuePattern(
    "Phone",
    "PHONE_NUMBER",
    # US (555) 555-0123 / 555-555-0123 / +1 ...; UK 07700 900123 / +44 (0)20 7946 0000;
    # EU +49 30 123456, 0033 1 23 45 67 89.
    r"(?:\+|00)?\d{0,3}[\s.\-]?(?:\(\d{1,5}\)|\(0\)\s?\d{1,5}|\d{1,5})"
    r"(?:[\s.\-]?\d{2,5}){1,4}(?:\s?(?:x|ext\.?)\s?\d{1,5})?",
    r"(?:(?<!\w)(?:\+|00)\d{1,3}[\s.\-]?(?:\(0\)\s?)?\d{1,5}(?:[\s.\-]?\d{2,5}){1,4}"
    r"|(?<!\w)\(\d{3}\)\s?\d{3}[\s.\-]\d{4}|\b\d{3}[.\-]\d{3}[.\-]\d{4}"
    r"|\b0\d{3,4}\s\d{3}\s?\d{3,4})\b",
    0.5,
    ("phone", "telephone", "tel", "mobile", "cell", "bleep", "contact"),
    validator=phone_plausible,
)
US_SSN = ValuePattern(
    "UsSsn",
    "US_SSN",
    r"\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}",
    r"\b\d{3}-\d{2}-\d{4}\b",
    0.6,
    ("ssn", "social security"),
    validator=ssn_plausible,
    flags=0,
)
DATE = ValuePattern(
    "Date",
    "DATE_TIME",
    r"\d{4}-\d{1,2}-\d{1,2}(?:[T\s]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+\-]\d{2}:?\d{2})?)?"
    r"|\d{4}/\d{1,2}/\d{1,2}"
    r"|\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})(?:\s\d{1,2}:\d{2}(?::\d{2})?)?"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?[\s\-]{_MONTH}[\s\-,]+\d{{2,4}}"
    rf"|{_MONTH}\s\d{{1,2}}(?:st|nd|rd|th)?,?\s\d{{4}}"
    r"|\d{8}(?=$)(?<=(?:19|20)\d{6})",
    rf"\b(?:\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}/\d{{1,2}}/\d{{2,4}}|\d{{1,2}}\s{_MONTH}\s\d{{4}})\b",
    0.5,
    ("date", "born", "dob"),
)
IP_ADDRESS = ValuePattern(
    "IpAddress",
    "IP_ADDRESS",
    r"(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)",
    r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b",
    0.6,
    ("ip",),
    flags=0,
)
UK_POSTCODE = ValuePattern(
    "UkPostcode",
    "UK_POSTCODE",
    r"[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}",
    r"\b[A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2}\b",
    0.4,
    ("postcode", "address"),
    flags=0,
)

GENERIC_PATTERNS: tuple[ValuePattern, ...] = (EMAIL, US_SSN, DATE, IP_ADDRESS, UK_POSTCODE, PHONE)

# Order matters on ties: specific identifiers before generic shapes (a DIN is also digits).
VALUE_PATTERNS: tuple[ValuePattern, ...] = (
    EMAIL,
    ISBT_DIN,
    COI_ID,
    MRN,
    UK_NHS,
    US_SSN,
    DEVICE_SERIAL,
    LOT_ID,
    ISBT_PRODUCT_CODE,
    DATE,
    IP_ADDRESS,
    UK_POSTCODE,
    LOT_CODE,
    ISBT_FIN,
    PHONE,
)


def build_cgt_recognizers(
    patterns: Iterable[ValuePattern] = CGT_PATTERNS,
) -> list[PatternRecognizer]:
    """Fresh Presidio recognizers for the CGT identifiers."""
    return [p.recognizer() for p in patterns]


def __getattr__(name: str) -> Any:
    # ``CGT_RECOGNIZERS`` is built on first access, so importing the patterns is cheap.
    if name == "CGT_RECOGNIZERS":
        found = build_cgt_recognizers()
        globals()[name] = found
        return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
