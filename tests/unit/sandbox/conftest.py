"""Gateway fixtures.

- ``pool``: the pooled Parquet of three signing institutions (see ``pool.py``), per table;
- ``gateway``: a :class:`sandbox.gateway.Gateway` with a 5 s time limit;
- ``views``: the agreement's locked-down views over ``pool``;
- ``disclosure``: the architecture's default disclosure parameters, model fitting allowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.agreements import Disclosure
from sandbox.gateway import AgreementViews, Gateway, Source
from tests.unit.sandbox.pool import make_pool


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Source]]:
    return make_pool(Path(tmp_path_factory.mktemp("pool")))


@pytest.fixture(scope="session")
def gateway() -> Iterator[Gateway]:
    found = Gateway(timeout=5.0, memory_limit="1GB", threads=2)
    yield found
    found.close()


@pytest.fixture(scope="session")
def views(gateway: Gateway, pool: dict[str, list[Source]]) -> AgreementViews:
    return gateway.views("agreement-1", pool)


@pytest.fixture
def disclosure() -> Disclosure:
    return Disclosure(allow_model_fitting=True)
