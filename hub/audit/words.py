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
    "release.request": "requested a reviewed release",
    "release.released": "released exact results",
    "release.held": "held an approved release (its agreement no longer stood)",
    "login.success": "signed in",
    "login.failure": "failed to sign in",
    "logout": "signed out",
    "password.failure": "gave a wrong current password",
    "token.create": "created an API token",
    "token.revoke": "revoked an API token",
    "token.failure": "presented an invalid API token",
    "access.refused": "was refused access",
    "user.create": "added a user",
    "user.change": "changed a user's role or institution",
    "user.output_checker": "named an output checker",
    "institution.create": "added an institution",
    "upload": "uploaded a file",
    "upload.refused": "had an upload refused",
    "ingest.map": "confirmed a column mapping",
    "ingest.term_forget": "forgot a remembered term",
    "ingest.processed": "validated and de-identified an upload",
    "release": "released a dataset to the pool",
    "withdrawal": "withdrew a dataset from the pool",
    "job.enqueue": "queued a job",
    "job.refused": "had a job stopped by the policy",
    "audit.verify": "checked the ledger",
    "audit.checkpoint": "signed a ledger checkpoint",
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
