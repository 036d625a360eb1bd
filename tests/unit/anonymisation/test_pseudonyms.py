"""Keyed pseudonyms: determinism, no collisions, key separation, rotation without raw values."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anonymisation import pseudonyms
from anonymisation.pseudonyms import is_pseudonym, normalise, pseudonymise, rotate

K1 = b"k1-0123456789abcdef"
K2 = b"k2-0123456789abcdef"
K3 = b"k3-0123456789abcdef"

keys = st.binary(min_size=16, max_size=48)
raw = st.text(min_size=1, max_size=20).filter(lambda s: normalise(s) != "")
raw_lists = st.lists(raw, min_size=1, max_size=30)
fast = settings(max_examples=60, deadline=None)


def test_shape_nulls_and_whitespace() -> None:
    out = pseudonymise(pd.Series([" A1", "A1", None, "A9999  21 123456", "A9999 21 123456"]), K1)
    assert out[0] == out[1] and is_pseudonym(out[0])
    assert out[2] is None
    assert out[3] == out[4]
    assert out.index.equals(pd.RangeIndex(5))


def test_single_key_is_plain_hmac_sha256() -> None:
    """One key: the pseudonym is HMAC-SHA256(key, stripped value), first 32 hex characters."""
    import hashlib
    import hmac

    values = pd.Series(["COI-1", " DIN 7", None])
    expected = [
        hmac.new(K1, v.encode(), hashlib.sha256).hexdigest()[:32] for v in ("COI-1", "DIN 7")
    ] + [None]
    assert pseudonymise(values, K1).tolist() == expected


def test_computed_once_per_distinct_value(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = pseudonyms._hmac_hex
    monkeypatch.setattr(pseudonyms, "_hmac_hex", lambda k, t: calls.append(t) or real(k, t))
    pseudonymise(pd.Series(["a", "b", "a", "a", None, "b"] * 1000), K1)
    assert sorted(calls) == ["a", "b"]


def test_short_keys_rejected() -> None:
    with pytest.raises(ValueError):
        pseudonymise(pd.Series(["x"]), b"short")


@fast
@given(raw_lists, keys)
def test_deterministic_across_calls_and_tables(values: list[str], key: bytes) -> None:
    whole = pseudonymise(pd.Series(values), key)
    half = len(values) // 2
    parts = pd.concat(
        [pseudonymise(pd.Series(values[:half]), key), pseudonymise(pd.Series(values[half:]), key)],
        ignore_index=True,
    )
    assert whole.tolist() == parts.tolist()


@fast
@given(st.lists(raw, min_size=2, max_size=50, unique_by=normalise), keys)
def test_injective_on_sample(values: list[str], key: bytes) -> None:
    out = pseudonymise(pd.Series(values), key)
    assert out.nunique() == len(values)


@fast
@given(raw_lists, keys, keys)
def test_key_separation(values: list[str], a: bytes, b: bytes) -> None:
    if a == b:
        return
    pa, pb = pseudonymise(pd.Series(values), a), pseudonymise(pd.Series(values), b)
    assert not (pa == pb).any()
    assert not set(pa) & set(pb)


@fast
@given(raw_lists, keys, keys)
def test_rotation_keeps_equality_and_matches_new_uploads(
    values: list[str], old: bytes, new: bytes
) -> None:
    pool = pseudonymise(pd.Series(values), old)
    rotated = rotate(pool, new)
    for i in range(len(values)):
        for j in range(len(values)):
            assert (pool[i] == pool[j]) == (rotated[i] == rotated[j])
    # a site uploading raw values after the rotation joins the rotated pool
    assert rotated.tolist() == pseudonymise(pd.Series(values), [old, new]).tolist()


def test_two_rotations_equal_three_key_chain() -> None:
    values = pd.Series(["COI-1", "COI-2", None, "COI-1"])
    pool = rotate(rotate(pseudonymise(values, K1), K2), K3)
    assert pool.tolist() == pseudonymise(values, [K1, K2, K3]).tolist()
    assert pool[2] is None and pool[0] == pool[3] != pool[1]
    # the old pseudonyms (or anyone holding only old keys) no longer match the pool
    assert not set(pool.dropna()) & set(pseudonymise(values, [K1, K2]).dropna())


def test_rotate_refuses_raw_values() -> None:
    with pytest.raises(ValueError, match="not pseudonyms"):
        rotate(pd.Series(["COI-1", None]), K2)
