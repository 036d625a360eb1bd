"""Shared codes for the common data model's category values (``contracts/codes.yaml``).

Every category column of the CDM names the code system its values come from: a standard
one where a verified code exists (LOINC, SNOMED CT, HL7 terminologies) and the CDM's own
code list otherwise. Each value carries its code, a display text and the terms sites write
for it (brand names, abbreviations, lab wording), which the upload's term mapper proposes
(:mod:`hub.ingest.terms`); the contributor confirms every proposal.

The file is read strictly, like ``cdm.yaml``: every category column of the CDM has an
entry, every allowed value a code, and a site term belongs to one value of a column only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from contracts.cdm import ColumnType, CommonDataModel, load_cdm, read_contract

DEFAULT_PATH = Path(__file__).with_name("codes.yaml")
CDM_SYSTEM = "cdm"
"""The key of the CDM's own code list in the file's ``systems``."""

MAX_ASKED_TERMS = 100
"""Distinct values a column may have for its terms to be asked about one by one."""

_SPACES = re.compile(r"\s+")


def term_key(term: str) -> str:
    """The form two site terms are compared in: case, accents kept, spacing folded
    (``"BacT/ALERT "`` and ``"bact/alert"`` are one term)."""
    return _SPACES.sub(" ", str(term)).strip().casefold()


@dataclass(frozen=True)
class CodeSystem:
    key: str  # "loinc"
    uri: str  # "http://loinc.org"
    name: str  # "LOINC"


@dataclass(frozen=True)
class Code:
    """One CDM value's code in a code system, with the terms sites use for it."""

    value: str  # the CDM value, e.g. "endotoxin"
    system: CodeSystem
    code: str
    display: str  # as the code system displays the code
    label: str  # in plain words, for pages ("Large B-cell lymphoma")
    synonyms: tuple[str, ...] = ()
    source: str = ""  # where the code was verified, empty for the CDM's own codes

    @property
    def standard(self) -> bool:
        """A code of a standard system (SNOMED CT, HL7 ...), not the CDM's own list."""
        return self.system.key != CDM_SYSTEM

    @property
    def coding(self) -> dict[str, str]:
        """The code as a FHIR Coding (``system``, ``code``, ``display``)."""
        return {"system": self.system.uri, "code": self.code, "display": self.display}


@dataclass(frozen=True)
class CodeList:
    """The codes of one category column, keyed by CDM value, in the CDM's order."""

    table: str
    column: str
    system: CodeSystem  # the column's main system (a value may use another)
    codes: Mapping[str, Code]

    def synonyms(self) -> Iterator[tuple[str, str]]:
        """``(term, value)`` for every site term the file names, the value's display text
        and its code included (a file may carry codes instead of words)."""
        for value, code in self.codes.items():
            yield code.display, value
            yield code.label, value
            if code.standard:
                yield code.code, value
            for term in code.synonyms:
                yield term, value


@dataclass(frozen=True)
class CodeBook:
    version: str
    systems: Mapping[str, CodeSystem]
    lists: Mapping[tuple[str, str], CodeList]

    def column(self, table: str, column: str) -> CodeList | None:
        return self.lists.get((table, column))

    def __iter__(self) -> Iterator[CodeList]:
        return iter(self.lists.values())


def load_codes(path: Path | None = None, cdm: CommonDataModel | None = None) -> CodeBook:
    """Load and check the code book against the CDM; the default file is read once."""
    if path is None and cdm is None:
        return _load_default()
    return _load(Path(path or DEFAULT_PATH), cdm or load_cdm())


@lru_cache(maxsize=1)
def _load_default() -> CodeBook:
    return _load(DEFAULT_PATH, load_cdm())


def _load(path: Path, cdm: CommonDataModel) -> CodeBook:
    return read_contract(path, _build, cdm)


