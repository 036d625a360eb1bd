"""The agreement form: the steward's fields turned into agreement YAML, and back.

The form never validates on its own: :func:`to_yaml` writes what was entered as the same
YAML the advanced editor and ``cleanroom agreement apply`` take, and
:func:`hub.agreements.services.parse` judges it. :func:`field_errors` then puts each
problem the validator names beside the field it is about, so there is one set of rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import yaml
from werkzeug.datastructures import MultiDict

from contracts.agreements import DEFAULT_DISCLOSURE, Agreement
from contracts.cdm import CommonDataModel, load_cdm

# The disclosure terms the form shows, in order, with a label and a hint in words.
DISCLOSURE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("k", "Fewest patients per cell", "a cell resting on fewer patients is withheld"),
    (
        "min_institutions",
        "Fewest institutions per cell",
        "a cell from fewer institutions is withheld",
    ),
    (
        "dominance_n",
        "Dominance: largest institutions",
        "how many of the largest institutions the dominance rule looks at",
    ),
    (
        "dominance_percent",
        "Dominance: largest share (%)",
        "a cell where those institutions contribute more than this share is withheld",
    ),
    ("rounding_base", "Round exact counts to", "reviewed (exact) outputs are rounded to this"),
    (
        "epsilon_per_answer",
        "Privacy cost per answer (ε)",
        "the most one interactive answer may spend; smaller is more private",
    ),
    (
        "epsilon_total",
        "Privacy budget per researcher per year (ε)",
        "what all of a researcher's answers together may spend in a year",
    ),
    (
        "review_window_days",
        "Days to object to a release",
        "working days the contributing institutions have to object to a reviewed release",
    ),
)
DISCLOSURE_FLAGS: tuple[tuple[str, str], ...] = (
    ("allow_synthetic", "Researchers may download synthetic rows"),
    ("allow_model_fitting", "Researchers may fit models (regressions)"),
)
FIELDS = (
    "id",
    "title",
    "purpose.code",
    "purpose.text",
    "description",
    "parties",
    "tables",
    "researchers",
    "valid_from",
    "valid_until",
    *(f"disclosure.{name}" for name, _, _ in DISCLOSURE_FIELDS),
    *(f"disclosure.{name}" for name, _ in DISCLOSURE_FLAGS),
)


@dataclass
class AgreementForm:
    """The values of the form as the steward entered them (strings, kept on errors)."""

    id: str = ""
    title: str = ""
    purpose_code: str = ""
    purpose_text: str = ""
    description: str = ""
    # institution slug -> set of roles ("contributor", "recipient")
    parties: dict[str, set[str]] = field(default_factory=dict)
    # table -> "all" or a list of columns (a table not in it is not covered)
    tables: dict[str, str | list[str]] = field(default_factory=dict)
    researchers: list[str] = field(default_factory=list)
    valid_from: str = ""
    valid_until: str = ""
    disclosure: dict[str, str] = field(default_factory=dict)
    flags: dict[str, bool] = field(default_factory=dict)

    def roles_of(self, institution: str) -> set[str]:
        return self.parties.get(institution, set())

    def covers(self, table: str) -> str:
        """``all``, ``columns`` or ``none``: how the form shows a table's coverage."""
        cover = self.tables.get(table)
        if cover is None:
            return "none"
        return "all" if cover == "all" else "columns"

    def has_column(self, table: str, column: str) -> bool:
        cover = self.tables.get(table)
        return cover == "all" or (isinstance(cover, list) and column in cover)


def blank() -> AgreementForm:
    """An empty form with the architecture's default disclosure terms."""
    form = AgreementForm()
    form.disclosure = {
        name: f"{getattr(DEFAULT_DISCLOSURE, name):g}" for name, _, _ in DISCLOSURE_FIELDS
    }
    form.flags = {name: bool(getattr(DEFAULT_DISCLOSURE, name)) for name, _ in DISCLOSURE_FLAGS}
    return form


def from_agreement(
    agreement: Agreement,
    *,
    description: str = "",
    institutions: Iterable[str] | None = None,
    researchers: Iterable[str] | None = None,
) -> AgreementForm:
    """The form filled from an agreement (a template or a stored draft).

    With ``institutions`` / ``researchers`` (those the hub knows), parties and researchers
    it does not know are left out: a template's example names are placeholders.
    """
    known_insts = set(institutions) if institutions is not None else None
    known_people = set(researchers) if researchers is not None else None
    form = blank()
    form.id = agreement.id
    form.title = agreement.title
    form.purpose_code = agreement.purpose.code
    form.purpose_text = agreement.purpose.text
    form.description = description
    for p in agreement.parties:
        if known_insts is None or p.institution in known_insts:
            form.parties[p.institution] = {
                r for r, on in (("contributor", p.contributor), ("recipient", p.recipient)) if on
            }
    for cover in agreement.tables:
        form.tables[cover.table] = "all" if cover.columns is None else list(cover.columns)
    form.researchers = [
        r for r in agreement.researchers if known_people is None or r in known_people
    ]
    form.valid_from = agreement.valid_from.date().isoformat()
    until = agreement.valid_until
    # A date in the YAML means its whole day: the stored end is the next midnight.
    if (until.hour, until.minute, until.second, until.microsecond) == (0, 0, 0, 0):
        until = until - timedelta(days=1)
    form.valid_until = until.date().isoformat()
    d = agreement.disclosure
    form.disclosure = {name: f"{getattr(d, name):g}" for name, _, _ in DISCLOSURE_FIELDS}
    form.flags = {name: bool(getattr(d, name)) for name, _ in DISCLOSURE_FLAGS}
    return form


