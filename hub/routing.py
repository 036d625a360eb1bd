"""URL converters for every blueprint: an ``<int:...>`` id matches only ids the database can
hold, so a larger one is an ordinary 404 (the hub's error shape) instead of a database error.

Primary keys are ``Integer`` columns: 32-bit on PostgreSQL, where a larger value fails the
statement ("out of range"), and 64-bit on SQLite, where a larger one overflows before the
query runs. :func:`init_app` must run before the blueprints are registered: a rule takes its
converter when it is added.
"""

from __future__ import annotations

import builtins

from flask import Flask
from werkzeug.routing import IntegerConverter, Map

MAX_ID = 2**31 - 1
"""The largest id any table can hold (PostgreSQL ``integer``). Numbers that are not routed
(query parameters, JSON bodies) are checked against it where they are read."""


class IdConverter(IntegerConverter):
    """``<int:...>`` bounded by :data:`MAX_ID`; a rule's own ``max`` may only lower it.
    (The parameters keep werkzeug's names: rules pass them as ``<int(max=9):n>``.)"""

    def __init__(
        self,
        map: Map,
        fixed_digits: int = 0,
        min: int | None = None,
        max: int | None = None,
        signed: bool = False,
    ) -> None:
        bound = MAX_ID if max is None else builtins.min(max, MAX_ID)
        super().__init__(map, fixed_digits, min, bound, signed)


def init_app(app: Flask) -> None:
    """Make ``<int:...>`` an :class:`IdConverter` in ``app``'s routes."""
    app.url_map.converters["int"] = IdConverter
