"""PolicyEngine: the partitioned, cached engine decides exactly as one plain enforcer."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import policies
from policies.enforcer import PolicyEngine, global_rules, new_enforcer
from policies.explorer import reachable, who_can

W_OPEN = "2026-01-01T00:00:00Z/2027-01-01T00:00:00Z"
W_PAST = "2020-01-01T00:00:00Z/2021-01-01T00:00:00Z"
NOW = 1_780_000_000.0  # 2026-05-28

RULES = [
    ("p", "role:researcher", "agreement:a", "data/batch", "query|fit", "any", W_OPEN),
    ("p", "role:researcher", "agreement:a", "data/batch/*", "query|fit", "any", W_OPEN),
    ("p", "role:researcher", "agreement:b", "data/episode/age", "query", "any", W_PAST),
    ("p", "role:party_admin", "agreement:a", "agreements/a", "read", "any", "*"),
    ("g", "user:1", "role:researcher", "agreement:a"),
    ("g", "user:2", "role:researcher", "agreement:b"),
    ("g", "user:3", "role:party_admin", "agreement:a"),
    ("g", "user:9", "role:steward", "*"),
]

subjects = st.sampled_from(
    [
        "user:1",
        "user:2",
        "user:3",
        "user:9",
        "role:steward",
        "role:researcher",
        "role:member",
        "role:contributor",
        "role:party_admin",
        "user:404",
    ]
)
domains = st.sampled_from(["*", "agreement:a", "agreement:b", "agreement:zzz"])
objects = st.sampled_from(
    [
        "data/batch",
        "data/batch/vcn",
        "data/episode/age",
        "agreements/a",
        "admin/users",
        "jobs/7",
        "portal",
        "datasets/3",
        "account/tokens/2",
        "data",
        "data/batchx",
    ]
)
actions = st.sampled_from(["query", "fit", "read", "write", "revoke", "synthetic", "upload"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(subjects, domains, objects, actions, st.booleans()), min_size=1))
def test_engine_matches_a_plain_enforcer(requests: list[tuple[str, str, str, str, bool]]) -> None:
    clock = lambda: NOW  # noqa: E731
    plain = new_enforcer([*global_rules(), *RULES], clock=clock)
    engine = PolicyEngine(RULES, clock=clock)
    for sub, dom, obj, act, owner in requests * 2:  # the second round comes from the cache
        expected = plain.enforce(sub, dom, obj, act, "yes" if owner else "no")
        assert engine.enforce(sub, dom, obj, act, owner) is expected, (sub, dom, obj, act)


def test_engine_keeps_the_global_api_answers() -> None:
    engine = PolicyEngine()
    assert engine.allowed("role:steward", "write", "admin/users")
    assert not engine.allowed("role:researcher", "read", "admin")
    assert engine.allowed("role:contributor", "read", "jobs/7", owner=True)
    assert not engine.allowed(None, "read", "portal")
    assert policies.explain("steward", "write", "admin/users") == [
        "role:steward",
        "*",
        "admin/*",
        "read|write",
        "any",
    ]


def test_reloading_changes_decisions_and_keeps_other_domains() -> None:
    engine = PolicyEngine(RULES, clock=lambda: NOW)
    assert engine.allowed("user:1", "query", "data/batch/vcn", domain="agreement:a")
    assert not engine.allowed("user:2", "query", "data/episode/age", domain="agreement:b")
    part_b = engine._part("agreement:b")
    engine.load([r for r in RULES if r[-1] != "agreement:a" and r[2] != "agreement:a"])
    assert not engine.allowed("user:1", "query", "data/batch/vcn", domain="agreement:a")
    assert engine._part("agreement:b") is part_b  # unchanged domain not rebuilt


def test_roles_and_bad_rules() -> None:
    engine = PolicyEngine(RULES, clock=lambda: NOW)
    assert engine.roles_for("user:1", "agreement:a") == ["role:researcher"]
    assert engine.roles_for("user:1", "agreement:b") == []
    with pytest.raises(ValueError, match="a rule is"):
        PolicyEngine([("p", "x", "y")])
    with pytest.raises(ValueError, match="time zone"):
        PolicyEngine([("p", "s", "d", "o", "a", "any", "2026-01-01T00:00:00/")])


def test_reachable_lists_objects_through_domains() -> None:
    engine = PolicyEngine(RULES)
    found = {
        (r.domain, r.obj, r.actions, r.role, r.open_now)
        for r in reachable(engine, "user:1", now=NOW)
    }
    assert found == {
        ("agreement:a", "data/batch", "query|fit", "role:researcher", True),
        ("agreement:a", "data/batch/*", "query|fit", "role:researcher", True),
    }
    expired = reachable(engine, "user:2", now=NOW)
    assert [(r.obj, r.open_now) for r in expired] == [("data/episode/age", False)]
    steward = {r.obj for r in reachable(engine, "user:9", now=NOW)}
    assert {"admin/*", "portal"} <= steward  # steward and inherited member rules


def test_who_can_lists_every_subject() -> None:
    engine = PolicyEngine(RULES)
    subjects = {(r.subject, r.domain) for r in who_can(engine, "data/batch/vcn", "fit", now=NOW)}
    assert subjects == {("role:researcher", "agreement:a"), ("user:1", "agreement:a")}
    assert who_can(engine, "data/batch/vcn", "synthetic", now=NOW) == []
    admin = {r.subject for r in who_can(engine, "admin/users", "write", domain="*")}
    assert admin == {"role:steward", "user:9"}
