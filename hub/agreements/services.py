"""Agreements in the hub, callable without a request: create and edit drafts, apply YAML,
sign, move through the lifecycle, and keep the compiled policy rules in step.

Every change is one transaction: the agreement row, its rules
(:func:`policies.store.replace_domain_rules` with :func:`contracts.agreements.compile_rules`)
and an audit entry land together or not at all. The rules are derived from the database,
never edited: named researchers become ``user:<id>`` subjects while they are active
researchers of a recipient institution, and each party's current contributor admins hold
its party-admin role, so moving a user between institutions or roles and recompiling
(:func:`recompile_all`) changes what they can reach.

:func:`may_query` and :func:`pool_versions` are what the query gateway asks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, contains_eager

from contracts.agreements import RESEARCHER as AGREEMENT_RESEARCHER
from contracts.agreements import (
    TEMPLATES,
    Agreement,
    AgreementError,
    Event,
    Signature,
    State,
    compile_rules,
    contributing_institutions,
    load_agreement,
)
from hub import events
from hub.accounts.models import Institution, User
from hub.accounts.services import may
from hub.agreements.models import AgreementRecord, AgreementSignature
from hub.audit.services import record
from hub.db import Database, utcnow
from hub.errors import BadRequest, Conflict, Forbidden, NotFound, without_repeats
from hub.ingest.models import DatasetVersion, VersionState
from policies import store
from policies.enforcer import PolicyEngine, Rule, parse_window, user_subject
from policies.store import SyncedPolicy

EVENTS = tuple(e.value for e in Event)
STEWARD_EVENTS = ("submit", "revise", "activate", "suspend", "resume", "terminate")


class InvalidAgreement(BadRequest):
    code = "invalid_agreement"


# Reading -----------------------------------------------------------------------------------


def parse(text: str) -> Agreement:
    """Validate agreement YAML; the error names the field to fix.

    The text is always read as YAML, never as a path (a one-line paste ending in `.yaml`
    must not open a file on the server).
    """
    if not text.strip():
        raise InvalidAgreement("paste the agreement's YAML (or start from a template).")
    try:
        return load_agreement(text if "\n" in text else text + "\n")
    except AgreementError as err:
        raise InvalidAgreement(without_repeats(err.message)) from None


def templates() -> list[str]:
    """The names of the shipped templates (``contracts/templates``)."""
    return sorted(p.stem for p in TEMPLATES.glob("*.yaml"))


def template_text(name: str) -> str:
    if name not in templates():
        raise NotFound(f"no agreement template {name!r} (templates: {', '.join(templates())}).")
    return (TEMPLATES / f"{name}.yaml").read_text(encoding="utf-8")


def get(session: Session, slug: str) -> AgreementRecord:
    found = session.scalar(select(AgreementRecord).where(AgreementRecord.slug == slug))
    if found is None:
        raise NotFound(f"no agreement {slug!r}.", cli_hint="`cleanroom agreement list` shows them.")
    return found


def all_records(session: Session) -> list[AgreementRecord]:
    return list(session.scalars(select(AgreementRecord).order_by(AgreementRecord.slug)))


@functools.lru_cache(maxsize=256)
def _parsed_terms(terms: str) -> Agreement:
    """The terms' YAML parsed and validated (a pure function of the text; the gateway asks
    for it on every request, and parsing costs more than the rest of the lookup)."""
    return load_agreement(terms, floor=None)


def contract_of(stored: AgreementRecord) -> Agreement:
    """The stored agreement as :class:`contracts.agreements.Agreement`, with its state and
    signatures (signers as user ids). Read without the disclosure floor: it was checked
    when the terms were written."""
    try:
        agreement = _parsed_terms(stored.terms)
    except AgreementError as err:  # the stored YAML no longer loads (e.g. a CDM change)
        raise InvalidAgreement(f"stored agreement {stored.slug!r}: {err.message}") from None
    signatures = tuple(
        Signature(s.institution.slug, str(s.signed_by_id), s.signed_at, s.terms)
        for s in stored.signatures
    )
    return replace(agreement, state=State(stored.state), signatures=signatures)


def state_now(stored: AgreementRecord, now: datetime | None = None) -> State:
    """The state at ``now``, expiry included."""
    return contract_of(stored).state_at(now or datetime.now(UTC))


# Rules -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subjects:
    """Who the agreement's rules name, as the hub's users stand now."""

    party_admins: dict[str, list[User]]
    researchers: list[User]
    unmatched: list[str]  # named researchers who reach nothing, each with the reason


def subjects(session: Session, agreement: Agreement) -> Subjects:
    insts = {
        i.slug: i
        for i in session.scalars(
            select(Institution).where(Institution.slug.in_(agreement.institutions))
        )
    }
    admins: dict[str, list[User]] = {}
    for slug, inst in insts.items():
        # A party's admins: its users whom the policy lets sign agreements for it.
        admins[slug] = [
            u
            for u in session.scalars(
                select(User).where(User.institution_id == inst.id).order_by(User.id)
            )
            if may(u, "sign", "agreements")
        ]
    recipients = {
        insts[p.institution].id for p in agreement.parties if p.recipient and p.institution in insts
    }
    named = {
        u.username: u
        for u in session.scalars(select(User).where(User.username.in_(agreement.researchers)))
    }
    researchers, unmatched = [], []
    for name in agreement.researchers:
        user = named.get(name)
        if user is None:
            unmatched.append(f"{name}: no such user")
        elif not user.is_active:
            unmatched.append(f"{name}: account disabled")
        elif not may(user, "query", "sandbox"):  # who may be named: who may use the sandbox
            unmatched.append(f"{name}: is a {user.role}, not a researcher")
        elif user.institution_id not in recipients:
            where = user.institution.slug if user.institution else "no institution"
            unmatched.append(f"{name}: belongs to {where}, not to a recipient party")
        else:
            researchers.append(user)
    return Subjects(admins, researchers, unmatched)


def rules_for(session: Session, agreement: Agreement) -> list[Rule]:
    """The agreement's rules as the database stands: researchers and admins as user ids."""
    who = subjects(session, agreement)
    # Signers are left out: a signer who moved away is no longer the party's admin.
    compiled = replace(
        agreement,
        signatures=(),
        researchers=tuple(str(u.id) for u in who.researchers),
    )
    admins = {slug: [str(u.id) for u in users] for slug, users in who.party_admins.items()}
    return compile_rules(compiled, party_admins=admins)


