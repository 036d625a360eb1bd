"""Signed checkpoints of the audit ledger, their witnesses, and proofs of inclusion.

A checkpoint is a JSON document the hub signs with its Ed25519 key (a PEM file outside the
metadata database): the ledger's length, the head entry's hash, the RFC 6962 Merkle tree
root over the entry hashes 1..length, the time, the signing key's id, the previous
checkpoint's digest, and the hashes of every entry since the previous checkpoint. Every
institution keeps copies (its witness store, or downloads from its portal); from one
party's copies alone :func:`verify_witnessed` proves that the ledger still extends every
checkpoint, and names the first entry that was edited, deleted, reordered, rewritten (even
with the ledger key) or lost to a truncation or an old backup.

:func:`inclusion_proof` and :func:`verify_inclusion` prove that one entry is in the tree a
checkpoint signed (RFC 6962 audit paths), without the rest of the ledger.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from hub.accounts.models import Institution, User
from hub.accounts.services import may
from hub.audit.models import AuditCheckpoint, AuditEntry, AuditHead, WitnessPush
from hub.audit.services import GENESIS, Problem, canonical_json, entry_hash, record
from hub.db import Database
from hub.errors import BadRequest, ConfigurationError, Conflict, NotFound
from hub.jobs.services import periodic
from hub.settings import Settings

log = logging.getLogger(__name__)

FORMAT = "cleanroom-ledger-checkpoint/1"
PUBLIC_KEY_FILE = "hub-public-key.pem"
CHECKPOINTS_PAGE = "/ledger/checkpoints"
FILE_PATTERN = re.compile(r"^checkpoint-(\d+)\.json$")
# Entries the checkpointing itself writes: a ledger that grew only by these needs no new
# checkpoint (an idle hub would otherwise sign one every interval, for ever).
HOUSEKEEPING = frozenset(
    {
        "audit.checkpoint",
        "audit.checkpoint_pushed",
        "audit.checkpoint_push_failed",
        "audit.checkpoint_push_refused",
    }
)


def file_name(sequence: int) -> str:
    return f"checkpoint-{sequence:06d}.json"


# Keys --------------------------------------------------------------------------------------


def new_key(path: Path) -> Ed25519PrivateKey:
    """Make a signing key at ``path`` (PEM, mode 0600); refused if the file exists."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The hub's checkpoint signing key. Development makes its own on first use; production
    names an existing file (``check_production`` refuses to start otherwise)."""
    path = settings.effective_checkpoint_key_path
    if not path.is_file():
        if settings.is_production or settings.checkpoint_key_path:
            raise ConfigurationError(
                f"the checkpoint signing key {path} does not exist: make it with `cleanroom "
                "audit new-key FILE` and name it in CLEANROOM_CHECKPOINT_KEY_PATH."
            )
        try:
            return new_key(path)
        except FileExistsError:
            pass  # another process made it first: read theirs
    return _load_private(path)


def public_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def key_id(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, in hex: names the key a checkpoint was signed with."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_public_key(text: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(text)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def next_key_path(settings: Settings) -> Path:
    """Where a rotation keeps the new signing key until the handover checkpoint is stored."""
    path = settings.effective_checkpoint_key_path
    return path.with_name(path.name + ".next")


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigurationError(
            f"the checkpoint signing key {path} cannot be read ({err}): it must be an "
            "unencrypted Ed25519 private key in PEM form (`cleanroom audit new-key FILE`)."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigurationError(f"the checkpoint signing key {path} is not an Ed25519 key.")
    return key


def handed_over_to(document: Mapping[str, Any]) -> str | None:
    """The id of the key a handover checkpoint names as the next signer, else None."""
    handover = document.get("next_key")
    return str(handover["key_id"]) if isinstance(handover, dict) else None


def expected_key_id(previous: AuditCheckpoint | None) -> str | None:
    """The key the next checkpoint must be signed with: the previous one's, or the key it
    handed over to (None before the first checkpoint)."""
    if previous is None:
        return None
    return handed_over_to(document_of(previous)) or previous.key_id


def _continuing_key(settings: Settings, previous: AuditCheckpoint | None) -> Ed25519PrivateKey:
    """The signing key, checked against the chain of checkpoints: a rotation whose handover
    was stored but whose key file was not yet moved into place is finished here; any other
    key is refused, because every witness would reject what it signs."""
    key = signing_key(settings)
    want = expected_key_id(previous)
    if want is None or key_id(key.public_key()) == want:
        return key
    pending = next_key_path(settings)
    if pending.is_file():
        candidate = _load_private(pending)
        if key_id(candidate.public_key()) == want:
            try:
                os.replace(pending, settings.effective_checkpoint_key_path)
            except FileNotFoundError:
                pass  # another process finished the rotation a moment ago
            return candidate
    raise Conflict(
        f"the checkpoint signing key (id {key_id(key.public_key())[:16]}…) is not the key that "
        f"signed checkpoint {previous.id if previous else 0} or the one it handed over to (id "
        f"{want[:16]}…): every witness would reject what it signs. Put the signing key back "
        "from its offline copy; change keys only with `cleanroom audit rotate-key`."
    )


def anchor_public_pem(session: Session, settings: Settings) -> str:
    """The public key a witness starts from: the key that signed the first checkpoint. Each
    rotation's handover checkpoint, signed by the old key, names the next, so one key checks
    every checkpoint the hub ever signed."""
    key = signing_key(settings).public_key()
    current = public_pem(key)
    first = session.scalar(select(AuditCheckpoint.key_id).order_by(AuditCheckpoint.id).limit(1))
    if first is None or first == key_id(key):
        return current
    # The last checkpoint the first key signed is its handover, which carries its public key.
    handover = session.scalar(
        select(AuditCheckpoint.document)
        .where(AuditCheckpoint.key_id == first)
        .order_by(AuditCheckpoint.id.desc())
        .limit(1)
    )
    pem = json.loads(handover).get("public_key") if handover else None
    return str(pem) if isinstance(pem, str) else current


# Merkle tree (RFC 6962) ------------------------------------------------------------------

EMPTY_ROOT = hashlib.sha256(b"").hexdigest()


def leaf_hash(entry_hash: str) -> bytes:
    return hashlib.sha256(b"\x00" + bytes.fromhex(entry_hash)).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleAccumulator:
    """The RFC 6962 tree hash of a growing list of leaves, in O(log n) memory: the roots of
    the perfect subtrees the leaves so far decompose into, largest first."""

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []

    def add(self, entry_hash: str) -> None:
        self.add_leaf(leaf_hash(entry_hash))

    def add_leaf(self, leaf: bytes) -> None:
        self.size += 1
        stack = self._stack
        stack.append((1, leaf))
        while len(stack) > 1 and stack[-1][0] == stack[-2][0]:
            (n, right), (_, left) = stack.pop(), stack.pop()
            stack.append((2 * n, _node(left, right)))

    def root(self) -> str:
        if not self._stack:
            return EMPTY_ROOT
        acc = self._stack[-1][1]
        for _, h in reversed(self._stack[:-1]):
            acc = _node(h, acc)
        return acc.hex()


def merkle_root(entry_hashes: Iterable[str]) -> str:
    acc = MerkleAccumulator()
    for h in entry_hashes:
        acc.add(h)
    return acc.root()


class MerkleLevels:
    """Every level of the RFC 6962 tree over a ledger prefix, kept as packed 32-byte hashes
    (about 64 bytes an entry), so that each audit path costs O(log n) once the levels are
    built in one O(n) pass. An odd last node rises to the next level unhashed, which is the
    same tree as RFC 6962's split at the largest power of two (a test compares the two)."""

    def __init__(self, leaves: bytes) -> None:
        self.levels = [leaves]
        while len(self.levels[-1]) > 32:
            level = self.levels[-1]
            count = len(level) // 32
            parents = bytearray()
            for i in range(0, count - 1, 2):
                parents += _node(level[32 * i : 32 * i + 32], level[32 * i + 32 : 32 * i + 64])
            if count % 2:
                parents += level[-32:]
            self.levels.append(bytes(parents))

    @property
    def size(self) -> int:
        return len(self.levels[0]) // 32

    @property
    def root(self) -> str:
        return self.levels[-1].hex() if self.levels[0] else EMPTY_ROOT

    def path(self, index: int) -> list[bytes]:
        """The audit path of leaf ``index`` (0-based), from the leaf's sibling upwards."""
        out = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level) // 32:
                out.append(level[32 * sibling : 32 * sibling + 32])
            index //= 2
        return out


