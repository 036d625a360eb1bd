"""``cleanroom demo``: seed a demo consortium and print how to sign in.

Passwords are random, generated on the first seed and kept in ``<data_dir>/demo-logins.json``
(mode 0600), so re-running is idempotent and prints the same logins.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import click
import yaml
from sqlalchemy import select

from hub.accounts import services
from hub.accounts.models import Institution, User
from hub.agreements.models import AgreementRecord
from hub.command import Hub, data_dir_option, pass_hub
from hub.demodata.consortium import INSTITUTIONS, USERS

#: The steward's office checks researchers' release requests (docs/releases.md): two
#: checkers, as a request needs two approvals by default.
OUTPUT_CHECKERS = ("steward", "checker")


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
DEMO_PC_AGREEMENT = "demo-pc"
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


def demo_pc_agreement_text(today: date | None = None) -> str:
    """The shipped process-comparability template, made the demo consortium's like the
    others, over the starting material (``collection``) and the product (``batch``). It
    allows synthetic rows, so the demo researcher can develop on them: these two tables
    because their synthetic versions pass the steward's default gates at the demo's size
    (``release_test`` and ``deviation`` fail the quality or copied-rows gate there)."""
    return _demo_terms(
        "process_comparability",
        today,
        id=DEMO_PC_AGREEMENT,
        title="Demo: process comparability, with synthetic rows to develop on",
        tables={"collection": "all", "batch": "all"},
        purpose={
            "code": "process_comparability",
            "text": "Assess whether starting material and product quality attributes are "
            "comparable between manufacturing platforms and sites.",
        },
    )


def seed_agreement(hub: Hub) -> str:
    """The active demo agreements, signed by every party's admin (each skipped when it
    exists)."""
    from hub.agreements import services as agreements

    lines = []
    for slug, text in (
        (DEMO_AGREEMENT, demo_agreement_text),
        (DEMO_V2V_AGREEMENT, demo_v2v_agreement_text),
        (DEMO_PC_AGREEMENT, demo_pc_agreement_text),
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
        s.flush()
        for username in OUTPUT_CHECKERS:
            user = services.get_user(s, username)
            if not user.is_output_checker:
                services.set_output_checker(s, user, True, actor="demo")
    return passwords


# Seeds tried per table before the demo gives up on it: on tables of a few hundred rows a
# gate's score varies from seed to seed (docs/synthesis.md), as a steward re-running it sees.
SYNTH_SEEDS = (0, 1, 2)


def seed_synthetic(hub: Hub, echo: Callable[[str], None] = click.echo) -> list[str]:
    """Have the steward's gates judge synthetic versions of every table the demo's synthetic
    agreement covers, made from its pooled data, here and now; each table is tried with
    :data:`SYNTH_SEEDS` until one is published. A table that already has a synthetic version
    of that agreement (in any state) is skipped, so a second seed synthesises nothing."""
    from hub.agreements import services as agreements
    from hub.jobs.services import load_task_modules, run_now
    from hub.synth import services as synth
    from hub.synth.models import SyntheticVersion, SynthState

    load_task_modules(hub.settings.task_modules)
    database = hub.database
    lines: list[str] = []
    with database.session() as s:
        stored = agreements.get(s, DEMO_PC_AGREEMENT)
        tables = [c.table for c in agreements.contract_of(stored).tables]
    for table in tables:
        with database.session() as s:
            done = s.scalar(
                select(SyntheticVersion.state)
                .where(
                    SyntheticVersion.agreement_slug == DEMO_PC_AGREEMENT,
                    SyntheticVersion.cdm_table == table,
                )
                .order_by(SyntheticVersion.id.desc())
                .limit(1)
            )
        if done is not None:
            lines.append(f"{table:<15} already synthesised ({done.replace('_', ' ')})")
            continue
        outcome = ""
        for seed_value in SYNTH_SEEDS:
            echo(f"  synthetic: {table} of {DEMO_PC_AGREEMENT}, seed {seed_value} …")
            with database.session() as s:
                made = synth.request_for_agreement(
                    s,
                    hub.settings,
                    DEMO_PC_AGREEMENT,
                    table,
                    actor="demo",
                    seed=seed_value,
                    max_attempts=1,
                )
                made_id, job_id = made.id, made.job_id
            assert job_id is not None  # _queue sets it
            run_now(database, hub.settings, job_id, worker_id="demo-seed")
            with database.session() as s:
                made = synth.get(s, made_id)
                headline = synth.scores(made)
                failed = ", ".join(f["gate"] for f in headline["failed_gates"])
                outcome = (
                    f"{table:<15} {made.state.replace('_', ' ')} (seed {seed_value}): "
                    f"quality {headline['quality']}, DCR overfitting protection "
                    f"{headline['dcr_overfitting_protection']}, copied rows "
                    f"{headline['copied_rows']}"
                    + (f"; failed gates: {failed}" if failed else "")
                    + (f"; {made.error}" if made.error else "")
                )
                if made.state == SynthState.PUBLISHED:
                    break
        lines.append(outcome)
    return lines


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
@click.option(
    "--synthetic/--no-synthetic",
    default=True,
    show_default=True,
    help=f"Also synthesise the tables of the agreement {DEMO_PC_AGREEMENT} (which allows "
    "synthetic rows) and publish those that pass the steward's gates; with --data only.",
)
@data_dir_option
@pass_hub
def demo_seed(hub: Hub, data: bool, patients: int, synthetic: bool, data_dir: str | None) -> None:
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
        if synthetic:
            for line in seed_synthetic(hub):
                click.echo(f"  synthetic: {line}")
    url = hub.settings.public_url.rstrip("/")
    click.echo("")
    click.secho("Cleanroom demo consortium", bold=True)
    click.echo(f"  portal:   {url}/")
    click.echo(f"  health:   {url}/healthz")
    click.echo(f"  logins (also in {_logins_file(hub.settings.data_path)}):")
    for username, _display, role, inst in USERS:
        checks = " + output checker" if username in OUTPUT_CHECKERS else ""
        click.echo(
            f"    {username:<18} {passwords[username]:<18} {role + checks:<34} {inst or '—'}"
        )
    click.echo(f"  researcher sandbox token: {researcher_token(hub)}")
    click.echo(f"    e.g. curl -H 'Authorization: Bearer <token>' {url}/api/v1/sandbox/agreements")
    click.echo(
        f"  synthetic rows to develop on: agreement {DEMO_PC_AGREEMENT}, e.g. in a notebook "
        f"connect(agreement={DEMO_PC_AGREEMENT!r}).synthetic('batch')"
    )
    click.echo("")
