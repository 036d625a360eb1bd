"""Agreements: YAML loading, validation against the CDM and the floor, lifecycle, rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.agreements import (
    DEFAULT_FLOOR,
    TEMPLATES,
    Agreement,
    AgreementError,
    Disclosure,
    Event,
    State,
    compile_rules,
    contributing_institutions,
    load_agreement,
    load_template,
    pool_versions,
    transition,
)
from policies.enforcer import PolicyEngine

EXAMPLE = """\
id: study-1
title: Failure prediction
purpose:
  code: manufacturing_failure_prediction
  text: Predict failed runs.
parties:
  - institution: acme
    roles: [contributor]
  - institution: st-elsewhere
    roles: [contributor, recipient]
  - institution: uni
    roles: recipient
tables:
  batch: [lot_id, viability]
  collection: all
researchers: [alice, 42]
valid_from: 2026-01-01
valid_until: 2026-12-31
disclosure:
  k: 15
  allow_model_fitting: true
"""
JAN = datetime(2026, 1, 1, tzinfo=UTC)


def example(**changes: str) -> Agreement:
    text = EXAMPLE
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new)
    return load_agreement(text)


def active() -> Agreement:
    agreement = example().submit()
    for institution in agreement.institutions:
        agreement = agreement.sign(institution, f"admin-of-{institution}", at=JAN)
    return agreement


# Loading ----------------------------------------------------------------------------------


def test_loads_the_example() -> None:
    agreement = example()
    assert agreement.id == "study-1"
    assert agreement.domain == "agreement:study-1"
    assert agreement.state is State.DRAFT
    assert [(p.institution, p.contributor, p.recipient) for p in agreement.parties] == [
        ("acme", True, False),
        ("st-elsewhere", True, True),
        ("uni", False, True),
    ]
    assert agreement.tables[0].columns == ("lot_id", "viability")
    assert agreement.tables[1].columns is None
    assert agreement.researchers == ("alice", "42")
    assert agreement.disclosure.k == 15
    assert agreement.disclosure.min_institutions == 3  # default kept
    assert agreement.disclosure.allow_model_fitting and not agreement.disclosure.allow_synthetic
    # a date means the whole day: valid through 31 December
    assert agreement.valid_until == datetime(2027, 1, 1, tzinfo=UTC)


def test_loads_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(EXAMPLE)
    assert load_agreement(path) == load_agreement(str(path)) == example()


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("  k: 15", "  k: ten", "`disclosure.k` must be a whole number"),
        ("  k: 15", "  k: 5", "`disclosure.k` is 5; the steward's floor is 10"),
        ("  k: 15", "  dominance_percent: 95", "`disclosure.dominance_percent` is 95"),
        ("  k: 15", "  rounding_base: 1", "`disclosure.rounding_base` is 1"),
        ("  k: 15", "  kk: 15", "`disclosure`: unknown key(s) `kk`"),
        ("  batch: [lot_id, viability]", "  batches: all", "`tables.batches`: the common data"),
        ("[lot_id, viability]", "[lot_id, viabilty]", "no column `viabilty`"),
        ("valid_until: 2026-12-31", "valid_until: 2025-12-31", "`valid_until` must come after"),
        ("id: study-1", "id: Study 1", "`id` must be"),
        ("roles: recipient", "roles: [reader]", "`parties[2].roles`"),
        ("institution: uni", "institution: acme", "`parties[2]`: `acme` is listed twice"),
        ("researchers: [alice, 42]", "researchers: [alice, alice]", "`researchers` lists"),
        ("title: Failure prediction\n", "", "missing key(s) `title`"),
        ("  code: manufacturing_failure_prediction", "  code: Bad Code", "`purpose.code`"),
        ("title: Failure prediction", "title: x\ntitle: y", "duplicate key `title`"),
    ],
)
def test_errors_name_the_field(old: str, new: str, message: str) -> None:
    with pytest.raises(AgreementError) as caught:
        example(**{old: new})
    assert message in caught.value.message
    assert "Traceback" not in str(caught.value)


def test_a_path_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(EXAMPLE.replace("k: 15", "k: 0"))
    with pytest.raises(AgreementError, match=r"bad\.yaml: `disclosure\.k`"):
        load_agreement(path)


def test_a_lower_floor_admits_weaker_parameters() -> None:
    text = EXAMPLE.replace("  k: 15", "  k: 5")
    floor = Disclosure(k=5, allow_synthetic=True, allow_model_fitting=True)
    assert load_agreement(text, floor=floor).disclosure.k == 5


def test_the_floor_can_forbid_model_fitting() -> None:
    floor = Disclosure(allow_synthetic=False, allow_model_fitting=False)
    with pytest.raises(AgreementError, match="`disclosure.allow_model_fitting` is true"):
        load_agreement(EXAMPLE, floor=floor)


@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.yaml")), ids=lambda p: p.stem)
def test_templates_load_and_compile(path: Path) -> None:
    agreement = load_template(path.stem, floor=DEFAULT_FLOOR)
    assert agreement.purpose.code == path.stem
    running = agreement.submit()
    for institution in running.institutions:
        running = running.sign(institution, "admin")
    assert running.state is State.ACTIVE
    data = [r for r in compile_rules(running) if r[0] == "p" and r[3].startswith("data/")]
    assert {r[3].split("/")[1] for r in data} == {c.table for c in agreement.tables}


def test_there_are_templates_and_unknown_ones_are_named() -> None:
    assert len(list(TEMPLATES.glob("*.yaml"))) >= 3
    with pytest.raises(AgreementError, match="no agreement template `nope`"):
        load_template("nope")


# Lifecycle --------------------------------------------------------------------------------


def test_signing_activates_only_when_every_party_signed() -> None:
    agreement = example().submit()
    assert agreement.state is State.AWAITING_SIGNATURES
    agreement = agreement.sign("acme", "a1").sign("uni", "u1")
    assert agreement.state is State.AWAITING_SIGNATURES
    assert agreement.unsigned() == ("st-elsewhere",)
    with pytest.raises(AgreementError, match="waiting for the signature of `st-elsewhere`"):
        agreement.activate()
    assert agreement.sign("st-elsewhere", "s1").state is State.ACTIVE


def test_signing_is_refused_when_it_makes_no_sense() -> None:
    with pytest.raises(AgreementError, match="only an agreement awaiting signatures"):
        example().sign("acme", "a1")
    awaiting = example().submit()
    with pytest.raises(AgreementError, match="`nobody` is not a party"):
        awaiting.sign("nobody", "x")
    with pytest.raises(AgreementError, match="already signed"):
        awaiting.sign("acme", "a1").sign("acme", "a2")


def test_revising_voids_collected_signatures() -> None:
    signed = example().submit().sign("acme", "a1")
    revised = signed.revise()
    assert revised.state is State.DRAFT and revised.signatures == ()
    # a signature of older terms does not count for changed terms
    from dataclasses import replace

    changed = replace(signed, title="Other title")
    assert changed.unsigned() == changed.institutions


def test_transition_table_refuses_unknown_moves() -> None:
    assert transition("draft", "submit") is State.AWAITING_SIGNATURES
    assert transition(State.SUSPENDED, Event.RESUME) is State.ACTIVE
    with pytest.raises(AgreementError, match="cannot resume .*it can: submit, terminate"):
        transition(State.DRAFT, Event.RESUME)
    with pytest.raises(AgreementError, match="it is final"):
        transition(State.TERMINATED, Event.RESUME)


def test_suspend_resume_terminate_and_expiry() -> None:
    agreement = active()
    assert agreement.suspend().resume().state is State.ACTIVE
    assert agreement.terminate().state is State.TERMINATED
    assert agreement.state_at(datetime(2026, 12, 31, 23, tzinfo=UTC)) is State.ACTIVE
    assert agreement.state_at(datetime(2027, 1, 1, tzinfo=UTC)) is State.EXPIRED
    assert agreement.suspend().state_at(datetime(2027, 2, 1, tzinfo=UTC)) is State.EXPIRED
    assert agreement.terminate().state_at(datetime(2027, 2, 1, tzinfo=UTC)) is State.TERMINATED


def test_only_signed_contributors_enter_the_pool() -> None:
    agreement = example().submit().sign("acme", "a1").sign("uni", "u1")
    assert contributing_institutions(agreement) == ("acme",)  # uni only receives
    released = {"acme": ["v1", "v2"], "st-elsewhere": ["v9"]}
    assert pool_versions(agreement, released) == {"acme": ("v1", "v2")}
    full = agreement.sign("st-elsewhere", "s1")
    assert pool_versions(full, released) == {"acme": ("v1", "v2"), "st-elsewhere": ("v9",)}


OPS = st.lists(
    st.one_of(
        st.sampled_from(["submit", "revise", "activate", "suspend", "resume", "terminate"]),
        st.tuples(st.just("sign"), st.sampled_from(["acme", "st-elsewhere", "uni", "x"])),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_never_active_without_every_signature(ops: list[object]) -> None:
    agreement = example()
    for op in ops:
        try:
            if isinstance(op, tuple):
                agreement = agreement.sign(op[1], "someone")
            else:
                agreement = getattr(agreement, str(op))()
        except AgreementError:
            continue
        if agreement.state in (State.ACTIVE, State.SUSPENDED):
            assert agreement.unsigned() == ()
            assert set(contributing_institutions(agreement)) == {"acme", "st-elsewhere"}
        data = [r for r in compile_rules(agreement) if r[0] == "p" and r[3].startswith("data/")]
        assert bool(data) == (agreement.state is State.ACTIVE)


# Rules ------------------------------------------------------------------------------------


def engine_at(agreement: Agreement, when: list[datetime], **kwargs: object) -> PolicyEngine:
    return PolicyEngine(compile_rules(agreement, **kwargs), clock=lambda: when[0].timestamp())


def test_active_agreement_grants_named_researchers_in_its_domain() -> None:
    now = [datetime(2026, 6, 1, tzinfo=UTC)]
    policy = engine_at(active(), now)
    dom = "agreement:study-1"
    assert policy.allowed("user:alice", "query", "data/batch/viability", domain=dom)
    assert policy.allowed("user:42", "fit", "data/collection/cd3_yield", domain=dom)
    assert policy.allowed("user:alice", "query", "data/batch", domain=dom)
    assert policy.allowed("user:alice", "read", "agreements/study-1", domain=dom)
    # not a covered column, not an allowed action, not a named researcher, not this domain
    assert not policy.allowed("user:alice", "query", "data/batch/vcn", domain=dom)
    assert not policy.allowed("user:alice", "synthetic", "data/batch/viability", domain=dom)
    assert not policy.allowed("user:bob", "query", "data/batch/viability", domain=dom)
    assert not policy.allowed("user:alice", "query", "data/batch/viability")
    assert not policy.allowed("user:alice", "query", "data/batch", domain="agreement:other")
    assert not policy.allowed("user:alice", "query", "data/episode", domain=dom)


def test_expiry_takes_effect_at_enforce_time_without_recompiling() -> None:
    now = [datetime(2026, 12, 31, 23, 59, tzinfo=UTC)]
    policy = engine_at(active(), now)
    args = ("user:alice", "query", "data/batch/viability")
    assert policy.allowed(*args, domain="agreement:study-1")  # cached now
    now[0] += timedelta(minutes=1)
    assert not policy.allowed(*args, domain="agreement:study-1")
    now[0] = datetime(2025, 12, 31, 23, 59, tzinfo=UTC)  # and not before it starts
    assert not policy.allowed(*args, domain="agreement:study-1")


@pytest.mark.parametrize("change", ["suspend", "terminate"])
def test_suspended_or_terminated_compile_to_no_data_access(change: str) -> None:
    agreement = getattr(active(), change)()
    rules = compile_rules(agreement)
    assert not [r for r in rules if "data/" in r[3] or r[2] == "role:researcher"]
    policy = PolicyEngine(rules)
    assert not policy.allowed("user:alice", "query", "data/batch", domain=agreement.domain)
    # the signatories keep reading the agreement itself
    assert policy.allowed(
        "user:admin-of-acme", "read", "agreements/study-1", domain=agreement.domain
    )


def test_compiled_with_now_past_expiry_grants_nothing() -> None:
    rules = compile_rules(active(), now=datetime(2027, 3, 1, tzinfo=UTC))
    assert not [r for r in rules if r[0] == "p" and r[3].startswith("data/")]


def test_party_admins_read_and_sign_while_awaiting() -> None:
    agreement = example().submit()
    rules = compile_rules(agreement, party_admins={"uni": ["7"]})
    policy = PolicyEngine(rules)
    assert policy.allowed("user:7", "sign", "agreements/study-1", domain=agreement.domain)
    assert not policy.allowed("user:8", "read", "agreements/study-1", domain=agreement.domain)
    signed_rules = compile_rules(active(), party_admins={"uni": ["7"]})
    assert not PolicyEngine(signed_rules).allowed(
        "user:7", "sign", "agreements/study-1", domain=agreement.domain
    )
    with pytest.raises(AgreementError, match="`nobody` is not a party"):
        compile_rules(agreement, party_admins={"nobody": ["1"]})


def test_whole_table_coverage_reaches_every_column_only_of_that_table() -> None:
    policy = engine_at(active(), [datetime(2026, 6, 1, tzinfo=UTC)])
    dom = "agreement:study-1"
    assert policy.allowed("user:alice", "query", "data/collection/notes", domain=dom)
    assert not policy.allowed("user:alice", "query", "data/collectionx/notes", domain=dom)
