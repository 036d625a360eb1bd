"""Which passwords are accepted (OWASP ASVS 4.0, V2.1): at least ``password_min_length``
characters, at most 1,000, and not guessable — not one of the 30,000 most common passwords
of real breaches, not a variation of the user's own names, not a keyboard walk or a
repetition. The lists ship with the ``zxcvbn`` package (Dropbox's estimator: frequency
lists of breached passwords, names and words); nothing is fetched at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from hub.errors import BadRequest

MAX_LENGTH = 1_000  # argon2 hashes any length; this only bounds the work per attempt
MIN_SCORE = 3
"""zxcvbn's score: 3 is "safely unguessable: moderate protection from offline slow-hash
scenarios" (about 10⁸ guesses or more)."""


@lru_cache(maxsize=1)
def _common() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"])


def problem(password: str, min_length: int, user_inputs: Iterable[str] = ()) -> str | None:
    """Why ``password`` is refused, in words a user can act on; None when it is fine."""
    if len(password) < min_length:
        return f"a password needs at least {min_length} characters (this one has {len(password)})."
    if len(password) > MAX_LENGTH:
        return f"a password may have at most {MAX_LENGTH:,} characters."
    if not password.strip():
        return "a password of spaces only is refused."
    if password.lower() in _common():
        return "this password is one of the most common in published breaches; choose another."
    from zxcvbn import zxcvbn

    inputs = [w for w in user_inputs if w] + ["cleanroom"]
    found = zxcvbn(password[:100], user_inputs=inputs)
    if found["score"] < MIN_SCORE:
        warning = found["feedback"].get("warning") or "it is easy to guess"
        hint = " ".join(found["feedback"].get("suggestions") or [])
        return (
            f"this password is too easy to guess: {warning.rstrip('.').lower()}. "
            + (hint + " " if hint else "")
            + "A few unrelated words, or a long random password from a password manager, "
            "will do."
        ).replace("  ", " ")
    return None


def check(password: str, min_length: int, user_inputs: Iterable[str] = ()) -> None:
    """Raise :class:`BadRequest` saying why ``password`` is refused."""
    found = problem(password, min_length, user_inputs)
    if found is not None:
        raise BadRequest(found, code="weak_password")
