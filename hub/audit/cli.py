"""``cleanroom audit``: the ledger, its keys, checkpoints and witnesses."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import select

# Imported for its effect too: it registers the periodic checkpoint with the workers of
# every `cleanroom` process (`cleanroom worker` builds no app).
from hub.audit import checkpoints as _checkpoints
from hub.audit.models import AuditCheckpoint, AuditEntry
from hub.audit.services import seal, verify
from hub.command import Hub, pass_hub

ACTOR = "cli"


@click.group()
def audit() -> None:
    """The hash-chained audit ledger, its signed checkpoints and their witnesses."""


@audit.command("verify")
@click.option(
    "--checkpoints",
    "folder",
    type=click.Path(path_type=Path),
    default=None,
    help="A party's folder of signed checkpoints (checkpoint-NNNNNN.json and "
    "hub-public-key.pem): also prove that the ledger still extends every one of them.",
)
@click.option(
    "--public-key",
    "public_key_file",
    type=click.Path(path_type=Path),
    default=None,
    help="The hub's public key (PEM) to check the checkpoints with, instead of the folder's.",
)
@pass_hub
def audit_verify(hub: Hub, folder: Path | None, public_key_file: Path | None) -> None:
    """Check the chain and its keys; name every entry edited, deleted, reordered or forged.
    With --checkpoints, check it against a witness's copies, naming the first bad entry."""
    from hub.audit.checkpoints import load_public_key, verify_witnessed

    key = None
    if public_key_file is not None:
        try:
            key = load_public_key(public_key_file.read_bytes())
        except (OSError, ValueError) as err:
            raise click.ClickException(
                f"the public key {public_key_file} cannot be read ({err}): give the PEM file "
                "`cleanroom audit public-key` prints."
            ) from None
    with hub.require_current_schema().session() as s:
        result = verify(s)
        witnessed = verify_witnessed(s, folder, key) if folder is not None else None
    message = str(result) + (f"\n{witnessed}" if witnessed is not None else "")
    if not result.ok or (witnessed is not None and not witnessed.ok):
        raise click.ClickException(message)
    click.echo(message)


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True)
@pass_hub
def audit_tail(hub: Hub, count: int) -> None:
    """Print the newest entries."""
    with hub.require_current_schema().session() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(count)).all()
    for e in reversed(rows):
        click.echo(f"{e.id:>7} {e.at} {e.actor:<24} {e.action:<18} {e.target} {e.detail}")


@audit.command("seal")
@pass_hub
def audit_seal(hub: Hub) -> None:
    """Key the entries written before entries were keyed (once, after an upgrade)."""
    with hub.require_current_schema().session() as s:
        count = seal(s, actor=ACTOR)
    if count:
        click.echo(f"sealed {count} entries written before keyed entries; the ledger is keyed.")
    else:
        click.echo("every entry is already keyed: nothing to seal.")


@audit.command("checkpoint")
@click.option("--no-push", is_flag=True, help="Sign only; leave pushing to the workers.")
@pass_hub
def audit_checkpoint(hub: Hub, no_push: bool) -> None:
    """Sign a checkpoint of the ledger now and push it to the institutions' witnesses."""
    from hub.audit.checkpoints import create_checkpoint, push_pending

    with hub.require_current_schema().session() as s:
        made = create_checkpoint(s, hub.settings, actor=ACTOR)
    if made is None:
        click.echo("the ledger has not grown since the latest checkpoint: none signed.")
    else:
        click.echo(
            f"checkpoint {made.id} signed: {made.length} entries, Merkle root "
            f"{made.merkle_root[:16]}…"
        )
    if no_push:
        return
    with hub.database.session() as s:
        report = push_pending(s, hub.settings, actor=ACTOR)
    for label, slugs in (
        ("pushed to", report.pushed),
        ("push failed (retried at the next interval) for", report.failed),
        ("push refused for", report.refused),
    ):
        if slugs:
            click.echo(f"{label}: {', '.join(slugs)}")