def _sync(session: Session, stored: AgreementRecord, agreement: Agreement) -> None:
    """Write the agreement's state and digest and replace its rules (caller's transaction)."""
    stored.state = agreement.state.value
    stored.digest = agreement.terms
    stored.title = agreement.title
    session.flush()
    store.replace_domain_rules(session, agreement.domain, rules_for(session, agreement))


def recompile_all(session: Session) -> int:
    """Recompile every agreement's rules (after users changed institution, role or status)."""
    records = all_records(session)
    for stored in records:
        agreement = contract_of(stored)
        store.replace_domain_rules(session, agreement.domain, rules_for(session, agreement))
    return len(records)


@events.on(events.USERS_CHANGED)
def _on_users_changed(session: Session) -> None:
    """Agreement rules name users and derive from their role and institution."""
    recompile_all(session)


# Writing -----------------------------------------------------------------------------------


def _check_parties(session: Session, agreement: Agreement) -> None:
    known = set(
        session.scalars(
            select(Institution.slug).where(Institution.slug.in_(agreement.institutions))
        )
    )
    missing = [i for i in agreement.institutions if i not in known]
    if missing:
        raise InvalidAgreement(
            f"agreement `{agreement.id}`: no institution "
            + ", ".join(f"`{m}`" for m in missing)
            + " in the hub (the steward adds institutions first).",
            cli_hint="`cleanroom institution list` shows them.",
        )
    who = subjects(session, agreement)
    if who.unmatched:
        raise InvalidAgreement(
            f"agreement `{agreement.id}`: `researchers` must name active researchers of a "
            "recipient party: " + "; ".join(who.unmatched)
        )


