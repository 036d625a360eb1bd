"""Pseudonym key rotation over the pool: ``cleanroom pool rotate-keys``.

The pool holds pseudonyms computed with a key *chain* (:mod:`anonymisation.pseudonyms`).
Appending a key to the chain (``hmac_previous_keys`` gets the old key, ``hmac_key`` the new
one) and running this job moves every stored pseudonym to the new epoch with
``p -> HMAC(k_new, p)``: no raw value is needed, and new uploads, pseudonymised with the
whole chain, join the rotated data.

Each version is rotated on its own: the rotated objects are written under new keys, the
version's row points at them in one transaction with its audit entry, and only then are the
old objects deleted. A crash leaves each version either fully at the old epoch or fully at
the new one, and running the job again finishes the rest. Date anchors (keyed by subject
pseudonyms) are rotated in the same way.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pandas as pd
from sqlalchemy import select

from anonymisation.pseudonyms import is_pseudonym, rotate
from hub.audit.services import record
from hub.ingest.models import DatasetVersion, DateAnchor, VersionState
from hub.ingest.services import _keys_key, _pool_key, _staging_prefix, cdm_table
from hub.jobs.services import JobContext, task
from hub.storage import Storage, get_storage
from hub.storage.frames import put_frame, read_frames

log = logging.getLogger(__name__)
ROTATED_STATES = (VersionState.RELEASED, VersionState.AWAITING_REVIEW)


def _pseudonym_columns(version: DatasetVersion, frame: pd.DataFrame) -> list[str]:
    """Columns holding pseudonyms: the data model's linkable identifiers and whatever the
    report says was pseudonymised (a contributor's stronger choice)."""
    table = cdm_table(version.cdm_table)
    names = {c.name for c in table.columns if str(c.identifier) == "linkable_identifier"}
    report = json.loads(version.deid or "{}")
    names |= {
        c["name"]
        for c in report.get("columns", [])
        if str(c.get("action", "")).startswith("pseudonymise")
    }
    return [c for c in frame.columns if c in names and frame[c].dropna().map(is_pseudonym).all()]


def _rotate_object(
    storage: Storage, version: DatasetVersion, key: str, new_keys: list[bytes], new_key: str
) -> None:
    frame = read_frames(storage, [key])
    for column in _pseudonym_columns(version, frame):
        values = frame[column]
        for k in new_keys:
            values = rotate(values, k)
        frame[column] = values
    put_frame(storage, new_key, frame)


def _rotate_version(ctx: JobContext, storage: Storage, version_id: int, chain: list[bytes]) -> bool:
    epoch = len(chain)
    with ctx.database.session() as s:
        v = s.get(DatasetVersion, version_id)
        if v is None or v.key_epoch >= epoch or v.state not in ROTATED_STATES:
            return False
        slug = v.institution.slug
        s.expunge(v)
    new_keys = chain[v.key_epoch :]
    released = v.state == VersionState.RELEASED
    moves: dict[str, tuple[str, str]] = {}  # attribute -> (old object, new object)
    if released:
        moves["pool_key"] = (v.pool_key, _pool_key(v, slug, epoch))
        if v.keys_key:
            moves["keys_key"] = (v.keys_key, _keys_key(v, slug, epoch))
    else:
        prefix = _staging_prefix(v)
        moves["staged_key"] = (v.staged_key, f"{prefix}/deidentified-e{epoch}.parquet")
        if v.keys_key:
            moves["keys_key"] = (v.keys_key, f"{prefix}/keys-e{epoch}.parquet")
    for old, new in moves.values():
        if old:
            _rotate_object(storage, v, old, new_keys, new)
    with ctx.database.session() as s:
        current = s.get(DatasetVersion, version_id)
        assert current is not None
        if current.state != v.state or current.key_epoch != v.key_epoch:
            # Released, withdrawn or reprocessed meanwhile: leave it for the next run.
            for old, new in moves.values():
                if old:
                    storage.delete(new)
            return False
        for attr, (old, new) in moves.items():
            if old:
                setattr(current, attr, new)
        current.key_epoch = epoch
        record(
            s,
            actor="system",
            action="pool.rotate_keys",
            target=f"dataset:{version_id}",
            detail={"from_epoch": v.key_epoch, "to_epoch": epoch, "state": str(v.state)},
        )
    for old, new in moves.values():
        if old and old != new:
            storage.delete(old)
    return True


def _rotate_anchors(ctx: JobContext, chain: list[bytes]) -> int:
    epoch = len(chain)
    rotated = 0
    with ctx.database.session() as s:
        stale = list(s.scalars(select(DateAnchor).where(DateAnchor.key_epoch < epoch)))
        current = {
            a.subject: a for a in s.scalars(select(DateAnchor).where(DateAnchor.key_epoch >= epoch))
        }
        for anchor in stale:
            subject = pd.Series([anchor.subject], dtype=object)
            for k in chain[anchor.key_epoch :]:
                subject = rotate(subject, k)
            new_subject = str(subject.iloc[0])
            clash = current.get(new_subject)
            if clash is not None:  # fixed again under the new key before this ran: the
                s.delete(clash)  # older anchor is the true first sight
                s.flush()
            anchor.subject, anchor.key_epoch = new_subject, epoch
            rotated += 1
        if rotated:
            record(
                s,
                actor="system",
                action="pool.rotate_anchors",
                target="date_anchors",
                detail={"anchors": rotated, "to_epoch": epoch},
            )
    return rotated


@task("pool.rotate_keys")
def rotate_keys_job(ctx: JobContext) -> dict[str, Any]:
    """Move every stored pseudonym (pool, staged versions, key indexes, date anchors) to the
    configured key chain's epoch."""
    chain = ctx.settings.key_chain
    storage = get_storage(ctx.settings)
    with ctx.database.session() as s:
        ids = list(
            s.scalars(
                select(DatasetVersion.id)
                .where(
                    DatasetVersion.key_epoch < len(chain),
                    DatasetVersion.state.in_([str(x) for x in ROTATED_STATES]),
                )
                .order_by(DatasetVersion.id)
            )
        )
    done = 0
    for i, version_id in enumerate(ids):
        if _rotate_version(ctx, storage, version_id, chain):
            done += 1
        ctx.progress(int(90 * (i + 1) / max(1, len(ids))), f"rotated {done} of {len(ids)}")
    anchors = _rotate_anchors(ctx, chain)
    log.info("key rotation to epoch %d: %d versions, %d anchors", len(chain), done, anchors)
    return {"epoch": len(chain), "versions": done, "anchors": anchors}