def _path_root(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes | None:
    """The root an audit path leads to (RFC 9162, 2.1.3.2), or None if it cannot."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = _node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = _node(r, p)
        fn >>= 1
        sn >>= 1
    return r if sn == 0 else None


# Checkpoints -------------------------------------------------------------------------------


def clock() -> datetime:
    """Now (UTC); the periodic checkpoint's intervals are measured on it."""
    return datetime.now(UTC)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def signed_body(document: Mapping[str, Any]) -> bytes:
    """What a checkpoint's signature covers: its canonical JSON without the signature."""
    return canonical_json({k: v for k, v in document.items() if k != "signature"}).encode()


def check_signature(document: Mapping[str, Any], public_key: Ed25519PublicKey) -> str:
    """Empty if ``document`` is a checkpoint signed by ``public_key``; else why not."""
    if document.get("format") != FORMAT:
        return f"it is not a Cleanroom ledger checkpoint (format {document.get('format')!r})"
    if document.get("key_id") != key_id(public_key):
        return (
            "it names another signing key than the hub's (forged, from another hub, or checked "
            "with a key the hub rotated to: check with the first key the hub published)"
        )
    try:
        signature = base64.b64decode(str(document.get("signature", "")), validate=True)
        public_key.verify(signature, signed_body(document))
    except (InvalidSignature, ValueError):
        return "its signature does not verify (forged, or altered after signing)"
    return ""


def latest(session: Session) -> AuditCheckpoint | None:
    return session.scalars(
        select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)
    ).first()


