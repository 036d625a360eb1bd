"""Keyed pseudonyms for linkable identifiers, with key rotation that never needs raw values.

A pseudonym is a truncated HMAC-SHA256 (128 bits, 32 lowercase hex characters) of the
whitespace-normalised value. The same value gives the same pseudonym in every table and at
every site sharing the key, so links (chain of identity, DIN, lot) survive pooling; without
the key nobody can recompute or reverse it, not even by trying every possible DIN.

Key rotation: a key *chain*
---------------------------
The pool holds pseudonyms only, so rotation must be a function of pseudonyms. We therefore
define the pseudonym under a chain of keys ``(k1, ..., kn)`` (oldest first) as nested HMACs::

    P_1(x)   = HMAC(k1, norm(x))
    P_n(x)   = HMAC(kn, P_{n-1}(x))          (on the 32-hex text of the previous pseudonym)

* Rotating the pool from epoch n-1 to n is ``rotate(pool_pseudonyms, kn)``: each stored
  ``p`` becomes ``HMAC(kn, p)``. Only ``kn`` is needed, never a raw value, and the old key
  is not needed either.
* New uploads after the rotation are pseudonymised with the whole chain
  (``pseudonymise(values, [k1, ..., kn])``), which by construction equals the rotated value:
  ``rotate(P_{n-1}(x), kn) == P_n(x)``. Joins between old (rotated) and new data hold.
* Equality is preserved exactly: HMAC is a deterministic function, so ``a == b`` implies
  ``rot(a) == rot(b)``; the converse holds unless HMAC collides on 128-bit outputs
  (probability ~ m^2 / 2^129 for m distinct values, negligible).

Security argument. Each layer is a PRF keyed with an independent secret. Whoever learns an
old key ``ki`` (or even every key but ``kn``) can compute the inner layers for guessed raw
values, but cannot link them to the pool, whose values sit under the PRF keyed with the
secret ``kn``; a leaked *pseudonym table* from before the rotation no longer matches the
pool either. So rotation restores protection after the compromise of an older key or an old
extract, which is what rotation is for. What it cannot do is protect against a leak of the
*current* key together with the older keys (the whole chain is then the pseudonymisation
key); the chain must therefore be held by the key custodians/sites, never by the pool. The
pool operator can perform a rotation given only ``kn``. Cost grows by one HMAC per epoch per
distinct value, which is negligible.

A single key (``bytes``) is the one-epoch chain: HMAC-SHA256(key, normalised value).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

PSEUDONYM_HEX = 32  # 128 bits: collisions are not a practical concern
_PSEUDONYM_RE = re.compile(rf"[0-9a-f]{{{PSEUDONYM_HEX}}}")
_SPACES = re.compile(r"\s+")

KeyChain = bytes | Sequence[bytes]


def _chain(key: KeyChain) -> list[bytes]:
    keys = [key] if isinstance(key, bytes | bytearray) else list(key)
    if not keys:
        raise ValueError("at least one key is required")
    for k in keys:
        if not isinstance(k, bytes | bytearray) or len(k) < 16:
            raise ValueError("keys must be bytes of at least 16 bytes")
    return [bytes(k) for k in keys]


def _hmac_hex(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def normalise(value: object) -> str:
    """Text form a pseudonym is computed on: trimmed, inner whitespace runs collapsed."""
    return _SPACES.sub(" ", str(value)).strip()


def _map_distinct(values: pd.Series, fn) -> pd.Series:
    """Apply ``fn`` once per distinct non-null value; nulls stay null (as ``None``)."""
    out = pd.Series(np.full(len(values), None, dtype=object), index=values.index)
    present = values.notna()
    if not present.any():
        return out
    codes, uniques = pd.factorize(values[present])
    mapped = pd.Series([fn(u) for u in uniques], dtype="object")
    out[present] = mapped.to_numpy()[codes]
    return out


def pseudonymise(values: pd.Series, key: KeyChain) -> pd.Series:
    """Pseudonyms of ``values`` under ``key`` (one key or a chain, oldest first).

    Computed once per distinct value; nulls are kept; ``" A1"`` and ``"A1"`` match."""
    keys = _chain(key)

    def one(value: object) -> str:
        p = normalise(value)
        for k in keys:
            p = _hmac_hex(k, p)
        return p

    return _map_distinct(values, one)


def is_pseudonym(value: object) -> bool:
    """True for text shaped like a pseudonym (32 lowercase hex characters)."""
    return isinstance(value, str) and _PSEUDONYM_RE.fullmatch(value) is not None


def rotate(pseudonyms: pd.Series, new_key: bytes) -> pd.Series:
    """Move pool pseudonyms to the next key epoch: ``p -> HMAC(new_key, p)``.

    Raises ``ValueError`` if a value is not a pseudonym, so raw identifiers can never be
    "rotated" into the pool by mistake."""
    (key,) = _chain(new_key)
    present = pseudonyms.dropna()
    bad = [v for v in pd.unique(present) if not is_pseudonym(v)]
    if bad:
        raise ValueError(f"{len(bad)} value(s) are not pseudonyms; refusing to rotate")
    return _map_distinct(pseudonyms, lambda p: _hmac_hex(key, p))
