"""Progress reporting shared by the long operations (de-identification, synthesis)."""

from __future__ import annotations

import time
from collections.abc import Callable

# progress(steps_done, label), called after each step of a long operation.
Progress = Callable[[int, str], None]


class Steps:
    """Counts an operation's steps and reports each to ``progress``; with ``started``
    (a :func:`time.perf_counter` reading) it also records the step's duration in
    :attr:`timings`."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.progress = progress
        self.done = 0
        self.timings: dict[str, float] = {}

    def __call__(self, label: str, started: float | None = None) -> None:
        if started is not None:
            self.timings[label] = time.perf_counter() - started
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, label)