def create(session: Session, text: str, *, actor: str) -> AgreementRecord:
    """Store a new draft from YAML."""
    agreement = parse(text)
    if session.scalar(select(AgreementRecord.id).where(AgreementRecord.slug == agreement.id)):
        raise Conflict(
            f"agreement `{agreement.id}` already exists; edit it, or choose another `id`."
        )
    _check_parties(session, agreement)
    stored = AgreementRecord(
        slug=agreement.id,
        title=agreement.title,
        terms=text,
        digest=agreement.terms,
        state=State.DRAFT.value,
        created_by=actor,
    )
    session.add(stored)
    _sync(session, stored, agreement)
    record(
        session,
        actor=actor,
        action="agreement.create",
        target=f"agreement:{agreement.id}",
        detail={"terms": agreement.terms, "parties": list(agreement.institutions)},
    )
    return stored


def update_draft(session: Session, stored: AgreementRecord, text: str, *, actor: str) -> bool:
    """Replace a draft's terms; False when they are unchanged."""
    if stored.state != State.DRAFT:
        raise Conflict(
            f"agreement `{stored.slug}` is {stored.state}: only a draft can be edited "
            "(revise an agreement awaiting signatures back to draft first)."
        )
    agreement = parse(text)
    if agreement.id != stored.slug:
        raise InvalidAgreement(
            f"`id` is `{agreement.id}` but this is agreement `{stored.slug}`; an agreement's "
            "id cannot change (create a new one instead)."
        )
    if agreement.terms == stored.digest:
        return False
    _check_parties(session, agreement)
    stored.terms = text
    _sync(session, stored, agreement)
    record(
        session,
        actor=actor,
        action="agreement.edit",
        target=f"agreement:{stored.slug}",
        detail={"terms": agreement.terms},
    )
    return True


def apply(
    session: Session, text: str, *, actor: str, submit: bool = False
) -> tuple[AgreementRecord, str]:
    """Create or update an agreement from YAML, idempotently.

    Returns the record and what happened: ``created``, ``updated``, ``submitted`` or
    ``unchanged``. Terms of an agreement past its draft are never changed here: the steward
    revises or terminates it first, so no signature is silently invalidated.
    """
    agreement = parse(text)
    stored = session.scalar(select(AgreementRecord).where(AgreementRecord.slug == agreement.id))
    what = "unchanged"
    if stored is None:
        stored, what = create(session, text, actor=actor), "created"
    elif agreement.terms != stored.digest:
        if stored.state != State.DRAFT:
            raise Conflict(
                f"agreement `{stored.slug}` is {stored.state.replace('_', ' ')} and its terms "
                "differ from the file: revise an agreement awaiting signatures back to draft "
                "first (its signatures are dropped); an active one must be terminated and "
                "replaced.",
                cli_hint=f"`cleanroom agreement revise {stored.slug}` returns it to draft.",
            )
        update_draft(session, stored, text, actor=actor)
        what = "updated"
    if submit and stored.state == State.DRAFT:
        transition(session, stored, "submit", actor=actor)
        what = "submitted" if what == "unchanged" else f"{what} and submitted"
    return stored, what


def transition(session: Session, stored: AgreementRecord, event: str, *, actor: str) -> State:
    """Move the agreement (submit, revise, activate, suspend, resume, terminate)."""
    if event not in EVENTS:
        raise BadRequest(f"unknown agreement action {event!r} (actions: {', '.join(EVENTS)}).")
    before = contract_of(stored)
    try:
        after = getattr(before, event)()
    except AgreementError as err:
        raise Conflict(without_repeats(f"agreement `{stored.slug}`: {err.message}")) from None
    if event == "revise":
        stored.signatures.clear()  # delete-orphan: the rows go with the old terms
    _sync(session, stored, after)
    record(
        session,
        actor=actor,
        action=f"agreement.{event}",
        target=f"agreement:{stored.slug}",
        detail={"from": before.state.value, "to": after.state.value, "terms": after.terms},
    )
    return after.state


