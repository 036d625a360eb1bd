"""Ledger entries in words: what an action, a target and an entry's detail mean, for the
ledger's pages, the auditor's overview and the notices."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

ACTION_WORDS = {
    "agreement.create": "created the draft agreement",
    "agreement.edit": "edited the draft agreement",
    "agreement.delete": "deleted the draft agreement",
    "agreement.submit": "sent the agreement for signatures",
    "agreement.revise": "returned the agreement to draft",
    "agreement.activate": "activated the agreement",
    "agreement.suspend": "suspended the agreement",
    "agreement.resume": "resumed the agreement",
    "agreement.terminate": "terminated the agreement",
    "agreement.sign": "signed the agreement",
    "sandbox.query": "asked a question of the pooled data",
    "sandbox.fit": "fitted a model on the pooled data",
    "sandbox.synthetic": "downloaded synthetic rows",
    "sandbox.refused": "was refused by the sandbox",
    "sandbox.login": "opened the sandbox",
    "sandbox.catalogue": "read the data catalogue of an agreement",
    "release.request": "requested a reviewed release",
    "release.revise": "changed the outputs of a release request",
    "release.approve": "approved a release request",
    "release.reject": "rejected a release request",
    "release.comment": "commented on a release request",
    "release.object": "objected to a release",
    "release.objection_upheld": "upheld an objection to a release",
    "release.objection_dismissed": "dismissed an objection to a release",
    "release.withdraw": "withdrew a release request",
    "release.released": "released exact results",
    "release.held": "held an approved release (its agreement no longer stood)",
    "login.success": "signed in",
    "login.failure": "failed to sign in",
    "logout": "signed out",
    "password.failure": "gave a wrong current password",
    "token.create": "created an API token",
    "token.revoke": "revoked an API token",
    "token.failure": "presented an invalid API token",
    "token.use": "used an API token",
    "access.refused": "was refused access",
    "user.create": "added a user",
    "user.change": "changed a user's role or institution",
    "user.output_checker": "named an output checker",
    "user.output_checker_removed": "withdrew an output checker",
    "user.enable": "enabled a user",
    "user.disable": "disabled a user",
    "user.password": "changed their password",
    "user.password_reset": "reset a user's password",
    "user.sessions_ended": "ended a user's sessions",
    "user.unlock": "unlocked a user's sign-in",
    "institution.witness_store": "set where an institution's checkpoint copies go",
    "institution.create": "added an institution",
    "upload": "uploaded a file",
    "upload.refused": "had an upload refused",
    "ingest.map": "confirmed a column mapping",
    "ingest.term_forget": "forgot a remembered term",
    "ingest.processed": "validated and de-identified an upload",
    "ingest.failed": "could not process an upload",
    "ingest.reject": "discarded an upload",
    "ingest.raw_deleted": "deleted an upload's raw file",
    "dataset.synthetic_only": "made a dataset available as synthetic rows only",
    "synth.request": "asked for a synthetic version",
    "synth.group": "asked for linked synthetic tables",
    "synth.published": "published a synthetic version",
    "synth.failed": "could not make a synthetic version",
    "synth.failed_gates": "held back a synthetic version that failed its gates",
    "synth.withdrawn": "withdrew a synthetic version",
    "pool.rotate_keys": "moved the pool to a new pseudonym key",
    "pool.rotate_anchors": "moved the date anchors to the new pseudonym key",
    "release": "released a dataset to the pool",
    "withdrawal": "withdrew a dataset from the pool",
    "job.enqueue": "queued a job",
    "job.refused": "had a job stopped by the policy",
    "audit.verify": "checked the ledger",
    "audit.seal": "keyed the ledger's earlier entries",
    "audit.checkpoint": "signed a ledger checkpoint",
    "audit.checkpoint_refused": "refused to sign a checkpoint over a broken ledger",
    "audit.checkpoint_pushed": "delivered a checkpoint to a witness",
    "audit.key_rotated": "changed the checkpoint signing key",
    "export.download": "downloaded a file",
}
_HASH = re.compile(r"^[0-9a-f]{40,64}$")


def action_words(action: str) -> str:
    """What an action means in words ("agreement.sign" -> "signed the agreement")."""
    return ACTION_WORDS.get(action) or action.replace(".", ": ", 1).replace("_", " ")


def target_words(target: str) -> str:
    kind, sep, name = target.partition(":")
    if not sep:
        return target or "—"
    return f"{kind.replace('_', ' ')} {name}" if name else kind.replace("_", " ")


#: Labels of detail keys whose own names say too little.
DETAIL_LABELS = {
    "terms": "terms fingerprint (SHA-256 of the agreement's text as signed)",
    "digest": "fingerprint (SHA-256)",
    "sha256": "file fingerprint (SHA-256)",
    "parties": "parties",
}


def _value_words(value: Any, names: Mapping[str, str]) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(_value_words(v, names) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(
            f"{k.replace('_', ' ')}: {_value_words(v, names)}" for k, v in value.items()
        )
    text = str(value)
    if text in names:
        return names[text]
    return f"{text[:12]}…" if _HASH.match(text) else text


def detail_facts(detail: str, names: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """The entry's detail as (label, value in words, full value) rows, never JSON;
    ``names`` turns short codes (institutions' slugs) into names."""
    names = names or {}
    try:
        data = json.loads(detail or "{}")
    except ValueError:
        return [("detail", detail, detail)]
    if not isinstance(data, dict):
        return [("detail", _value_words(data, names), str(data))]
    rows = []
    for key, value in data.items():
        full = value if isinstance(value, str) else _value_words(value, names)
        label = DETAIL_LABELS.get(key, key.replace("_", " "))
        rows.append((label, _value_words(value, names), str(full)))
    return rows
