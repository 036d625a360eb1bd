"""``cleanroom demo``: seed a demo consortium and print how to sign in.

Passwords are random, generated on the first seed and kept in ``<data_dir>/demo-logins.json``
(mode 0600), so re-running is idempotent and prints the same logins.
"""

from __future__ import annotations

import json
import os
import secrets
from datetime import UTC, date, datetime
from pathlib import Path

import click
import yaml
from sqlalchemy import select

from hub.accounts import services
from hub.accounts.models import Institution, User
from hub.agreements.models import AgreementRecord
from hub.command import Hub, data_dir_option, pass_hub

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


# Upload order: referenced tables first, so referential checks find their keys.
TABLE_ORDER = (
    "episode",
    "collection",
    "batch",
    "custody_event",
    "release_test",
    "deviation",
    "administration",
)
DATA_USERS = {
    "northbridge-cell": "northbridge-data",
    "st-aurelia": "aurelia-data",
    "kelvin-institute": "kelvin-data",
}


def seed_data(hub: Hub, *, patients: int = 120, seed: int = 7) -> list[str]:
    """Generate the demo consortium's files and take each through the real pipeline
    (upload, profile, mapping as proposed, validation, de-identification, release), as
    its institution's data manager. Skipped for institutions that already have data."""
    import tempfile

    from hub.demodata import generate, table_of
    from hub.ingest import services as ingest
    from hub.ingest.models import DatasetVersion, VersionState
    from hub.jobs.services import Worker, load_task_modules
    from hub.storage import get_storage

    load_task_modules(hub.settings.task_modules)
    storage = get_storage(hub.settings)
    database = hub.database
    worker = Worker(database, hub.settings, worker_id="demo-seed")
    lines: list[str] = []

    def drain() -> None:
        while worker.run_once() is not None:
            pass

    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp), institutions=len(DATA_USERS), patients=patients, seed=seed)
        for slug, username in DATA_USERS.items():
            with database.session() as s:
                user = s.scalar(select(User).where(User.username == username))
                if user is None or s.scalar(
                    select(DatasetVersion.id)
                    .where(DatasetVersion.institution_id == user.institution_id)
                    .limit(1)
                ):
                    continue
                s.expunge(user)
            uploads = []
            for path in files:
                if path.parent.name != slug:
                    continue
                for table, sheet in table_of(path):
                    uploads.append((TABLE_ORDER.index(table), table, sheet, path))
            for _, table, sheet, path in sorted(uploads, key=lambda u: u[0]):
                with database.session() as s, path.open("rb") as fh:
                    user = s.scalar(select(User).where(User.username == username))
                    assert user is not None  # checked above
                    v = ingest.start_upload(
                        s,
                        hub.settings,
                        storage,
                        user=user,
                        table=table,
                        filename=path.name,
                        stream=fh,
                        sheet=sheet or "",
                    )
                    vid = v.id
                drain()
                with database.session() as s:
                    v = ingest.get_version(s, vid)
                    if v.state == VersionState.AWAITING_MAPPING:
                        ingest.confirm_mapping(s, hub.settings, v, {}, actor=f"user:{username}")
                drain()
                with database.session() as s:
                    v = ingest.get_version(s, vid)
                    if v.state == VersionState.AWAITING_REVIEW:
                        # The demo's contributors approve the engine's report as it stands.
                        ingest.release(
                            s, hub.settings, storage, v, actor=f"user:{username}", approved=True
                        )
                    lines.append(
                        f"{slug:<18} {table:<15} {v.state:<16} "
                        f"{v.valid_rows}/{v.rows} rows {v.error}"
                    )
    return lines


DEMO_AGREEMENT = "demo-mfp"
DEMO_V2V_AGREEMENT = "demo-v2v"
DEMO_PARTIES = [
    {"institution": "northbridge-cell", "roles": ["contributor"]},
    {"institution": "st-aurelia", "roles": ["contributor", "recipient"]},
    {"institution": "kelvin-institute", "roles": ["contributor", "recipient"]},
]


def _demo_terms(template: str, today: date | None, **changes: object) -> str:
    from hub.agreements.services import template_text

    start = today or datetime.now(UTC).date()
    terms = yaml.safe_load(template_text(template))
    terms.update(
        parties=DEMO_PARTIES,
        researchers=["researcher"],
        valid_from=start,
        valid_until=start.replace(year=start.year + 2, day=min(start.day, 28)),
        **changes,
    )
    return str(yaml.safe_dump(terms, sort_keys=False))