def sign(session: Session, stored: AgreementRecord, user: User, *, actor: str) -> State:
    """The user's institution signs the current terms; the last signature activates."""
    if user.institution is None or not may(user, "sign", "agreements"):
        raise Forbidden("only an institution's contributor admin signs agreements for it.")
    before = contract_of(stored)
    institution = user.institution.slug
    if institution not in before.institutions:
        raise Forbidden(f"{institution} is not a party to agreement `{stored.slug}`.")
    at = utcnow()
    try:
        after = before.sign(institution, str(user.id), at=at)
    except AgreementError as err:
        raise Conflict(err.message) from None
    session.add(
        AgreementSignature(
            agreement=stored,
            institution_id=user.institution_id,
            signed_by_id=user.id,
            signed_at=at,
            terms=before.terms,
        )
    )
    _sync(session, stored, after)
    record(
        session,
        actor=actor,
        action="agreement.sign",
        target=f"agreement:{stored.slug}",
        detail={"institution": institution, "terms": before.terms},
    )
    if after.state is State.ACTIVE:
        record(
            session,
            actor="system",
            action="agreement.activate",
            target=f"agreement:{stored.slug}",
            detail={
                "from": before.state.value,
                "to": after.state.value,
                "reason": "every party has signed",
                "terms": after.terms,
            },
        )
    return after.state


# What the gateway asks ---------------------------------------------------------------------


_process_policies: dict[int, SyncedPolicy] = {}


def process_policy(database: Database) -> SyncedPolicy:
    """The process's :class:`SyncedPolicy` on ``database`` (workers and CLI; the web app
    keeps its own in ``app.extensions``). It re-reads the version before each decision."""
    policies = _process_policies
    key = id(database.engine)
    if key not in policies:
        policies[key] = SyncedPolicy(database.engine)
    return policies[key]


@dataclass(frozen=True)
class Queryable:
    """An agreement ``user`` may query now, with the tables they may query under it."""

    stored: AgreementRecord
    agreement: Agreement
    tables: list[str]


def queryable(session: Session, policy: SyncedPolicy, user: User) -> list[Queryable]:
    """The agreements under which ``user`` may query at least one table now, by slug (the
    sandbox's agreement list, the release form and the notebook's token all ask this)."""
    found = []
    for stored in all_records(session):
        agreement = contract_of(stored)
        tables = [
            c.table
            for c in agreement.tables
            if may_query(policy, user, stored.slug, c.table, refresh=False)
        ]
        if tables:
            found.append(Queryable(stored, agreement, tables))
    return found


def may_query(
    policy: SyncedPolicy,
    user: User,
    agreement_slug: str,
    table: str,
    column: str | None = None,
    *,
    action: str = "query",
    refresh: bool = True,
) -> bool:
    """May ``user`` run ``action`` (query, synthetic, fit) on the table (or one column)
    under the agreement, as the database and the clock say now?"""
    if not user.is_active:
        return False
    obj = f"data/{table}" if column is None else f"data/{table}/{column}"
    return policy.allowed(
        user_subject(user.id), action, obj, domain=f"agreement:{agreement_slug}", refresh=refresh
    )


def in_force(policy: SyncedPolicy | PolicyEngine, agreement_slug: str, table: str) -> bool:
    """Does the agreement grant access to ``table``'s pooled data now (active, within its
    validity window, covering the table)? Asked of the policy as the database holds it (a
    :class:`SyncedPolicy` refreshes; a job reads the rules afresh): a suspension committed
    by any process counts at once. (The agreement's researcher role holds ``query`` on the
    table exactly then.)"""
    return policy.allowed(
        AGREEMENT_RESEARCHER, "query", f"data/{table}", domain=f"agreement:{agreement_slug}"
    )


def pool_versions(
    session: Session,
    stored: AgreementRecord,
    table: str,
    *,
    now: datetime | None = None,
    include_synthetic_only: bool = False,
    agreement: Agreement | None = None,
    linking: bool = False,
) -> list[DatasetVersion]:
    """The released versions of ``table`` that the agreement pools: those of contributor
    parties that signed the current terms, only while the agreement is active. Versions
    their contributor shares as synthetic only are left out of these real-data views unless
    ``include_synthetic_only`` (the synthesis of the agreement's pooled table asks).
    ``agreement`` is ``contract_of(stored)`` when the caller already has it. ``linking``:
    the table is read only to link other tables' rows to their patient (the gateway's
    privacy unit), never shown, so it need not be covered."""
    return pooled(
        session,
        stored,
        () if linking else (table,),
        linking=(table,) if linking else (),
        now=now,
        include_synthetic_only=include_synthetic_only,
        agreement=agreement,
    ).get(table, [])