def _hashes(session: Session, upto: int) -> Iterator[tuple[int, str]]:
    """(id, entry_hash) of entries 1..upto in id order, in batches."""
    last = 0
    while last < upto:
        rows = session.execute(
            select(AuditEntry.id, AuditEntry.entry_hash)
            .where(AuditEntry.id > last, AuditEntry.id <= upto)
            .order_by(AuditEntry.id)
            .limit(20000)
        ).all()
        if not rows:
            return
        for row in rows:
            yield int(row[0]), str(row[1])
        last = int(rows[-1][0])


def _content_hashes(session: Session, upto: int) -> Iterator[tuple[int, str]]:
    """(id, hash recomputed from the entry's content and link) of entries 1..upto in id
    order: what a witness compares, so an edit that leaves the stored hash alone shows."""
    columns = (
        AuditEntry.id,
        AuditEntry.prev_hash,
        AuditEntry.at,
        AuditEntry.actor,
        AuditEntry.action,
        AuditEntry.target,
        AuditEntry.detail,
    )
    last = 0
    while last < upto:
        rows = session.execute(
            select(*columns)
            .where(AuditEntry.id > last, AuditEntry.id <= upto)
            .order_by(AuditEntry.id)
            .limit(5000)
        ).all()
        if not rows:
            return
        for entry_id, prev, at, actor, action, target, detail in rows:
            yield int(entry_id), entry_hash(prev, at, actor, action, target, detail)
        last = int(rows[-1][0])


def create_checkpoint(
    session: Session,
    settings: Settings,
    *,
    actor: str = "system:checkpoint",
    next_key: Ed25519PublicKey | None = None,
) -> AuditCheckpoint | None:
    """Sign a checkpoint of the whole ledger as it stands (None if it has not grown since
    the last one). Refused when the ledger no longer extends the previous checkpoint or
    its entries since then do not chain: the hub never signs over a rewritten history; and
    when the signing key is not the one the checkpoints so far lead to. ``next_key`` makes it
    a handover (:func:`rotate_key`): signed by the old key, naming the new one."""
    from hub.audit.services import verify_range

    previous = latest(session)
    key = _continuing_key(settings, previous)
    head = session.get(AuditHead, 1)
    length = head.last_id if head else 0
    prev_length = previous.length if previous else 0
    if length <= prev_length:
        return None
    acc = MerkleAccumulator()
    new: list[str] = []
    head_hash = GENESIS
    expected = 1
    for entry_id, digest in _hashes(session, length):
        if entry_id != expected:
            raise Conflict(
                f"the ledger lacks entry {expected}: no checkpoint is signed over a broken "
                "ledger; verifying the ledger names the break."
            )
        acc.add(digest)
        if entry_id > prev_length:
            new.append(digest)
        if previous is not None and entry_id == prev_length and acc.root() != previous.merkle_root:
            raise Conflict(
                f"the ledger no longer extends checkpoint {previous.id}: no checkpoint is "
                "signed over a rewritten history; verify the ledger against the checkpoints."
            )
        head_hash = digest
        expected += 1
    if expected - 1 != length:
        raise Conflict(
            f"the ledger should hold {length} entries but holds {expected - 1}: no checkpoint "
            "is signed over a broken ledger; verifying the ledger names the break."
        )
    problems = verify_range(session, prev_length + 1, length)
    if problems:
        raise Conflict(
            f"{problems[0].message} No checkpoint is signed over a broken ledger; verifying "
            "the ledger names every break."
        )
    public = key.public_key()
    body: dict[str, Any] = {
        "format": FORMAT,
        "sequence": (previous.id if previous else 0) + 1,
        "at": _now(),
        "length": length,
        "head_hash": head_hash,
        "merkle_root": acc.root(),
        "previous": (
            {
                "sequence": previous.id,
                "length": previous.length,
                "digest": hashlib.sha256(previous.document.encode()).hexdigest(),
            }
            if previous
            else None
        ),
        "first_entry": prev_length + 1,
        "entry_hashes": new,
        "algorithm": "Ed25519; Merkle tree RFC 6962 (SHA-256) over the entry hashes",
        "key_id": key_id(public),
    }
    if next_key is not None:
        body["public_key"] = public_pem(public)
        body["next_key"] = {"key_id": key_id(next_key), "public_key": public_pem(next_key)}
    body["signature"] = base64.b64encode(key.sign(signed_body(body))).decode()
    checkpoint = AuditCheckpoint(
        id=body["sequence"],
        at=body["at"],
        length=length,
        head_hash=head_hash,
        merkle_root=body["merkle_root"],
        key_id=body["key_id"],
        document=canonical_json(body),
    )
    session.add(checkpoint)
    session.flush()
    detail: dict[str, Any] = {"length": length, "merkle_root": checkpoint.merkle_root}
    if next_key is not None:
        detail["next_key_id"] = key_id(next_key)
    record(
        session,
        actor=actor,
        action="audit.checkpoint",
        target=f"checkpoint:{checkpoint.id}",
        detail=detail,
    )
    return checkpoint


