"""hub.events: domains react to each other's events without importing each other."""

from __future__ import annotations

import importlib

import pytest

from hub import events


@pytest.fixture(autouse=True)
def _subscribers_loaded() -> None:
    """What emit does first: so a test's own reactions are not joined by the built-in ones."""
    for name in events.SUBSCRIBER_MODULES:
        importlib.import_module(name)


def test_every_event_has_its_built_in_reactions() -> None:
    """The reactions are registered by importing SUBSCRIBER_MODULES, whichever entry point
    ran: no withdrawal may skip the synthetic versions."""
    owners = {event: {r.__module__ for r in events._REACTIONS[event]} for event in events.EVENTS}
    assert owners == {
        events.DATASET_RELEASED: {"hub.synth.services"},
        events.DATASET_WITHDRAWN: {"hub.synth.services"},
        events.USERS_CHANGED: {"hub.agreements.services"},
    }


def test_reactions_run_in_order_and_return_their_results(monkeypatch) -> None:
    monkeypatch.setitem(events._REACTIONS, events.USERS_CHANGED, [])
    seen = []

    @events.on(events.USERS_CHANGED)
    def first(session: object) -> str:
        seen.append(("first", session))
        return "one"

    @events.on(events.USERS_CHANGED)
    def second(session: object) -> str:
        seen.append(("second", session))
        return "two"

    events.on(events.USERS_CHANGED)(first)  # registering again does not run it twice
    assert events.emit(events.USERS_CHANGED, session="s") == ["two", "one"]
    assert seen == [("second", "s"), ("first", "s")]


def test_an_event_nobody_follows_is_an_error(monkeypatch) -> None:
    monkeypatch.setitem(events._REACTIONS, events.DATASET_WITHDRAWN, [])
    with pytest.raises(RuntimeError, match="no reaction"):
        events.emit(events.DATASET_WITHDRAWN, session=None, version=None, actor="x")
    with pytest.raises(ValueError, match="unknown event"):
        events.on("dataset.renamed")
