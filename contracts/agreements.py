"""Data-sharing agreements: the YAML format, validation, lifecycle and compilation into rules.

An agreement names its parties (institutions contributing and/or receiving), a purpose, the
CDM tables (optionally columns) it covers, its researchers, a validity window and disclosure
parameters. Its lifecycle is draft -> awaiting_signatures -> active -> suspended / expired /
terminated; it becomes active only once every party has signed the current terms.

:func:`compile_rules` turns one agreement into the Casbin rules of its domain
(``agreement:<id>``); the hub stores them with :func:`policies.store.replace_domain_rules`
whenever the agreement changes. Expiry is not compiled away: the data rules carry the
validity window and the matcher compares it with the clock at every decision.

Everything here is pure: agreements are frozen; lifecycle methods return a new agreement.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from contracts.cdm import CommonDataModel, _StrictLoader, load_cdm
from policies.enforcer import ALWAYS, Rule, make_window, user_subject

TEMPLATES = Path(__file__).with_name("templates")


class AgreementError(ValueError):
    """An agreement that cannot be loaded, validated or moved; the message says what to fix."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# The terms ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """An institution in the agreement: it contributes data, receives results, or both."""

    institution: str
    contributor: bool
    recipient: bool


@dataclass(frozen=True)
class Purpose:
    code: str
    text: str


@dataclass(frozen=True)
class Coverage:
    """A covered CDM table; ``columns`` None means every column."""

    table: str
    columns: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Disclosure:
    """Disclosure-control parameters (ARCHITECTURE.md, "Disclosure control defaults").

    A cell is suppressed below ``k`` records or ``min_institutions`` institutions, or when
    the largest ``dominance_n`` institutions contribute more than ``dominance_percent`` % of
    it; counts are rounded to ``rounding_base``.
    """

    k: int = 10
    min_institutions: int = 3
    rounding_base: int = 5
    dominance_n: int = 2
    dominance_percent: float = 90.0
    allow_synthetic: bool = False
    allow_model_fitting: bool = False
    epsilon_per_answer: float = 1.0
    epsilon_total: float = 20.0
    # Working days the contributing institutions have to object to a reviewed release.
    review_window_days: int = 5

    def weaker_than(self, floor: Disclosure) -> list[str]:
        """The parameters that protect less than ``floor`` does, each with a sentence."""
        found = []
        for name in ("k", "min_institutions", "rounding_base", "dominance_n", "review_window_days"):
            mine, least = getattr(self, name), getattr(floor, name)
            if mine < least:
                found.append(f"`disclosure.{name}` is {mine}; the steward's floor is {least}")
        if self.dominance_percent > floor.dominance_percent:
            found.append(
                f"`disclosure.dominance_percent` is {self.dominance_percent:g}; "
                f"the steward's floor is {floor.dominance_percent:g} (lower is stricter)"
            )
        for name in ("epsilon_per_answer", "epsilon_total"):
            mine, most = getattr(self, name), getattr(floor, name)
            if mine > most:
                found.append(
                    f"`disclosure.{name}` is {mine:g}; the steward allows at most {most:g} "
                    "(a larger ε protects less)"
                )
        for name in ("allow_synthetic", "allow_model_fitting"):
            if getattr(self, name) and not getattr(floor, name):
                found.append(f"`disclosure.{name}` is true; the steward does not allow it")
        return found


DEFAULT_DISCLOSURE = Disclosure()
"""The architecture's defaults: what an agreement gets for the parameters it leaves out."""

DEFAULT_FLOOR = Disclosure(allow_synthetic=True, allow_model_fitting=True, epsilon_total=100.0)
"""The floor when the caller passes none: the defaults' thresholds, and synthetic rows and
model fitting left to each agreement; at most ε = 1 per answer, and a yearly privacy budget
an agreement may raise from its default 20 up to 100 (new terms, which every party signs
again). The steward's configured floor replaces it."""


@dataclass(frozen=True)
class Signature:
    """A party's signature: who signed, when, and the digest of the terms they signed."""

    institution: str
    signed_by: str
    signed_at: datetime
    terms: str