def rotate_key(session: Session, settings: Settings, *, actor: str) -> AuditCheckpoint:
    """Begin a rotation of the signing key: make the new key beside the old one
    (:func:`next_key_path`), record it, and sign a handover checkpoint with the old key that
    names the new one. The caller commits, then :func:`finish_rotation` moves the new key into
    place (the next checkpoint finishes it if the process stopped in between). An
    interrupted rotation is taken up again with the same new key."""
    previous = latest(session)
    old = _continuing_key(settings, previous)
    pending = next_key_path(settings)
    try:
        new = new_key(pending)
    except FileExistsError:
        new = _load_private(pending)
    if key_id(new.public_key()) == key_id(old.public_key()):
        raise Conflict("the new signing key is the old one: remove the .next file and rotate.")
    record(
        session,
        actor=actor,
        action="audit.key_rotated",
        target="ledger",
        detail={"key_id": key_id(old.public_key()), "next_key_id": key_id(new.public_key())},
    )
    made = create_checkpoint(session, settings, actor=actor, next_key=new.public_key())
    assert made is not None  # the ledger has just grown by the rotation's own entry
    return made


def finish_rotation(settings: Settings, handover: AuditCheckpoint) -> None:
    """Put the new key in place once its handover checkpoint is committed (the old key's
    file is replaced: keep the offline copy of the new one)."""
    pending = next_key_path(settings)
    want = handed_over_to(document_of(handover))
    try:
        if pending.is_file() and want == key_id(_load_private(pending).public_key()):
            os.replace(pending, settings.effective_checkpoint_key_path)
    except FileNotFoundError:
        pass  # a worker's checkpoint finished it first


