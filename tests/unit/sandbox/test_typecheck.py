"""Refusals in the researcher's terms before DuckDB binds (``sandbox.gateway.typecheck``):
a query computing with text, or comparing text with numbers, is refused naming the column
and what to write instead, never with the engine's binder error."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from contracts.agreements import Disclosure
from sandbox.gateway import AgreementViews, Gateway, QueryRejected, Source, dp
from sandbox.gateway.facts import Facts, age_bands
from sandbox.gateway.sql import check_query
from sandbox.gateway.typecheck import check_types

TYPES = {
    "episode": {
        "age": "VARCHAR",
        "product": "VARCHAR",
        "prior_lines": "INTEGER",
        "bridging": "BOOLEAN",
        "institution": "VARCHAR",
    },
    "batch": {"viability": "DOUBLE", "platform": "VARCHAR", "culture_days": "BIGINT"},
}
FACTS = {
    "episode": {
        "age": Facts("band", values=age_bands()),
        "product": Facts("category", values=("axi-cel", "liso-cel")),
        "prior_lines": Facts("integer", 0, 15),
        "bridging": Facts("boolean", 0.0, 1.0, (False, True)),
    },
    "batch": {"platform": Facts("category", values=("central", "point_of_care"))},
}
IDS = {"episode": ["coi_id"], "batch": ["coi_id", "lot_id"]}


def _check(sql: str) -> None:
    check_types(check_query(sql, TYPES, IDS), TYPES, FACTS)


@pytest.mark.parametrize(
    ("sql", "says"),
    [
        (
            "SELECT AVG(age) FROM episode",
            "AVG(age): `age` is given in bands such as '40-49', not as a number: "
            "GROUP BY age instead of AVG(age)",
        ),
        ("SELECT SUM(age) AS s FROM episode", "GROUP BY age instead of SUM(age)"),
        ("SELECT STDDEV(product) FROM episode", "`product` is text, not a number"),
        ("SELECT COUNT(*) FROM episode WHERE age > 40", "compare it with bands (age = '40-49'"),
        ("SELECT COUNT(*) FROM episode WHERE age BETWEEN 40 AND 60", "given in bands"),
        ("SELECT COUNT(*) FROM episode WHERE age IN (40, 50)", "given in bands"),
        ("SELECT COUNT(*) FROM episode WHERE product > 3", "compare it with a quoted value"),
        ("SELECT COUNT(*) FROM episode WHERE prior_lines > 'abc'", "without quotes"),
        ("SELECT AVG(CLAMP(age, 0, 100)) FROM episode", "`CLAMP` cannot compute with it"),
        ("SELECT FLOOR(age / 10), COUNT(*) FROM episode GROUP BY 1", "`/` cannot compute"),
        ("SELECT AVG(CAST(age AS INTEGER)) FROM episode", "cannot be cast to one"),
        ("SELECT AVG(viability) FROM batch WHERE platform LIKE 1", "LIKE compares text"),
        ("SELECT LOWER(prior_lines), COUNT(*) FROM episode GROUP BY 1", "LOWER takes text"),
        ("SELECT AVG(age || 'x') FROM episode", "AVG needs a number"),
        (
            "SELECT AVG(CASE WHEN bridging THEN 'yes' ELSE 1 END) FROM episode",
            "mix text and numbers",
        ),
        (
            "SELECT COUNT(*) FROM episode WHERE date_part('year', prior_lines) = 1",
            "whole days since the episode's first collection",
        ),
        (
            "SELECT AVG(b.viability) FROM batch b JOIN episode e ON b.coi_id = e.coi_id "
            "WHERE e.age >= 60",
            "`age` is given in bands",
        ),
    ],
)
def test_computing_with_text_is_refused_in_plain_words(sql: str, says: str) -> None:
    with pytest.raises(QueryRejected) as refused:
        _check(sql)
    assert says in refused.value.message
    assert "Binder" not in refused.value.message and "VARCHAR" not in refused.value.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT age, COUNT(*) AS n FROM episode GROUP BY age",
        "SELECT COUNT(*) FROM episode WHERE age = '40-49'",
        "SELECT COUNT(*) FROM episode WHERE age IN ('40-49', '50-59')",
        "SELECT SUM(CASE WHEN age = '40-49' THEN 1 ELSE 0 END) FROM episode",
        "SELECT AVG(bridging), SUM(bridging) FROM episode",
        "SELECT product, AVG(prior_lines + 1) FROM episode GROUP BY product",
        "SELECT COUNT(product) FROM episode",
        "SELECT COUNT(*) FROM episode WHERE prior_lines = '3'",  # DuckDB reads '3' as 3
        "SELECT AVG(CLAMP(viability, 0, 100)) FROM batch WHERE platform LIKE 'cent%'",
    ],
)
def test_well_typed_queries_pass(sql: str) -> None:
    _check(sql)


def test_the_bands_are_the_public_generalisation_ladder() -> None:
    bands = age_bands()
    assert {"0-4", "40-44", "40-49", "40-59", "85-89", "80-89", "90+"} <= set(bands)
    assert len(bands) == len(set(bands))
    assert not [b for b in bands if b.endswith("-90") or b.startswith("90-")]


@pytest.fixture(scope="module")
def banded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Source]]:
    """``episode`` as the pool holds it after de-identification: ``age`` in bands (text)."""
    root = Path(tmp_path_factory.mktemp("banded"))
    sources = []
    for i, inst in enumerate(("inst_a", "inst_b", "inst_c")):
        n = 60
        frame = pd.DataFrame(
            {
                "coi_id": [f"{inst}_{j}" for j in range(n)],
                "age": [("40-44", "45-49", "60-64")[(j + i) % 3] for j in range(n)],
                "prior_lines": [j % 4 for j in range(n)],
            }
        )
        path = root / f"{inst}.parquet"
        frame.to_parquet(path)
        sources.append(Source(str(path), inst))
    return {"episode": sources}


@pytest.fixture(scope="module")
def banded_views(gateway: Gateway, banded: dict[str, list[Source]]) -> AgreementViews:
    return gateway.views("banded", banded)


def test_the_gateway_refuses_avg_of_a_banded_age_before_the_engine(
    gateway: Gateway, banded_views: AgreementViews
) -> None:
    assert banded_views.facts["episode"]["age"].kind == "band"
    for run in (
        lambda sql: dp.answer(gateway, banded_views, Disclosure(), sql),
        lambda sql: gateway.run(banded_views, Disclosure(), sql),
    ):
        with pytest.raises(QueryRejected) as refused:
            run("SELECT AVG(age) FROM episode")
        assert "GROUP BY age instead of AVG(age)" in refused.value.message
        with pytest.raises(QueryRejected, match="compare it with bands"):
            run("SELECT COUNT(*) FROM episode WHERE age >= 60")
    with pytest.raises(
        QueryRejected, match=r"not a view of this agreement \(its tables: episode\)"
    ):
        gateway.run(banded_views, Disclosure(), "SELECT COUNT(*) FROM batch")


def test_grouping_by_a_banded_age_is_answered_over_its_public_bands(
    gateway: Gateway, banded_views: AgreementViews
) -> None:
    answer = dp.answer(
        gateway, banded_views, Disclosure(), "SELECT age, COUNT(*) AS n FROM episode GROUP BY age"
    )
    keys = [row[0] for row in answer.rows]
    assert set(keys) - {None} == set(age_bands())  # every band, present in the data or not
    assert keys.index("40-44") >= 0


def test_a_fit_on_a_banded_feature_says_so(gateway: Gateway, banded_views: AgreementViews) -> None:
    with pytest.raises(QueryRejected) as refused:
        gateway.fit(
            banded_views,
            Disclosure(allow_model_fitting=True),
            kind="linear",
            table="episode",
            features=["age"],
            target="prior_lines",
        )
    message = refused.value.message
    assert "`age` is given in bands" in message and "must be numbers or booleans" in message
