"""The identifier classes: how de-identification must treat a column.

The library owns this vocabulary; the common data model declares one class per column in
its terms (``contracts.cdm`` imports :class:`IdentifierClass` from here), and the classifier,
the engine and the command line speak it. The module imports nothing, so ``cleanroom
--help`` can list the classes without loading Presidio.
"""

from __future__ import annotations

from enum import StrEnum


class IdentifierClass(StrEnum):
    """How de-identification must treat a column."""

    DIRECT = "direct_identifier"
    LINKABLE = "linkable_identifier"
    QUASI = "quasi_identifier"
    SENSITIVE = "sensitive"
    FREE_TEXT = "free_text"
    SAFE = "safe"


# The classes' names as plain strings, in declaration order (reports and JSON carry these).
CLASSES: tuple[str, ...] = tuple(c.value for c in IdentifierClass)
DIRECT: str = IdentifierClass.DIRECT.value
LINKABLE: str = IdentifierClass.LINKABLE.value
QUASI: str = IdentifierClass.QUASI.value
SENSITIVE: str = IdentifierClass.SENSITIVE.value
FREE_TEXT: str = IdentifierClass.FREE_TEXT.value
SAFE: str = IdentifierClass.SAFE.value
# Promotion order: a hint is only ever replaced by something further right.
SEVERITY: dict[str, int] = {SAFE: 0, SENSITIVE: 1, QUASI: 2, LINKABLE: 3, FREE_TEXT: 4, DIRECT: 5}