class State(StrEnum):
    DRAFT = "draft"
    AWAITING_SIGNATURES = "awaiting_signatures"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    EXPIRED = "expired"
    TERMINATED = "terminated"


class Event(StrEnum):
    SUBMIT = "submit"
    REVISE = "revise"  # back to draft, signatures dropped
    ACTIVATE = "activate"
    SUSPEND = "suspend"
    RESUME = "resume"
    TERMINATE = "terminate"


TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (State.DRAFT, Event.SUBMIT): State.AWAITING_SIGNATURES,
    (State.AWAITING_SIGNATURES, Event.REVISE): State.DRAFT,
    (State.AWAITING_SIGNATURES, Event.ACTIVATE): State.ACTIVE,
    (State.ACTIVE, Event.SUSPEND): State.SUSPENDED,
    (State.SUSPENDED, Event.RESUME): State.ACTIVE,
    (State.DRAFT, Event.TERMINATE): State.TERMINATED,
    (State.AWAITING_SIGNATURES, Event.TERMINATE): State.TERMINATED,
    (State.ACTIVE, Event.TERMINATE): State.TERMINATED,
    (State.SUSPENDED, Event.TERMINATE): State.TERMINATED,
}


def transition(state: State | str, event: Event | str) -> State:
    """The state after ``event``; refuses a move the lifecycle does not have.

    This table knows nothing of signatures or dates: :meth:`Agreement.activate` adds the
    signature guard, :meth:`Agreement.state_at` the expiry.
    """
    state, event = State(state), Event(event)
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        possible = sorted(e.value for (s, e) in TRANSITIONS if s is state)
        raise AgreementError(
            f"an agreement that is {state.value} cannot {event.value}"
            + (f" (it can: {', '.join(possible)})" if possible else " (it is final)")
        ) from None


@dataclass(frozen=True)
class Agreement:
    id: str
    title: str
    purpose: Purpose
    parties: tuple[Party, ...]
    tables: tuple[Coverage, ...]
    researchers: tuple[str, ...]
    valid_from: datetime
    valid_until: datetime
    disclosure: Disclosure = field(default_factory=Disclosure)
    state: State = State.DRAFT
    signatures: tuple[Signature, ...] = ()

    @property
    def domain(self) -> str:
        """The Casbin domain of the agreement's rules."""
        return f"agreement:{self.id}"

    @property
    def object(self) -> str:
        """The path of the agreement's metadata in access decisions."""
        return f"agreements/{self.id}"

    @property
    def institutions(self) -> tuple[str, ...]:
        return tuple(p.institution for p in self.parties)

    def party(self, institution: str) -> Party:
        for party in self.parties:
            if party.institution == institution:
                return party
        raise AgreementError(
            f"agreement `{self.id}`: `{institution}` is not a party "
            f"(parties: {', '.join(self.institutions)})"
        )

    # Signatures

    @property
    def terms(self) -> str:
        """SHA-256 of the terms (everything but state and signatures): what a party signs."""
        return terms_digest(self)

    def valid_signatures(self) -> tuple[Signature, ...]:
        """Signatures of the current terms by current parties (one per institution)."""
        terms, parties = self.terms, set(self.institutions)
        seen: dict[str, Signature] = {}
        for sig in self.signatures:
            if sig.terms == terms and sig.institution in parties:
                seen.setdefault(sig.institution, sig)
        return tuple(seen.values())

    def unsigned(self) -> tuple[str, ...]:
        signed = {s.institution for s in self.valid_signatures()}
        return tuple(i for i in self.institutions if i not in signed)

    # Lifecycle (each returns a new agreement)

    def _to(self, event: Event) -> Agreement:
        return replace(self, state=transition(self.state, event))

    def submit(self) -> Agreement:
        """Send the draft out for signatures."""
        return self._to(Event.SUBMIT)

    def revise(self) -> Agreement:
        """Back to draft to change the terms; collected signatures no longer count."""
        return replace(self._to(Event.REVISE), signatures=())

    def sign(self, institution: str, signed_by: str, *, at: datetime | None = None) -> Agreement:
        """Record ``institution``'s signature by its admin ``signed_by``; the last one
        needed activates the agreement."""
        if self.state is not State.AWAITING_SIGNATURES:
            raise AgreementError(
                f"agreement `{self.id}` is {self.state.value}; only an agreement awaiting "
                "signatures can be signed"
            )
        self.party(institution)
        if institution not in self.unsigned():
            raise AgreementError(f"agreement `{self.id}`: `{institution}` has already signed")
        moment = at or datetime.now(UTC)
        signature = Signature(institution, str(signed_by), moment, self.terms)
        signed = replace(self, signatures=(*self.signatures, signature))
        return signed.activate() if not signed.unsigned() else signed

    def activate(self) -> Agreement:
        """Active once every party has signed the current terms."""
        missing = self.unsigned()
        if missing and self.state is State.AWAITING_SIGNATURES:
            raise AgreementError(
                f"agreement `{self.id}` cannot become active: waiting for the signature of "
                + ", ".join(f"`{m}`" for m in missing)
            )
        return self._to(Event.ACTIVATE)

    def suspend(self) -> Agreement:
        return self._to(Event.SUSPEND)

    def resume(self) -> Agreement:
        return self._to(Event.RESUME)

    def terminate(self) -> Agreement:
        return self._to(Event.TERMINATE)

    def state_at(self, now: datetime | None = None) -> State:
        """The state at ``now``: an active or suspended agreement past its window is expired."""
        moment = now or datetime.now(UTC)
        if self.state in (State.ACTIVE, State.SUSPENDED) and moment >= self.valid_until:
            return State.EXPIRED
        return self.state


