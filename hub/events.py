"""Events one domain emits and another reacts to, so that neither imports the other.

A domain calls :func:`emit` when something happened that other domains must follow (a
dataset version released or withdrawn, users' rights changed), inside the caller's
transaction. The reactions registered with :func:`on` run at once, in registration order, in
that same transaction, and their results come back to the emitter (a withdrawal collects the
storage objects to delete once it has committed).

The modules holding the built-in reactions are listed in :data:`SUBSCRIBER_MODULES` and
imported by the first :func:`emit`, as job bodies are (``BUILTIN_TASK_MODULES`` in
:mod:`hub.jobs.services`), so a reaction never depends on which entry point (app, worker,
CLI, a test) happened to import its module. An event nobody reacts to is an error rather
than a silent no-op: a withdrawal whose synthetic versions stayed served would be a leak.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

#: A dataset version entered the pool: ``session``, ``settings``, ``version``, ``actor``.
DATASET_RELEASED = "dataset.released"
#: A dataset version left the pool: ``session``, ``version``, ``actor``; each reaction
#: returns the storage keys to delete after the commit.
DATASET_WITHDRAWN = "dataset.withdrawn"
#: Users' roles, institutions or status changed: ``session`` (flushed).
USERS_CHANGED = "accounts.users_changed"
EVENTS = (DATASET_RELEASED, DATASET_WITHDRAWN, USERS_CHANGED)

# Modules whose import registers the built-in reactions.
SUBSCRIBER_MODULES: tuple[str, ...] = ("hub.synth.services", "hub.agreements.services")

Reaction = Callable[..., Any]
R = TypeVar("R", bound=Reaction)
_REACTIONS: dict[str, list[Reaction]] = {event: [] for event in EVENTS}


def on(event: str) -> Callable[[R], R]:
    """Register the decorated function as a reaction to ``event`` (once, however often its
    module is reloaded by name)."""
    if event not in _REACTIONS:
        raise ValueError(f"unknown event {event!r}; known events: {', '.join(EVENTS)}")

    def register(fn: R) -> R:
        reactions = _REACTIONS[event]
        name = f"{fn.__module__}.{fn.__qualname__}"
        reactions[:] = [r for r in reactions if f"{r.__module__}.{r.__qualname__}" != name]
        reactions.append(fn)
        return fn

    return register


def emit(event: str, **details: Any) -> list[Any]:
    """Run every reaction to ``event`` with ``details`` as keyword arguments; their results,
    in registration order."""
    for name in SUBSCRIBER_MODULES:
        importlib.import_module(name)
    reactions = _REACTIONS.get(event)
    if not reactions:
        raise RuntimeError(f"no reaction to event {event!r} is registered")
    return [reaction(**details) for reaction in list(reactions)]