@audit.command("public-key")
@pass_hub
def audit_public_key(hub: Hub) -> None:
    """Print the public key that checks the hub's checkpoints (PEM): the first signer's,
    which each key rotation's handover checkpoint extends to the next."""
    from hub.audit.checkpoints import anchor_public_pem

    with hub.require_current_schema().session() as s:
        click.echo(anchor_public_pem(s, hub.settings), nl=False)


@audit.command("new-key")
@click.argument("path", type=click.Path(path_type=Path))
def audit_new_key(path: Path) -> None:
    """Make an Ed25519 checkpoint signing key at PATH (mode 0600) for production."""
    from hub.audit.checkpoints import key_id, new_key

    try:
        key = new_key(path)
    except FileExistsError:
        raise click.ClickException(
            f"{path} exists already: never overwrite a signing key."
        ) from None
    except OSError as err:
        raise click.ClickException(f"cannot write {path}: {err.strerror}.") from None
    click.echo(f"signing key written to {path} (key id {key_id(key.public_key())[:16]}…).")
    click.echo("Set CLEANROOM_CHECKPOINT_KEY_PATH to it and keep a copy offline.")


@audit.command("rotate-key")
@click.option("--no-push", is_flag=True, help="Do not deliver the handover checkpoint now.")
@pass_hub
def audit_rotate_key(hub: Hub, no_push: bool) -> None:
    """Change the checkpoint signing key: a new key is made beside the old one, the old key
    signs a handover checkpoint naming it, and the new key takes the old one's place."""
    cp = _checkpoints
    with hub.require_current_schema().session() as s:
        handover = cp.rotate_key(s, hub.settings, actor=ACTOR)
        s.commit()
        cp.finish_rotation(hub.settings, handover)
        old_id, new_id = handover.key_id, cp.handed_over_to(cp.document_of(handover)) or ""
    if cp.key_id(cp.signing_key(hub.settings).public_key()) != new_id:
        raise click.ClickException(
            f"checkpoint {handover.id} hands signing over to key {new_id[:16]}…, but the key "
            f"could not be put in place: the next checkpoint finishes the rotation."
        )
    click.echo(
        f"checkpoint {handover.id} hands signing over from key {old_id[:16]}… to "
        f"{new_id[:16]}…, now in {hub.settings.effective_checkpoint_key_path} (it replaced "
        "the old key's file). Keep an offline copy of it; the witnesses need nothing new."
    )
    if no_push:
        return
    with hub.database.session() as s:
        report = cp.push_pending(s, hub.settings, actor=ACTOR)
    for label, slugs in (
        ("pushed to", report.pushed),
        ("push failed (retried at the next interval) for", report.failed + report.refused),
    ):
        if slugs:
            click.echo(f"{label}: {', '.join(slugs)}")


@audit.command("export-checkpoints")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@pass_hub
def audit_export(hub: Hub, folder: Path) -> None:
    """Write every signed checkpoint and the public key into FOLDER (a witness's copy)."""
    from hub.audit.checkpoints import anchor_public_pem, write_folder

    with hub.require_current_schema().session() as s:
        documents = list(s.scalars(select(AuditCheckpoint.document).order_by(AuditCheckpoint.id)))
        anchor = anchor_public_pem(s, hub.settings)
    try:
        written = write_folder(folder, documents, anchor)
    except OSError as err:
        raise click.ClickException(f"cannot write into {folder}: {err.strerror or err}.") from None
    click.echo(f"{len(documents)} checkpoint(s) in {folder} ({written} new).")


@audit.command("witness-store")
@click.argument("institution")
@click.argument("store", default="")
@pass_hub
def audit_witness_store(hub: Hub, institution: str, store: str) -> None:
    """Set where INSTITUTION's copies of the checkpoints go: STORE = file:///folder or
    s3://bucket/prefix; empty = its admins' inbox only."""
    from hub.audit.checkpoints import set_witness_store

    with hub.require_current_schema().session() as s:
        inst = set_witness_store(s, institution, store, actor=ACTOR)
        where = inst.witness_store or "its admins' inbox only"
    click.echo(f"{institution}: checkpoints go to {where}.")
