"""``cleanroom demo``: seed a demo consortium and print how to sign in.

Passwords are random, generated on the first seed and kept in ``<data_dir>/demo-logins.json``
(mode 0600), so re-running is idempotent and prints the same logins.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import click
from sqlalchemy import select

from hub.accounts import services
from hub.accounts.models import Institution, User
from hub.cli import Hub, pass_hub

INSTITUTIONS = (
    ("cleanroom-steward", "Cleanroom Stewardship Office", "steward"),
    ("northbridge-cell", "Northbridge Cell Therapies", "manufacturer"),
    ("st-aurelia", "St Aurelia University Hospital", "hospital"),
    ("kelvin-institute", "Kelvin Institute for Regenerative Medicine", "academic"),
)

USERS = (
    ("steward", "Sam Steward", "steward", "cleanroom-steward"),
    ("northbridge-admin", "Nadia Okafor", "contributor_admin", "northbridge-cell"),
    ("northbridge-data", "Nils Berg", "contributor", "northbridge-cell"),
    ("aurelia-admin", "Amaya Ruiz", "contributor_admin", "st-aurelia"),
    ("aurelia-data", "Tom Achterberg", "contributor", "st-aurelia"),
    ("kelvin-admin", "Kiri Tane", "contributor_admin", "kelvin-institute"),
    ("kelvin-data", "Lena Fischer", "contributor", "kelvin-institute"),
    ("researcher", "Rosa Ibarra", "researcher", "kelvin-institute"),
)


def _logins_file(data_dir: Path) -> Path:
    return data_dir / "demo-logins.json"


def _load_or_create_passwords(path: Path) -> dict[str, str]:
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
    else:
        stored = {}
    changed = False
    for username, *_ in USERS:
        if username not in stored:
            stored[username] = secrets.token_urlsafe(12)
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh, indent=2)
    return stored


def seed(hub: Hub) -> dict[str, str]:
    """Create the demo institutions and users that do not exist yet."""
    passwords = _load_or_create_passwords(_logins_file(hub.settings.data_path))
    with hub.require_current_schema().session() as s:
        for slug, name, kind in INSTITUTIONS:
            if s.scalar(select(Institution).where(Institution.slug == slug)) is None:
                services.create_institution(s, slug, name, kind, actor="demo")
        s.flush()
        for username, display, role, inst in USERS:
            if s.scalar(select(User).where(User.username == username)) is None:
                services.create_user(s, username, passwords[username], role, institution=inst,
                                     actor="demo", display_name=display)
    return passwords


@click.group()
def demo() -> None:
    """The demo consortium."""


@demo.command("seed")
@pass_hub
def demo_seed(hub: Hub) -> None:
    """Create demo institutions and users (idempotent) and print the logins."""
    from hub import schema

    schema.upgrade(hub.database)
    passwords = seed(hub)
    url = hub.settings.public_url.rstrip("/")
    click.echo("")
    click.secho("Cleanroom demo consortium", bold=True)
    click.echo(f"  portal:   {url}/")
    click.echo(f"  health:   {url}/healthz")
    click.echo(f"  logins (also in {_logins_file(hub.settings.data_path)}):")
    for username, _display, role, inst in USERS:
        click.echo(f"    {username:<18} {passwords[username]:<18} {role:<18} {inst}")
    click.echo("")
