"""The portal's "Open the sandbox" link: researchers see it, pointing at the sandbox's public
address (``sandbox_public_url``, else JupyterHub's proxy while the sandbox is enabled)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hub.jupyterhub.service import sandbox_url
from hub.settings import load_settings
from tests.conftest import AuthActions, Users

pytestmark = pytest.mark.db


@pytest.fixture
def settings_overrides(settings_overrides: dict[str, Any]) -> dict[str, Any]:
    return {**settings_overrides, "sandbox_public_url": "https://nb.example.org"}


def test_the_sandbox_address_is_computed_in_one_place() -> None:
    env: dict[str, str] = {}
    assert sandbox_url(load_settings({"sandbox_port": 8123}, env)) == "http://127.0.0.1:8123/"
    assert (
        sandbox_url(load_settings({"sandbox_host": "0.0.0.0", "sandbox_port": 9}, env))  # noqa: S104
        == "http://127.0.0.1:9/"
    )
    public = load_settings({"sandbox_public_url": "https://notebooks.example.org"}, env)
    assert sandbox_url(public) == "https://notebooks.example.org/"
    assert sandbox_url(load_settings({"sandbox_enabled": False}, env)) == ""


def test_researchers_see_open_the_sandbox_and_others_do_not(
    app: Flask, client: FlaskClient, auth: AuthActions, users: Users
) -> None:
    users.institution("st-aurelia")
    users.make("rosa", "researcher", "st-aurelia")
    users.make("nadia", "contributor", "st-aurelia")
    auth.login("rosa")
    page = client.get("/").get_data(as_text=True)
    link = '<a href="https://nb.example.org/" data-testid="sandbox-link">Open the sandbox</a>'
    assert link in page
    other = app.test_client()
    AuthActions(other).login("nadia")
    assert "Open the sandbox" not in other.get("/").get_data(as_text=True)