def demo_agreement_text(today: date | None = None) -> str:
    """The shipped manufacturing-failure template, made the demo consortium's: the three
    institutions contribute, the hospital and the institute receive, the demo researcher is
    named, valid for two years from today."""
    return _demo_terms(
        "manufacturing_failure_prediction",
        today,
        id=DEMO_AGREEMENT,
        title="Demo: manufacturing-failure prediction across the consortium",
    )


def demo_v2v_agreement_text(today: date | None = None) -> str:
    """The shipped vein-to-vein template, made the demo consortium's like the first, with the
    episode's product and indication added so that times can be compared by product."""
    from hub.agreements.services import template_text

    tables = yaml.safe_load(template_text("vein_to_vein_benchmarking"))["tables"]
    tables["episode"] = ["coi_id", "product_class", "product", "indication"]
    return _demo_terms(
        "vein_to_vein_benchmarking",
        today,
        id=DEMO_V2V_AGREEMENT,
        tables=tables,
        title="Demo: vein-to-vein time by site and product",
    )


def seed_agreement(hub: Hub) -> str:
    """The active demo agreements, signed by every party's admin (each skipped when it
    exists)."""
    from hub.agreements import services as agreements

    lines = []
    for slug, text in (
        (DEMO_AGREEMENT, demo_agreement_text),
        (DEMO_V2V_AGREEMENT, demo_v2v_agreement_text),
    ):
        with hub.database.session() as s:
            if s.scalar(select(AgreementRecord.id).where(AgreementRecord.slug == slug)):
                lines.append(f"agreement {slug} already exists")
                continue
            stored = agreements.create(s, text(), actor="demo")
            agreements.transition(s, stored, "submit", actor="demo")
            for admin in ("northbridge-admin", "aurelia-admin", "kelvin-admin"):
                user = services.get_user(s, admin)
                agreements.sign(s, stored, user, actor=f"user:{admin}")
            lines.append(f"agreement {slug} {stored.state}")
    return "\n  ".join(lines)


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
                services.create_user(
                    s,
                    username,
                    passwords[username],
                    role,
                    institution=inst,
                    actor="demo",
                    display_name=display,
                )
    return passwords


@click.group()
def demo() -> None:
    """The demo consortium."""


def researcher_token(hub: Hub) -> str:
    """The demo researcher's sandbox API token, kept (mode 0600) in the data directory and
    reused while it is valid; a new one is made when it expired or was revoked."""
    from hub.errors import CleanroomError

    path = hub.settings.data_path / "demo-researcher-token"
    with hub.database.session() as s:
        if path.exists():
            secret = path.read_text().strip()
            try:
                services.verify_token(s, secret, scope="sandbox")
                return secret
            except CleanroomError:
                pass
        user = services.get_user(s, "researcher")
        secret = services.create_token(
            s, hub.settings, user, "demo sandbox", ["sandbox", "read"], actor="demo"
        ).secret
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret + "\n")
    return secret


@demo.command("seed")
@click.option(
    "--data/--no-data",
    default=True,
    show_default=True,
    help="Also generate demo files and release them through the pipeline.",
)
@click.option("--patients", default=120, show_default=True, help="Patients per institution.")
@data_dir_option
@pass_hub
def demo_seed(hub: Hub, data: bool, patients: int, data_dir: str | None) -> None:
    """Create demo institutions, users, an active agreement and data (idempotent); print
    the logins and a researcher's sandbox API token."""
    from hub import schema

    hub.override(data_dir=data_dir)
    schema.upgrade(hub.database)
    passwords = seed(hub)
    click.echo(f"  {seed_agreement(hub)}")
    if data:
        for line in seed_data(hub, patients=patients):
            click.echo(f"  data: {line}")
    url = hub.settings.public_url.rstrip("/")
    click.echo("")
    click.secho("Cleanroom demo consortium", bold=True)
    click.echo(f"  portal:   {url}/")
    click.echo(f"  health:   {url}/healthz")
    click.echo(f"  logins (also in {_logins_file(hub.settings.data_path)}):")
    for username, _display, role, inst in USERS:
        click.echo(f"    {username:<18} {passwords[username]:<18} {role:<18} {inst}")
    click.echo(f"  researcher sandbox token: {researcher_token(hub)}")
    click.echo(f"    e.g. curl -H 'Authorization: Bearer <token>' {url}/api/v1/sandbox/agreements")
    click.echo("")