def document_of(checkpoint: AuditCheckpoint | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(checkpoint, AuditCheckpoint):
        return dict(json.loads(checkpoint.document))
    return dict(checkpoint)


# Inclusion proofs ------------------------------------------------------------------------


def inclusion_proof(
    session: Session, entry_id: int, checkpoint: AuditCheckpoint | None = None
) -> dict[str, Any] | None:
    """The RFC 6962 audit path of entry ``entry_id`` in the tree ``checkpoint`` signed
    (default: the latest checkpoint covering it); None when no checkpoint covers it yet.
    A plain JSON-able dict; :func:`verify_inclusion` checks it."""
    return inclusion_proofs(session, [entry_id], checkpoint).get(entry_id)


def prover(
    session: Session, checkpoint: AuditCheckpoint | None = None
) -> Callable[[int], dict[str, Any] | None]:
    """A function giving :func:`inclusion_proof` of any entry against ``checkpoint`` (default:
    the latest), reading the ledger's hashes and building the tree once (an export asks for
    thousands). It gives None for an entry the checkpoint does not cover, and for every
    entry when the ledger no longer holds what the checkpoint signed."""
    if checkpoint is None:
        checkpoint = latest(session)
    if checkpoint is None:
        return lambda _entry_id: None
    leaves = bytearray()
    hashes: list[str] = []
    for _, digest in _hashes(session, checkpoint.length):
        hashes.append(digest)
        leaves += leaf_hash(digest)
    tree = MerkleLevels(bytes(leaves))
    if tree.size != checkpoint.length or tree.root != checkpoint.merkle_root:
        return lambda _entry_id: None  # nothing can be proved against this checkpoint
    signed = checkpoint

    def prove(entry_id: int) -> dict[str, Any] | None:
        if not 0 < entry_id <= signed.length:
            return None
        return {
            "entry_id": entry_id,
            "entry_hash": hashes[entry_id - 1],
            "checkpoint": signed.id,
            "tree_size": signed.length,
            "merkle_root": signed.merkle_root,
            "leaf_index": entry_id - 1,
            "path": [h.hex() for h in tree.path(entry_id - 1)],
            "algorithm": "RFC 6962 audit path, SHA-256",
        }

    return prove


def inclusion_proofs(
    session: Session, entry_ids: Iterable[int], checkpoint: AuditCheckpoint | None = None
) -> dict[int, dict[str, Any]]:
    """:func:`inclusion_proof` for many entries at once, building the tree once. Entries no
    checkpoint covers are left out."""
    prove = prover(session, checkpoint)
    found = {entry_id: prove(entry_id) for entry_id in sorted(set(entry_ids))}
    return {entry_id: proof for entry_id, proof in found.items() if proof is not None}


def verify_inclusion(
    proof: Mapping[str, Any], entry_hash: str, checkpoint: AuditCheckpoint | Mapping[str, Any]
) -> bool:
    """Whether ``proof`` shows the entry whose hash is ``entry_hash`` in the tree that
    ``checkpoint`` (a stored checkpoint or its signed document) commits to. The checkpoint's
    own signature is checked separately (:func:`check_signature`)."""
    doc = document_of(checkpoint)
    try:
        size, root = int(doc["length"]), str(doc["merkle_root"])
        if int(proof["tree_size"]) != size or int(proof["checkpoint"]) != int(doc["sequence"]):
            return False
        path = [bytes.fromhex(str(p)) for p in proof["path"]]
        reached = _path_root(int(proof["leaf_index"]), size, leaf_hash(entry_hash), path)
    except (KeyError, TypeError, ValueError):
        return False
    return reached is not None and reached.hex() == root


# Witnesses ----------------------------------------------------------------------------------


def write_folder(folder: Path, documents: Iterable[str], public_key: str) -> int:
    """Write checkpoints (each its file, written whole or not at all) and the hub's public
    key into ``folder``; how many checkpoint files were new."""
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    key_path = folder / PUBLIC_KEY_FILE
    if not key_path.exists() or key_path.read_text() != public_key:
        _write_atomic(key_path, public_key)
    for document in documents:
        path = folder / file_name(int(json.loads(document)["sequence"]))
        if path.exists() and path.read_text() == document:
            continue
        _write_atomic(path, document)
        written += 1
    return written


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class PushRefused(Exception):
    """A witness store the hub will not write to (its address is not one it understands)."""


def _push(store: str, documents: list[str], public_key: str, settings: Settings) -> None:
    """Deliver checkpoints to a witness store: ``file:///folder`` or ``s3://bucket/prefix``."""
    parsed = urlparse(store)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise PushRefused(f"{store} names another machine; use file:///folder")
        folder = Path(unquote(parsed.path))
        if not folder.is_absolute():
            raise PushRefused(f"{store} is not an absolute folder")
        write_folder(folder, documents, public_key)
    elif parsed.scheme == "s3":
        if not parsed.netloc:
            raise PushRefused(f"{store} names no bucket; use s3://bucket/prefix")
        from hub.storage.s3 import make_s3_client

        client = make_s3_client(settings, connect_timeout=5, read_timeout=30, max_attempts=2)
        prefix = parsed.path.strip("/")
        prefix = f"{prefix}/" if prefix else ""
        client.put_object(
            Bucket=parsed.netloc, Key=prefix + PUBLIC_KEY_FILE, Body=public_key.encode()
        )
        for document in documents:
            name = file_name(int(json.loads(document)["sequence"]))
            client.put_object(Bucket=parsed.netloc, Key=prefix + name, Body=document.encode())
    else:
        raise PushRefused(f"{store!r} is neither file:///folder nor s3://bucket/prefix")


def check_store(store: str) -> str:
    """``store`` cleaned, or a :class:`BadRequest` saying what a witness store looks like."""
    store = store.strip()
    if not store:
        return ""
    parsed = urlparse(store)
    ok = (
        parsed.scheme == "file"
        and parsed.netloc in ("", "localhost")
        and Path(unquote(parsed.path)).is_absolute()
    ) or (parsed.scheme == "s3" and bool(parsed.netloc))
    if not ok or len(store) > 500:
        raise BadRequest(
            f"witness store {store[:80]!r}: give a folder as file:///path/to/folder or an S3 "
            "prefix as s3://bucket/prefix (at most 500 characters), or leave it empty for "
            "the institution's inbox only."
        )
    return store


def set_witness_store(session: Session, slug: str, store: str, *, actor: str) -> Institution:
    institution = session.scalars(select(Institution).where(Institution.slug == slug)).first()
    if institution is None:
        raise NotFound(f"no institution {slug!r}; `cleanroom institution list` shows them.")
    store = check_store(store)
    if store != institution.witness_store:
        # A new store receives every checkpoint so far: a witness needs the whole series.
        session.execute(delete(WitnessPush).where(WitnessPush.institution_id == institution.id))
    institution.witness_store = store
    session.flush()
    record(
        session,
        actor=actor,
        action="institution.witness_store",
        target=f"institution:{slug}",
        detail={"witness_store": institution.witness_store or "inbox only"},
    )
    return institution


@dataclass
class PushReport:
    pushed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def push_pending(
    session: Session,
    settings: Settings,
    *,
    actor: str = "system:checkpoint",
    retry_before: str | None = None,
) -> PushReport:
    """Deliver every checkpoint an institution has not yet received (new ones, and those
    whose push failed before) to its witness store, or announce them in its admins' inbox.
    Each institution's outcome is a ledger entry; a failure keeps the checkpoint pending.
    ``retry_before`` (ISO time): an institution whose last failure is later waits, unless
    a checkpoint it was never sent is pending."""
    from hub.notices import services as notices
    from hub.notices.models import Notice

    report = PushReport()
    checkpoints = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)).all()
    if not checkpoints:
        return report
    public = anchor_public_pem(session, settings)
    for institution in session.scalars(select(Institution).order_by(Institution.slug)).all():
        done = {
            p.checkpoint_id: p
            for p in session.scalars(
                select(WitnessPush).where(WitnessPush.institution_id == institution.id)
            )
        }
        pending = [c for c in checkpoints if c.id not in done or done[c.id].state != "pushed"]
        if not pending:
            continue
        if retry_before is not None and all(
            c.id in done and done[c.id].at.replace("Z", "+00:00") > retry_before for c in pending
        ):
            continue  # failed within this interval: tried again at the next
        store = institution.witness_store or ""
        sequences = [c.id for c in pending]
        state, message = "pushed", ""
        if store:
            try:
                _push(store, [c.document for c in pending], public, settings)
            except PushRefused as err:
                state, message = "refused", str(err)
            except Exception as err:  # noqa: BLE001 - any store failure is retried later
                state, message = "failed", f"{type(err).__name__}: {err}"[:500]
        else:
            # Whom to tell: the institution's users who may download checkpoints (its admins).
            members = session.scalars(
                select(User).where(User.institution_id == institution.id)
            ).all()
            waiting = set(
                session.scalars(
                    select(Notice.user_id).where(
                        Notice.link == CHECKPOINTS_PAGE, Notice.read_at.is_(None)
                    )
                )
            )
            # One unread checkpoint notice at a time: an hourly reminder would bury the inbox.
            admins = [
                u for u in members if u.id not in waiting and may(u, "read", "ledger/checkpoints")
            ]
            notices.notify(
                session,
                admins,
                f"Ledger checkpoint {sequences[-1]} signed: keep a copy",
                "The hub signed a new checkpoint of its audit ledger. Download it and keep it: "
                "with your copies anyone can check that the ledger was not changed afterwards.",
                CHECKPOINTS_PAGE,
            )
        for c in pending:
            push = done.get(c.id)
            if push is None:
                push = WitnessPush(checkpoint_id=c.id, institution_id=institution.id)
                session.add(push)
            push.state = "pushed" if state == "pushed" else "failed"
            push.attempts = (push.attempts or 0) + 1
            push.store = store
            push.message = message
            push.at = _now()
        action = {
            "pushed": "audit.checkpoint_pushed",
            "failed": "audit.checkpoint_push_failed",
            "refused": "audit.checkpoint_push_refused",
        }[state]
        detail: dict[str, Any] = {
            "checkpoints": sequences,
            "store": store or "inbox",
        }
        if message:
            detail["reason"] = message
        record(
            session,
            actor=actor,
            action=action,
            target=f"institution:{institution.slug}",
            detail=detail,
        )
        getattr(report, state).append(institution.slug)
    session.flush()
    return report