_ADDED_TERMS = ("epsilon_per_answer", "epsilon_total", "review_window_days")


def terms_digest(agreement: Agreement) -> str:
    terms = tuple(
        (f.name, getattr(agreement, f.name))
        for f in fields(agreement)
        if f.name not in ("state", "signatures")
    )
    try:
        return _terms_digest(terms)
    except TypeError:  # a field that cannot be hashed: digest it uncached
        return _terms_digest.__wrapped__(terms)


@functools.lru_cache(maxsize=256)
def _terms_digest(fields_: tuple[tuple[str, Any], ...]) -> str:
    """The digest of the terms, remembered: every request reads it (who signed what)."""
    terms = dict(fields_)
    data = json.loads(json.dumps({k: _plain(v) for k, v in terms.items()}, default=str))
    # Terms added after agreements were signed count only when they differ from their
    # defaults, so that the digest (what parties signed) of existing agreements stays the
    # same: the privacy budget (issue 13).
    disclosure = data.get("disclosure") or {}
    for name in _ADDED_TERMS:
        if disclosure.get(name) == getattr(DEFAULT_DISCLOSURE, name):
            disclosure.pop(name, None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _plain(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return value


def contributing_institutions(agreement: Agreement) -> tuple[str, ...]:
    """Contributor parties that have signed the current terms: only their data is pooled."""
    signed = {s.institution for s in agreement.valid_signatures()}
    return tuple(
        p.institution for p in agreement.parties if p.contributor and p.institution in signed
    )


def pool_versions(
    agreement: Agreement, released: Mapping[str, Iterable[str]]
) -> dict[str, tuple[str, ...]]:
    """Of the released dataset versions per institution, those that enter the pool."""
    return {i: tuple(released.get(i, ())) for i in contributing_institutions(agreement)}


# Rules -------------------------------------------------------------------------------------

RESEARCHER = "role:researcher"
PARTY_ADMIN = "role:party_admin"


def data_actions(disclosure: Disclosure) -> str:
    actions = ["query"]
    if disclosure.allow_synthetic:
        actions.append("synthetic")
    if disclosure.allow_model_fitting:
        actions.append("fit")
    return "|".join(actions)


def compile_rules(
    agreement: Agreement,
    now: datetime | None = None,
    *,
    party_admins: Mapping[str, Iterable[str]] | None = None,
) -> list[Rule]:
    """The Casbin rules of the agreement's domain, for :func:`replace_domain_rules`.

    Always: each party's admins (``party_admins`` by institution, plus whoever signed) may
    read the agreement, and sign it while it awaits signatures. When active: each named
    researcher may query (and, if allowed, get synthetic rows and fit models on) the
    covered tables and columns, and read the agreement, within the validity window. Draft,
    awaiting, suspended and terminated agreements grant no data access; neither does one
    already expired at ``now`` (when given) - and one that expires later stops granting at
    enforce time through the window.
    """
    domain, obj = agreement.domain, agreement.object
    admins: dict[str, None] = {}
    for sig in agreement.signatures:
        admins.setdefault(user_subject(sig.signed_by), None)
    for institution, users in (party_admins or {}).items():
        agreement.party(institution)  # refuse admins of a non-party
        for user in users:
            admins.setdefault(user_subject(user), None)
    meta_actions = "read|sign" if agreement.state is State.AWAITING_SIGNATURES else "read"
    rules: list[Rule] = [("p", PARTY_ADMIN, domain, obj, meta_actions, "any", ALWAYS)]
    rules += [("g", admin, PARTY_ADMIN, domain) for admin in admins]

    state = agreement.state_at(now) if now is not None else agreement.state
    if state is not State.ACTIVE:
        return rules
    window = make_window(agreement.valid_from, agreement.valid_until)
    actions = data_actions(agreement.disclosure)
    rules.append(("p", RESEARCHER, domain, obj, "read", "any", window))
    for cover in agreement.tables:
        base = f"data/{cover.table}"
        rules.append(("p", RESEARCHER, domain, base, actions, "any", window))
        columns = ("*",) if cover.columns is None else cover.columns
        rules += [("p", RESEARCHER, domain, f"{base}/{c}", actions, "any", window) for c in columns]
    rules += [("g", user_subject(r), RESEARCHER, domain) for r in agreement.researchers]
    return rules


# Loading -----------------------------------------------------------------------------------

_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{1,62}$")
_CODE_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TOP_REQUIRED = {"id", "title", "purpose", "parties", "tables", "valid_from", "valid_until"}
_TOP_KEYS = _TOP_REQUIRED | {"researchers", "disclosure", "description"}
_PARTY_ROLES = {"contributor", "recipient"}
_DISCLOSURE_INT = ("k", "min_institutions", "rounding_base", "dominance_n", "review_window_days")
_DISCLOSURE_BOOL = ("allow_synthetic", "allow_model_fitting")
_DISCLOSURE_FLOAT = ("epsilon_per_answer", "epsilon_total")
_DISCLOSURE_KEYS = (
    set(_DISCLOSURE_INT) | set(_DISCLOSURE_BOOL) | set(_DISCLOSURE_FLOAT) | {"dominance_percent"}
)


def load_agreement(
    source: str | Path,
    *,
    cdm: CommonDataModel | None = None,
    floor: Disclosure | None = DEFAULT_FLOOR,
) -> Agreement:
    """Load an agreement from YAML text or a ``.yaml`` file, and validate it.

    It is checked against the CDM (``cdm``, default the shipped one) and against the
    steward's disclosure ``floor`` (default :data:`DEFAULT_FLOOR`; None skips it).
    Raises :class:`AgreementError` naming the field at fault. The result is a draft.
    """
    where = "agreement"
    if isinstance(source, Path) or (
        "\n" not in source and source.strip().endswith((".yaml", ".yml"))
    ):
        path = Path(source)
        where = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise AgreementError(f"{path}: cannot read: {err.strerror}") from None
    else:
        text = source
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise AgreementError(f"{where}: not valid YAML: {err}") from None
    except ValueError as err:
        raise AgreementError(f"{where}: {err}") from None
    try:
        agreement = _build(raw)
    except AgreementError as err:
        raise AgreementError(f"{where}: {err.message}") from None
    validate_agreement(agreement, cdm=cdm, floor=floor)
    return agreement


def load_template(name: str, **kwargs: Any) -> Agreement:
    """A shipped template (``contracts/templates/<name>.yaml``)."""
    path = TEMPLATES / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in TEMPLATES.glob("*.yaml")))
        raise AgreementError(f"no agreement template `{name}` (templates: {known})")
    return load_agreement(path, **kwargs)