def from_request(values: MultiDict[str, str], cdm: CommonDataModel | None = None) -> AgreementForm:
    """The form as posted. Field names: ``role.<institution>`` (checkboxes, repeated),
    ``cover.<table>`` (none / all / columns), ``column.<table>`` (checkboxes, repeated),
    ``researchers`` (checkboxes), ``disclosure.<name>``."""
    model = cdm or load_cdm()
    form = AgreementForm(
        id=str(values.get("id", "")).strip(),
        title=str(values.get("title", "")).strip(),
        purpose_code=str(values.get("purpose.code", "")).strip(),
        purpose_text=str(values.get("purpose.text", "")).strip(),
        description=str(values.get("description", "")).strip(),
        valid_from=str(values.get("valid_from", "")).strip(),
        valid_until=str(values.get("valid_until", "")).strip(),
    )
    for key in values.keys():
        if key.startswith("role."):
            roles = {r for r in values.getlist(key) if r in ("contributor", "recipient")}
            if roles:
                form.parties[key.removeprefix("role.")] = roles
    for table in model.table_names:
        how = str(values.get(f"cover.{table}", "none"))
        columns = [c for c in values.getlist(f"column.{table}") if c]
        if how == "all":
            form.tables[table] = "all"
        elif how == "columns":
            form.tables[table] = columns
    form.researchers = [r for r in dict.fromkeys(values.getlist("researchers")) if r]
    form.disclosure = {
        name: str(values.get(f"disclosure.{name}", "")).strip() for name, _, _ in DISCLOSURE_FIELDS
    }
    form.flags = {
        name: values.get(f"disclosure.{name}") in ("on", "true", "1", "yes")
        for name, _ in DISCLOSURE_FLAGS
    }
    return form


def _number(text: str) -> Any:
    """A whole number or a decimal when the text is one; otherwise the text itself, so
    that the validator names the field and what it expected."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _day(text: str) -> Any:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return text


def to_mapping(form: AgreementForm) -> dict[str, Any]:
    """The agreement as the YAML mapping :func:`contracts.agreements.load_agreement` reads."""
    out: dict[str, Any] = {
        "id": form.id,
        "title": form.title,
        "purpose": {"code": form.purpose_code, "text": form.purpose_text},
    }
    if form.description:
        out["description"] = form.description
    out["parties"] = [
        {
            "institution": slug,
            "roles": [r for r in ("contributor", "recipient") if r in roles],
        }
        for slug, roles in form.parties.items()
        if roles
    ]
    out["tables"] = {
        table: cover if cover == "all" else list(cover) for table, cover in form.tables.items()
    }
    out["researchers"] = list(form.researchers)
    out["valid_from"] = _day(form.valid_from)
    out["valid_until"] = _day(form.valid_until)
    disclosure: dict[str, Any] = {
        name: _number(form.disclosure.get(name, "")) for name, _, _ in DISCLOSURE_FIELDS
    }
    disclosure.update({name: bool(form.flags.get(name)) for name, _ in DISCLOSURE_FLAGS})
    out["disclosure"] = disclosure
    return out


def to_yaml(form: AgreementForm) -> str:
    """The agreement text the form stands for (what is stored, signed and compiled)."""
    header = "# Written with the agreement form in the Cleanroom portal.\n"
    return header + yaml.safe_dump(to_mapping(form), sort_keys=False, allow_unicode=True, width=100)


# Errors beside their fields ----------------------------------------------------------------

_PREFIX = re.compile(r"^(?:agreement(?: `[^`]*`)?: )+")
_FIELD = re.compile(r"^`([a-z_]+(?:\[\d+\])?(?:\.[a-z_]+)?)")


def _field_of(name: str) -> str:
    root = name.split("[", 1)[0].split(".", 1)[0]
    if root in ("parties", "tables", "researchers"):
        return root
    if root in ("purpose", "disclosure"):
        return name if name in FIELDS else root
    return root if root in FIELDS else "form"


def field_errors(message: str) -> dict[str, list[str]]:
    """The validator's message split into its problems, each under the field it names
    (``form`` for the rest). Problems are joined by "; " in the validator's messages; a
    piece that names no field continues the one before it."""
    text = _PREFIX.sub("", message.strip())
    pieces: list[tuple[str, str]] = []
    for piece in text.split("; "):
        found = _FIELD.match(piece)
        if found or not pieces:
            where = _field_of(found.group(1)) if found else "form"
            pieces.append((where, piece))
        else:
            where, before = pieces[-1]
            pieces[-1] = (where, f"{before}; {piece}")
    out: dict[str, list[str]] = {}
    for where, piece in pieces:
        if where == "form":
            # A whole-agreement problem may still name a field further on.
            if "`researchers`" in piece:
                where = "researchers"
            elif "institution" in piece and "in the hub" in piece:
                where = "parties"
            elif "choose another `id`" in piece:
                where = "id"
        out.setdefault(where, []).append(piece.rstrip("."))
    return out