def _grew(session: Session, since: int) -> bool:
    """Whether the ledger holds entries after ``since`` other than checkpointing's own."""
    return (
        session.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.id > since, AuditEntry.action.not_in(HOUSEKEEPING))
        )
        or 0
    ) > 0


@periodic("audit.checkpoint", seconds=60)
def checkpoint_due(database: Database, settings: Settings) -> AuditCheckpoint | None:
    """Every ``checkpoint_interval_minutes``: sign a checkpoint if the ledger has grown, and
    push what institutions have not yet received (failed pushes are retried once an
    interval). Safe to run in several workers at once: the loser of a race changes nothing."""
    minutes = settings.checkpoint_interval_minutes
    if minutes <= 0:
        return None
    cutoff = (clock() - timedelta(minutes=minutes)).isoformat(timespec="seconds")
    made, refused, previous = None, "", None
    try:
        with database.session() as s:
            previous = latest(s)
            # The first one an interval after the ledger began (not at a new hub's start).
            since = (
                previous.at
                if previous
                else s.scalar(select(AuditEntry.at).order_by(AuditEntry.id).limit(1))
            )
            due = since is not None and since.replace("Z", "+00:00") <= cutoff
            if due and (previous is None or _grew(s, previous.length)):
                made = create_checkpoint(s, settings)
    except Conflict as err:
        log.error("ledger checkpoint refused: %s", err.message)
        refused = err.message
    except sa_exc.IntegrityError:
        return None  # another worker signed this checkpoint at the same moment
    if refused:
        # An alarm in the ledger itself, each interval until someone looks.
        with database.session() as s:
            record(
                s,
                actor="system:checkpoint",
                action="audit.checkpoint_refused",
                target="ledger",
                detail={"reason": refused[:1000]},
            )
        return None
    if previous is None and made is None:
        return None
    try:
        with database.session() as s:
            push_pending(s, settings, retry_before=cutoff)
    except sa_exc.IntegrityError:
        pass  # another worker pushed at the same moment; the next interval catches up
    return made