def pooled(
    session: Session,
    stored: AgreementRecord,
    tables: Sequence[str],
    *,
    linking: Sequence[str] = (),
    now: datetime | None = None,
    include_synthetic_only: bool = False,
    agreement: Agreement | None = None,
) -> dict[str, list[DatasetVersion]]:
    """:func:`pool_versions` of several tables in one query, by table: ``tables`` only
    where the agreement covers them, ``linking`` (read only to link rows to patients)
    whether or not it does."""
    agreement = agreement or contract_of(stored)
    if agreement.state_at(now or datetime.now(UTC)) is not State.ACTIVE:
        return {}
    covered = {c.table for c in agreement.tables}
    wanted = {t for t in tables if t in covered} | set(linking)
    slugs = contributing_institutions(agreement)
    if not slugs or not wanted:
        return {}
    found: dict[str, list[DatasetVersion]] = {}
    for version in session.scalars(
        select(DatasetVersion)
        .join(Institution, DatasetVersion.institution_id == Institution.id)
        .where(
            Institution.slug.in_(slugs),
            DatasetVersion.cdm_table.in_(sorted(wanted)),
            DatasetVersion.state == VersionState.RELEASED,
            DatasetVersion.pool_key != "",
            *(() if include_synthetic_only else (DatasetVersion.synthetic_only.is_(False),)),
        )
        .options(contains_eager(DatasetVersion.institution))
        .order_by(DatasetVersion.institution_id, DatasetVersion.version)
    ):
        found.setdefault(version.cdm_table, []).append(version)
    return found


def agreements_of_institution(
    session: Session, institution: Institution
) -> list[tuple[AgreementRecord, Agreement]]:
    """Agreements that include the institution's data: it is a contributor party and its
    signature of the terms stands (whatever the agreement's state now)."""
    found = []
    for stored in all_records(session):
        agreement = contract_of(stored)
        if institution.slug in contributing_institutions(agreement):
            found.append((stored, agreement))
    return found


def readable(
    policy: SyncedPolicy, user: User, records: Sequence[AgreementRecord]
) -> list[AgreementRecord]:
    """The agreements the user may read now (named researcher or party admin)."""
    subject = user_subject(user.id)
    return [
        r
        for r in records
        if policy.allowed(
            subject, "read", f"agreements/{r.slug}", domain=f"agreement:{r.slug}", refresh=False
        )
    ]


# Deleting a draft --------------------------------------------------------------------------


def ever_sent(session: Session, stored: AgreementRecord) -> bool:
    """Whether the agreement ever left draft (sent for signatures, signed or activated):
    then its history binds the parties, and it is terminated, never deleted."""
    from hub.audit.models import AuditEntry

    found = session.scalar(
        select(AuditEntry.id)
        .where(
            AuditEntry.target == f"agreement:{stored.slug}",
            AuditEntry.action.in_(("agreement.submit", "agreement.sign", "agreement.activate")),
        )
        .limit(1)
    )
    return found is not None or bool(stored.signatures)


def may_delete(session: Session, stored: AgreementRecord) -> bool:
    return stored.state == State.DRAFT and not ever_sent(session, stored)


def delete_draft(session: Session, stored: AgreementRecord, *, actor: str) -> None:
    """Delete a draft that was never sent for signatures; the ledger keeps its terms'
    digest. Any other agreement is terminated instead (its history binds the parties)."""
    if stored.state != State.DRAFT:
        raise Conflict(
            f"agreement `{stored.slug}` is {stored.state.replace('_', ' ')}: only a draft "
            "can be deleted; terminate it instead."
        )
    if ever_sent(session, stored):
        raise Conflict(
            f"agreement `{stored.slug}` was sent for signatures before: its history stays; "
            "terminate it instead of deleting it."
        )
    domain = f"agreement:{stored.slug}"
    store.replace_domain_rules(session, domain, [])
    record(
        session,
        actor=actor,
        action="agreement.delete",
        target=domain,
        detail={"terms": stored.digest, "title": stored.title, "state": stored.state},
    )
    session.delete(stored)
    session.flush()


# The compiled policy in words --------------------------------------------------------------

_ACTION_WORDS = {
    "query": "query",
    "synthetic": "download synthetic rows of",
    "fit": "fit models on",
    "read": "read",
    "sign": "sign",
}


