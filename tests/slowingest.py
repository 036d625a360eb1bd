"""Fault injection for the ingest kill test: de-identification that takes its time, so a
test can kill the worker in the middle of processing (CLEANROOM_TASK_MODULES=tests.slowingest).
"""

from __future__ import annotations

import time

from hub.ingest import deid

_real = deid.run


def _slow_run(*args, **kwargs):  # type: ignore[no-untyped-def]
    time.sleep(30)
    return _real(*args, **kwargs)


deid.run = _slow_run