# Verification from witnesses -----------------------------------------------------------------


@dataclass(frozen=True)
class WitnessVerification:
    """The ledger against one party's checkpoints: every checkpoint's signature, and that
    the ledger still extends each (per-entry hashes, Merkle roots, head hashes)."""

    checkpoints: int
    covered: int  # entries the checkpoints cover
    entries: int  # entries in the ledger
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def entry_id(self) -> int | None:
        entries = [p.entry_id for p in self.problems if p.entry_id > 0]
        return min(entries) if entries else None

    @property
    def kind(self) -> str:
        first = self.entry_id
        return next((p.kind for p in self.problems if p.entry_id == first), "")

    def __str__(self) -> str:
        if self.ok:
            lines = [
                f"the ledger extends all {self.checkpoints} checkpoint(s) of the witness: "
                f"entries 1-{self.covered} are as signed."
            ]
            if self.entries > self.covered:
                lines.append(
                    f"  entries {self.covered + 1}-{self.entries} are newer than the latest "
                    "checkpoint: checked by the chain only."
                )
        else:
            lines = [
                f"the ledger does NOT extend the witness's checkpoints: {len(self.problems)} "
                "problem(s)."
            ]
            if self.entry_id is not None:
                lines.append(f"  first bad entry: {self.entry_id} ({self.kind}).")
            lines += [f"  {p.message}" for p in self.problems[:50]]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class WitnessFolderError(BadRequest):
    """The witness folder cannot be read."""


def read_folder(
    folder: Path, public_key: Ed25519PublicKey | None = None
) -> tuple[list[dict[str, Any]], list[Problem], list[str]]:
    """The validly signed checkpoints in ``folder`` (by sequence), the problems with the
    others, and notes. The key: ``public_key``, else the folder's ``hub-public-key.pem``."""
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise WitnessFolderError(
            f"the witness folder {folder} cannot be read ({err.strerror or err}): give the "
            "folder holding the checkpoint-NNNNNN.json files and hub-public-key.pem."
        ) from None
    if public_key is None:
        try:
            public_key = load_public_key((folder / PUBLIC_KEY_FILE).read_bytes())
        except (OSError, ValueError) as err:
            raise WitnessFolderError(
                f"the witness folder {folder} has no readable {PUBLIC_KEY_FILE} ({err}): copy "
                "the hub's public key there (`cleanroom audit public-key`) or pass --public-key."
            ) from None
    problems: list[Problem] = []
    good: dict[int, dict[str, Any]] = {}
    documents: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        match = FILE_PATTERN.match(name)
        if not match:
            continue
        try:
            document = json.loads((folder / name).read_text())
            if not isinstance(document, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as err:
            problems.append(
                Problem(0, "unreadable", f"{name} cannot be read as a checkpoint ({err}).")
            )
            continue
        documents.append((name, document))
    # Each checkpoint must be signed by the key in force at its place in the chain: the
    # witness's key, then the key each handover checkpoint (signed by the old) names.
    documents.sort(key=lambda pair: _sequence_of(pair[1]))
    notes: list[str] = []
    active = public_key
    for name, document in documents:
        why = check_signature(document, active)
        if why:
            problems.append(
                Problem(0, "signature", f"{name} is not a checkpoint signed by the hub: {why}.")
            )
            continue
        sequence = int(document["sequence"])
        if sequence in good and signed_body(good[sequence]) != signed_body(document):
            problems.append(
                Problem(0, "signature", f"the hub signed two different checkpoints {sequence}.")
            )
        good[sequence] = document
        following = _handover_key(document)
        if following is not None:
            active = following
            notes.append(
                f"checkpoint {sequence} handed signing over to key {key_id(active)[:16]}… "
                "(a key rotation): later checkpoints are checked with it."
            )
    if not good and not problems:
        raise WitnessFolderError(
            f"the witness folder {folder} holds no checkpoint-NNNNNN.json file: nothing to "
            "verify against."
        )
    return [good[s] for s in sorted(good)], problems, notes


def _sequence_of(document: Mapping[str, Any]) -> int:
    try:
        return int(document.get("sequence", 0))
    except (TypeError, ValueError):
        return 0


def _handover_key(document: Mapping[str, Any]) -> Ed25519PublicKey | None:
    """The next key a validly signed handover checkpoint names, if its id matches its key."""
    handover = document.get("next_key")
    if not isinstance(handover, dict):
        return None
    try:
        key = load_public_key(str(handover.get("public_key", "")).encode())
    except ValueError:
        return None
    return key if key_id(key) == handover.get("key_id") else None


def _unlisted_problem(
    session: Session, doc: Mapping[str, Any], gap_start: int, first: int
) -> Problem:
    """The ledger's entries ``gap_start``..``first - 1`` no longer give ``doc``'s Merkle root,
    and the witness lacks the checkpoint that listed them. Entry ``first`` matched the
    witness, so its link is authentic: walking back along the links finds the latest entry
    that differs (there may be earlier ones)."""
    expected = session.scalar(select(AuditEntry.prev_hash).where(AuditEntry.id == first))
    hi = first - 1
    while expected is not None and hi >= gap_start:
        rows = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.id <= hi, AuditEntry.id >= gap_start)
            .order_by(AuditEntry.id.desc())
            .limit(5000)
        ).all()
        if not rows:
            break
        for e in rows:
            if entry_hash(e.prev_hash, e.at, e.actor, e.action, e.target, e.detail) != expected:
                return Problem(
                    e.id,
                    "edited",
                    f"entry {e.id} differs from what checkpoint {doc['sequence']} signed (its "
                    f"Merkle root over entries 1-{doc['length']} no longer matches): it was "
                    f"edited or rewritten. Entries {gap_start}-{e.id - 1} cannot be checked "
                    "one by one because the witness folder lacks the checkpoint that lists them.",
                )
            expected = e.prev_hash
        hi = rows[-1].id - 1
    return Problem(
        gap_start,
        "edited",
        f"the ledger's entries {gap_start}-{doc['length']} do not match checkpoint "
        f"{doc['sequence']}'s Merkle root: an entry among them was edited or rewritten (the "
        "witness folder does not list them one by one).",
    )