@dataclass(frozen=True)
class Grant:
    """One thing the compiled rules allow, said in words (who, as what, may do what)."""

    who: str  # "Rosa Diaz (rdiaz)"
    institution: str
    role: str  # "researcher" / "party admin"
    actions: str  # "query, fit models on"
    what: str  # "batch (all columns)" / "the agreement's terms"
    window: str  # "2026-01-01 to 2027-12-31" / "always"


def window_words(window: str) -> str:
    start, end = parse_window(window)
    if start == -math.inf and end == math.inf:
        return "at any time"
    parts = []
    if start != -math.inf:
        parts.append(f"from {datetime.fromtimestamp(start, UTC).strftime('%Y-%m-%d')}")
    if end != math.inf:
        until = datetime.fromtimestamp(end, UTC)
        if (until.hour, until.minute, until.second) == (0, 0, 0):  # a whole last day
            last = (until - timedelta(days=1)).strftime("%Y-%m-%d")
            parts.append(f"to the end of {last}")
        else:
            parts.append(f"until {until.strftime('%Y-%m-%d %H:%M')} UTC")
    return " ".join(parts)


def _person(user: User | None, subject: str) -> tuple[str, str]:
    if user is None:
        return (f"a removed account ({subject.removeprefix('user:')})", "—")
    return (
        user.display_name or user.username,
        user.institution.name if user.institution else "no institution",
    )


def grants(session: Session, rules: Sequence[Rule]) -> list[Grant]:
    """The agreement's compiled rules as sentences' parts: users by name, tables and
    columns by name, windows as dates. Raw rules stay for the advanced view."""
    policies = [r for r in rules if r[0] == "p"]
    members: dict[str, list[str]] = {}
    for r in rules:
        if r[0] == "g":
            members.setdefault(r[2], []).append(r[1])
    ids = [
        int(s.removeprefix("user:"))
        for subs in members.values()
        for s in subs
        if s.removeprefix("user:").isdigit()
    ]
    users = {u.id: u for u in session.scalars(select(User).where(User.id.in_(ids)))} if ids else {}
    by_role: dict[str, dict[tuple[str, str], list[str]]] = {}
    for p in policies:
        role, obj, actions, window = p[1], p[3], p[4], p[6] if len(p) > 6 else ""
        if obj.startswith("agreements/"):
            what = "the agreement's terms"
        elif obj.startswith("data/"):
            parts = obj.removeprefix("data/").split("/")
            if len(parts) == 1:
                continue  # the table itself; its columns say what is reachable
            what = parts[0] + (" (all columns)" if parts[1] == "*" else f".{parts[1]}")
        else:
            what = obj
        by_role.setdefault(role, {}).setdefault((actions, window), []).append(what)
    out: list[Grant] = []
    for role, groups in by_role.items():
        role_words = role.removeprefix("role:").replace("_", " ")
        for subject in members.get(role, []):
            uid = subject.removeprefix("user:")
            who, inst = _person(users.get(int(uid)) if uid.isdigit() else None, subject)
            for (actions, window), objects in groups.items():
                out.append(
                    Grant(
                        who=who,
                        institution=inst,
                        role=role_words,
                        actions=actions_words(actions),
                        what=_objects_words(objects),
                        window=window_words(window),
                    )
                )
    return out


def _objects_words(objects: list[str]) -> str:
    """ "batch.lot_id, batch.viability" -> "batch (lot_id, viability)"."""
    tables: dict[str, list[str]] = {}
    plain: list[str] = []
    for o in objects:
        table, dot, column = o.partition(".")
        if dot and " " not in table:
            tables.setdefault(table, []).append(column)
        else:
            plain.append(o)
    return "; ".join(plain + [f"{t} ({', '.join(cols)})" for t, cols in tables.items()])


def actions_words(actions: str) -> str:
    """``query|fit`` -> "query, fit models on"."""
    words = [_ACTION_WORDS.get(a, a) for a in actions.split("|")]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def object_words(obj: str) -> str:
    """A rule's object in words: ``data/batch/viability`` -> "batch.viability"."""
    if obj.startswith("agreements/"):
        return "the agreement's terms"
    if obj.startswith("data/"):
        parts = obj.removeprefix("data/").split("/")
        if len(parts) == 1:
            return f"table {parts[0]}"
        return f"{parts[0]} (all columns)" if parts[1] == "*" else f"{parts[0]}.{parts[1]}"
    return obj
