"""Fault injection for the ingest kill test: de-identification that takes its time, so a
test can kill the worker in the middle of processing (CLEANROOM_TASK_MODULES=tests.slowingest).
"""

from __future__ import annotations

import time

from hub.ingest import services

_real = services.deidentify


def _slow_deidentify(*args, **kwargs):  # type: ignore[no-untyped-def]
    time.sleep(30)
    return _real(*args, **kwargs)


services.deidentify = _slow_deidentify