def verify_witnessed(
    session: Session, folder: Path, public_key: Ed25519PublicKey | None = None
) -> WitnessVerification:
    """Check that the ledger still extends every checkpoint in ``folder`` (one party's
    copies): per-entry hashes where the folder lists them, the Merkle root and head hash at
    each checkpoint, and that no checkpoint's entries are missing. Names the first bad entry."""
    documents, problems, notes = read_folder(folder, public_key)
    # Checkpoints absent from the folder: their entries are checked by later roots only.
    expected_sequence = 1
    for doc in documents:
        if int(doc["sequence"]) > expected_sequence:
            gap = range(expected_sequence, int(doc["sequence"]))
            names = ", ".join(str(s) for s in gap)
            notes.append(
                f"the witness folder lacks checkpoint(s) {names}: their entries are checked "
                "against later checkpoints' Merkle roots only (fetch them to check each entry)."
            )
        expected_sequence = int(doc["sequence"]) + 1
    count = int(session.scalar(select(func.count()).select_from(AuditEntry)) or 0)
    covered = max((int(d["length"]) for d in documents), default=0)
    first_bad: Problem | None = None
    acc = MerkleAccumulator()
    rows = _content_hashes(session, covered)
    position = 0
    ledger_end = False
    for doc in documents:
        length, first = int(doc["length"]), int(doc["first_entry"])
        listed = doc.get("entry_hashes") or []
        gap_start = position + 1
        digest = GENESIS
        while position < length:
            position += 1
            row = None if ledger_end else next(rows, None)
            if row is None:
                ledger_end = True
                if first_bad is None:
                    first_bad = Problem(
                        position,
                        "truncated",
                        f"the ledger ends at entry {position - 1} but checkpoint "
                        f"{doc['sequence']} (signed {doc['at']}) covers {length} entries: "
                        f"entries {position}-{length} are missing (the tail was deleted, or the "
                        "database was restored from an older backup).",
                    )
                break
            entry_id, digest = row
            acc.add(digest)
            index = position - first
            want = listed[index] if 0 <= index < len(listed) else None
            if first_bad is not None:
                continue
            if entry_id != position:
                first_bad = Problem(
                    position,
                    "deleted",
                    f"entry {position}, which checkpoint {doc['sequence']} lists, is missing "
                    f"from the ledger (the next entry is {entry_id}).",
                )
            elif want is not None and digest != want:
                moved = session.scalar(select(AuditEntry.id).where(AuditEntry.entry_hash == want))
                if moved is not None and moved != position:
                    first_bad = Problem(
                        position,
                        "reordered",
                        f"entry {position} is not the entry checkpoint {doc['sequence']} "
                        f"recorded there: that entry is now entry {moved} (entries were "
                        "reordered).",
                    )
                else:
                    first_bad = Problem(
                        position,
                        "edited",
                        f"entry {position} differs from what checkpoint {doc['sequence']} "
                        f"recorded (hash {want[:12]}…, now {digest[:12]}…): it was edited or the "
                        "ledger was rewritten from there.",
                    )
        if ledger_end:
            break
        if first_bad is None and (acc.root() != doc["merkle_root"] or digest != doc["head_hash"]):
            first_bad = _unlisted_problem(session, doc, gap_start, first)
    if first_bad is not None:
        problems.insert(0, first_bad)
    return WitnessVerification(len(documents), covered, count, tuple(problems), tuple(notes))
