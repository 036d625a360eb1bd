"""Global role permissions decided by the Casbin model."""

from __future__ import annotations

import pytest

import policies


@pytest.mark.parametrize(
    "role, action, obj, owner, expected",
    [
        ("steward", "write", "admin/users", False, True),
        ("steward", "read", "admin/audit", False, True),
        ("steward", "read", "jobs/7", False, True),
        ("contributor_admin", "read", "admin/audit", False, False),
        ("contributor", "write", "admin/institutions", False, False),
        ("researcher", "read", "admin", False, False),
        ("researcher", "read", "portal", False, True),
        ("contributor", "read", "jobs/7", False, False),
        ("contributor", "read", "jobs/7", True, True),
        ("contributor", "revoke", "account/tokens/3", False, False),
        ("contributor", "revoke", "account/tokens/3", True, True),
        ("contributor_admin", "read", "portal", False, True),  # inherits contributor, member
        ("researcher", "delete", "portal", False, False),  # actions are matched whole
        (None, "read", "portal", False, False),
        ("nonexistent-role", "read", "portal", False, False),
    ],
)
def test_role_matrix(role, action, obj, owner, expected) -> None:
    assert policies.allowed(role, action, obj, owner=owner) is expected


def test_explain_names_the_rule() -> None:
    assert policies.explain("steward", "write", "admin/users") == [
        "role:steward",
        "*",
        "admin/*",
        "read|write",
        "any",
    ]
    assert policies.explain("researcher", "write", "admin/users") == []