def validate_agreement(
    agreement: Agreement,
    *,
    cdm: CommonDataModel | None = None,
    floor: Disclosure | None = DEFAULT_FLOOR,
) -> None:
    """Refuse tables or columns the CDM lacks and disclosure weaker than ``floor``."""
    model = cdm or load_cdm()
    problems: list[str] = []
    for cover in agreement.tables:
        if cover.table not in model.table_names:
            problems.append(
                f"`tables.{cover.table}`: the common data model has no such table "
                f"(tables: {', '.join(model.table_names)})"
            )
            continue
        known = model.table(cover.table).column_names
        for column in cover.columns or ():
            if column not in known:
                problems.append(
                    f"`tables.{cover.table}`: no column `{column}` in the common data model "
                    f"(columns: {', '.join(known)})"
                )
    if floor is not None:
        problems += agreement.disclosure.weaker_than(floor)
    if problems:
        raise AgreementError(f"agreement `{agreement.id}`: " + "; ".join(problems))


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AgreementError(f"`{name}` must be a non-empty string, not {value!r}")
    return value.strip()


def _moment(value: Any, name: str, *, end: bool) -> datetime:
    """A date means the whole day (UTC): ``valid_until: 2027-12-31`` includes that day."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise AgreementError(f"`{name}`: a time needs a zone, e.g. 2027-12-31T23:59:59Z")
        return value.astimezone(UTC)
    if isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
        return moment + timedelta(days=1) if end else moment
    raise AgreementError(f"`{name}` must be a date (YYYY-MM-DD), not {value!r}")


def _build(raw: Any) -> Agreement:
    if not isinstance(raw, dict):
        raise AgreementError("the file must be a mapping with " + ", ".join(sorted(_TOP_REQUIRED)))
    extra = sorted(str(k) for k in raw if k not in _TOP_KEYS)
    if extra:
        raise AgreementError(
            f"unknown key(s) {', '.join(f'`{k}`' for k in extra)} "
            f"(allowed: {', '.join(sorted(_TOP_KEYS))})"
        )
    missing = sorted(_TOP_REQUIRED - set(raw))
    if missing:
        raise AgreementError(f"missing key(s) {', '.join(f'`{k}`' for k in missing)}")
    agreement_id = raw["id"]
    if not isinstance(agreement_id, str) or not _ID_RE.match(agreement_id):
        raise AgreementError(
            f"`id` must be 2-63 lower-case letters, digits, '-' or '_', not {agreement_id!r}"
        )
    valid_from = _moment(raw["valid_from"], "valid_from", end=False)
    valid_until = _moment(raw["valid_until"], "valid_until", end=True)
    if valid_until <= valid_from:
        raise AgreementError("`valid_until` must come after `valid_from`")
    return Agreement(
        id=agreement_id,
        title=_text(raw["title"], "title"),
        purpose=_purpose(raw["purpose"]),
        parties=_parties(raw["parties"]),
        tables=_tables(raw["tables"]),
        researchers=_researchers(raw.get("researchers", [])),
        valid_from=valid_from,
        valid_until=valid_until,
        disclosure=_disclosure(raw.get("disclosure", {})),
    )


def _purpose(raw: Any) -> Purpose:
    if not isinstance(raw, dict) or set(raw) != {"code", "text"}:
        raise AgreementError("`purpose` must be a mapping with exactly `code` and `text`")
    code = _text(raw["code"], "purpose.code")
    if not _CODE_RE.match(code):
        raise AgreementError(f"`purpose.code` must be lower_snake_case, not {code!r}")
    return Purpose(code, _text(raw["text"], "purpose.text"))


def _parties(raw: Any) -> tuple[Party, ...]:
    if not isinstance(raw, list) or not raw:
        raise AgreementError("`parties` must be a non-empty list of {institution, roles}")
    parties: list[Party] = []
    for i, item in enumerate(raw):
        name = f"parties[{i}]"
        if not isinstance(item, dict) or set(item) != {"institution", "roles"}:
            raise AgreementError(f"`{name}` must be a mapping with `institution` and `roles`")
        institution = _text(item["institution"], f"{name}.institution")
        roles = item["roles"]
        if isinstance(roles, str):
            roles = [roles]
        if not isinstance(roles, list) or not roles or not set(roles) <= _PARTY_ROLES:
            raise AgreementError(
                f"`{name}.roles` must list contributor and/or recipient, not {item['roles']!r}"
            )
        if institution in {p.institution for p in parties}:
            raise AgreementError(f"`{name}`: `{institution}` is listed twice")
        parties.append(Party(institution, "contributor" in roles, "recipient" in roles))
    if not any(p.contributor for p in parties):
        raise AgreementError("`parties`: at least one party must be a contributor")
    if not any(p.recipient for p in parties):
        raise AgreementError("`parties`: at least one party must be a recipient")
    return tuple(parties)


def _tables(raw: Any) -> tuple[Coverage, ...]:
    if not isinstance(raw, dict) or not raw:
        raise AgreementError(
            "`tables` must map each covered CDM table to `all` or a list of its columns"
        )
    covers = []
    for table, columns in raw.items():
        name = f"tables.{table}"
        if columns == "all":
            covers.append(Coverage(str(table)))
            continue
        if (
            not isinstance(columns, list)
            or not columns
            or not all(isinstance(c, str) for c in columns)
        ):
            raise AgreementError(f"`{name}` must be `all` or a non-empty list of column names")
        if len(set(columns)) != len(columns):
            raise AgreementError(f"`{name}` lists a column twice")
        covers.append(Coverage(str(table), tuple(columns)))
    return tuple(covers)


def _researchers(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(
        isinstance(r, str | int) and not isinstance(r, bool) for r in raw
    ):
        raise AgreementError("`researchers` must be a list of user names or ids")
    names = tuple(str(r) for r in raw)
    if len(set(names)) != len(names):
        raise AgreementError("`researchers` lists someone twice")
    return names


def _disclosure(raw: Any) -> Disclosure:
    if not isinstance(raw, dict):
        raise AgreementError("`disclosure` must be a mapping of parameters")
    extra = sorted(str(k) for k in raw if k not in _DISCLOSURE_KEYS)
    if extra:
        raise AgreementError(
            f"`disclosure`: unknown key(s) {', '.join(f'`{k}`' for k in extra)} "
            f"(allowed: {', '.join(sorted(_DISCLOSURE_KEYS))})"
        )
    values: dict[str, Any] = {}
    for key in _DISCLOSURE_INT:
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise AgreementError(
                    f"`disclosure.{key}` must be a whole number >= 1, not {value!r}"
                )
            values[key] = value
    for key in _DISCLOSURE_BOOL:
        if key in raw:
            if not isinstance(raw[key], bool):
                raise AgreementError(f"`disclosure.{key}` must be true or false, not {raw[key]!r}")
            values[key] = raw[key]
    if "dominance_percent" in raw:
        value = raw["dominance_percent"]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not 0 < value <= 100
        ):
            raise AgreementError(
                f"`disclosure.dominance_percent` must be a number in (0, 100], not {value!r}"
            )
        values["dominance_percent"] = float(value)
    for key in _DISCLOSURE_FLOAT:
        if key in raw:
            value = raw[key]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise AgreementError(f"`disclosure.{key}` must be a positive number, not {value!r}")
            values[key] = float(value)
    if values.get("epsilon_per_answer", 1.0) > values.get("epsilon_total", 20.0):
        raise AgreementError(
            "`disclosure.epsilon_per_answer` cannot be larger than `disclosure.epsilon_total`"
        )
    return Disclosure(**values)