def _text(value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: must be a non-empty string, not {value!r}")
    return value.strip()


def _build(raw: Any, cdm: CommonDataModel) -> CodeBook:
    if not isinstance(raw, dict) or set(raw) != {"version", "systems", "columns"}:
        raise ValueError("the file must be a mapping with exactly `version`, `systems`, `columns`")
    version = _text(raw["version"], "`version`")
    if version != cdm.version:
        raise ValueError(
            f"`version` is {version} but the data model is {cdm.version}: the codes are part "
            "of the contract, so both files carry the same version"
        )
    systems: dict[str, CodeSystem] = {}
    for key, spec in (raw["systems"] or {}).items():
        where = f"system `{key}`"
        if not isinstance(spec, dict) or set(spec) != {"uri", "name"}:
            raise ValueError(f"{where}: must be a mapping with `uri` and `name`")
        systems[key] = CodeSystem(key, _text(spec["uri"], where), _text(spec["name"], where))
    if CDM_SYSTEM not in systems:
        raise ValueError(f"`systems` must name the CDM's own code list as `{CDM_SYSTEM}`")
    lists: dict[tuple[str, str], CodeList] = {}
    for name, spec in (raw["columns"] or {}).items():
        code_list = _build_list(str(name), spec, systems, cdm)
        lists[(code_list.table, code_list.column)] = code_list
    missing = [
        f"{t.name}.{c.name}"
        for t in cdm.tables
        for c in t.columns
        if c.type == ColumnType.CATEGORY and (t.name, c.name) not in lists
    ]
    if missing:
        raise ValueError(f"category column(s) with no code list: {', '.join(missing)}")
    return CodeBook(version, MappingProxyType(systems), MappingProxyType(lists))


def _build_list(
    name: str, spec: Any, systems: Mapping[str, CodeSystem], cdm: CommonDataModel
) -> CodeList:
    where = f"column `{name}`"
    table_name, _, column_name = name.partition(".")
    try:
        column = cdm.table(table_name).column(column_name)
    except KeyError as err:
        raise ValueError(f"{where}: {err.args[0]}") from None
    if column.type != ColumnType.CATEGORY or not column.allowed:
        raise ValueError(f"{where}: only category columns have codes")
    if not isinstance(spec, dict) or set(spec) != {"system", "values"}:
        raise ValueError(f"{where}: must be a mapping with `system` and `values`")
    system = _system(spec["system"], systems, where)
    values = spec["values"]
    if not isinstance(values, dict) or set(values) != set(column.allowed):
        have = set(values) if isinstance(values, dict) else set()
        raise ValueError(
            f"{where}: `values` must give a code for each allowed value exactly "
            f"(missing: {', '.join(sorted(set(column.allowed) - have)) or 'none'}; "
            f"unknown: {', '.join(sorted(have - set(column.allowed))) or 'none'})"
        )
    codes: dict[str, Code] = {}
    owner: dict[str, str] = {}
    for value in column.allowed:
        codes[value] = code = _build_code(value, values[value], system, systems, where)
        for term, _ in CodeList(table_name, column_name, system, {value: code}).synonyms():
            key = term_key(term)
            if owner.setdefault(key, value) != value:
                raise ValueError(
                    f"{where}: the term {term!r} is given for both `{owner[key]}` and "
                    f"`{value}`; a term must name one value"
                )
    return CodeList(table_name, column_name, system, MappingProxyType(codes))


def _system(key: Any, systems: Mapping[str, CodeSystem], where: str) -> CodeSystem:
    if key not in systems:
        raise ValueError(f"{where}: unknown code system {key!r} (known: {', '.join(systems)})")
    return systems[key]


def _build_code(
    value: str,
    spec: Any,
    default: CodeSystem,
    systems: Mapping[str, CodeSystem],
    where: str,
) -> Code:
    where = f"{where}, value `{value}`"
    allowed = {"system", "code", "display", "label", "synonyms", "source"}
    if not isinstance(spec, dict) or not {"display"} <= set(spec) <= allowed:
        raise ValueError(f"{where}: must be a mapping with `display` and optionally {allowed}")
    system = _system(spec["system"], systems, where) if "system" in spec else default
    if system.key == CDM_SYSTEM:
        code = _text(spec.get("code", value), f"{where}: `code`")
        if code != value:
            raise ValueError(f"{where}: in the CDM's own code list the code is the value")
    else:
        code = _text(spec.get("code"), f"{where}: `code`")
        # A standard code names the page it was verified on.
        _text(spec.get("source"), f"{where}: `source`")
    synonyms = spec.get("synonyms", [])
    if not isinstance(synonyms, list):
        raise ValueError(f"{where}: `synonyms` must be a list of terms")
    display = _text(spec["display"], f"{where}: `display`")
    return Code(
        value=value,
        system=system,
        code=code,
        display=display,
        label=_text(spec.get("label", display), f"{where}: `label`"),
        synonyms=tuple(_text(s, f"{where}: synonym") for s in synonyms),
        source=str(spec.get("source") or ""),
    )


def render_markdown(book: CodeBook | None = None) -> str:
    """The "Shared codes" section of docs/cdm.md."""
    book = book or load_codes()
    out = [
        "## Shared codes",
        "",
        "Every category column names the code system its values come from "
        "(`contracts/codes.yaml`): a standard one where a code was verified against the "
        "standard's own publication (the source is given in the file), the data model's own "
        f"code list (`{book.systems[CDM_SYSTEM].uri}`, the code is the value) otherwise. "
        "Exports carry the codes: JSON Schema and Table Schema as `x-cleanroom-codes`.",
        "",
        "**A site's own terms.** When an upload's columns are mapped, every value of a "
        "category column that is not one of the column's values (case, accents and spacing "
        "aside) is a term the contributor is asked about, on the mapping page or in the API "
        "(`terms` on the upload; `POST …/mapping` with `terms` and "
        "`accept_proposed_terms`). Cleanroom proposes a value from the display texts, codes "
        "and the terms sites use listed below, exactly or by a close spelling, and marks "
        "each proposal for checking; a term it has never seen is left for the contributor "
        "to choose, never guessed. Each term confirmed as a value is remembered for the "
        "institution and applied to its next uploads without asking (a term held back is "
        "not kept: it may be a stray identifier). "
        f"Columns with more than {MAX_ASKED_TERMS} distinct values are not asked about: values "
        "outside the list are held back by validation.",
        "",
        "**Where no standard code is given, and why.** Release tests keep the CDM's own "
        "codes: the LOINC terms closest to them measure something else (CAR-T and CD3 cells "
        "as counts, not percentages; viability of CD3 cells only; endotoxin in "
        "non-biological fluid; mycoplasma by one probe method; bacteria in autologous blood "
        "units), and a code that means something else is worse than none. ISBT 128 product "
        "description codes are published to ICCBBA's licensees only; ISBT 128 stays the "
        "standard of `product_code` and the DIN. Product statuses `processed`, `applied` "
        "and `discarded` exist in the FHIR R6 ballot, not in R5 (which has `available` and "
        "`unavailable`), so they keep CDM codes until R6 is published. Product names have no "
        "code verified against its primary source yet. A standard code replaces a CDM code "
        "in a minor version of the data model (the value stays).",
        "",
        "| column | system | value | code | display (in plain words) | terms sites use |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for codes in book:
        for value, code in codes.codes.items():
            out.append(
                f"| `{codes.table}.{codes.column}` | {code.system.name} | `{value}` "
                f"| `{code.code}` | {code.display}"
                + (f" ({code.label})" if code.label != code.display else "")
                + " | "
                + ", ".join(s.replace("|", "\\|") for s in code.synonyms)
                + " |"
            )
    return "\n".join(out) + "\n"
