"""ACRO's findings on release outputs (``hub.releases.acro_evidence``), on a small pool
built so that each of ACRO's checks has a cell to flag, through a real gateway; each finding
is checked against a recomputation in pandas."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from contracts.agreements import Disclosure
from hub.releases import acro_evidence
from sandbox.gateway import AgreementViews, Gateway, QueryTimeout, Source

K = 5
SITES = ("acme-bio", "st-aurelia", "kelvin")
KEYS = {"tool", "checked", "note", "status", "summary", "cells"}


def _batch() -> pd.DataFrame:
    """Lots by platform and outcome:

    - ``mobile``: 3 lots, fewer than k;
    - ``point_of_care``: one lot's ``yield_g`` dwarfs the rest (dominance);
    - ``central``: no ``failed`` lot (a zero cell), and two lots without ``viability``.
    """
    rng = np.random.default_rng(11)
    n = {"central": 30, "point_of_care": 20, "mobile": 3}
    platform = [p for p, count in n.items() for _ in range(count)]
    outcome = ["conforming"] * n["central"] + ["conforming", "failed"] * 10 + ["failed"] * 3
    viability: list[float | None] = list(rng.normal(88, 4, len(platform)).round(1))
    viability[3] = viability[7] = None
    yield_g = list(rng.uniform(1.0, 2.0, len(platform)).round(3))
    yield_g[n["central"] + 4] = 5000.0
    frame = pd.DataFrame(
        {
            "lot_id": [f"L{i:04d}" for i in range(len(platform))],
            "platform": platform,
            "manufacturing_outcome": outcome,
            "viability": viability,
            "yield_g": yield_g,
            "culture_days": rng.integers(7, 12, len(platform)),
        }
    )
    frame["site"] = [SITES[i % len(SITES)] for i in range(len(frame))]
    return frame


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    return _batch()


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    found = Gateway(timeout=10.0, memory_limit="512MB", threads=1)
    yield found
    found.close()


@pytest.fixture(scope="module")
def views(
    gateway: Gateway, pool: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> AgreementViews:
    """The pool as each site's released Parquet, and a second table to join to."""
    root = Path(tmp_path_factory.mktemp("acro-pool"))
    tables: dict[str, list[Source]] = {"batch": [], "episode": []}
    for site in SITES:
        path = root / f"batch-{site}.parquet"
        pool[pool.site == site].drop(columns="site").to_parquet(path, index=False)
        tables["batch"].append(Source(str(path), site))
        path = root / f"episode-{site}.parquet"
        pd.DataFrame({"platform": ["central", "mobile"], "indication": ["ALL", "MM"]}).to_parquet(
            path, index=False
        )
        tables["episode"].append(Source(str(path), site))
    return gateway.views("acro-test", tables)


@pytest.fixture
def disclosure() -> Disclosure:
    return Disclosure(k=K, dominance_n=2, dominance_percent=90.0, allow_model_fitting=True)


def _cells(found: dict[str, Any], finding: str) -> dict[tuple[Any, ...], str]:
    """The flagged cells with ``finding``: row key values (and column) -> detail."""
    return {
        (*cell["row"], cell["column"]): cell["detail"]
        for cell in found["cells"]
        if finding in cell["findings"]
    }


def _shape(found: dict[str, Any]) -> None:
    assert set(found) == KEYS
    assert json.loads(json.dumps(found)) == found  # stored as JSON, as it is
    assert found["tool"] == "acro 1.0.2"
    for cell in found["cells"]:
        assert set(cell) == {"row", "column", "findings", "detail"} and cell["findings"]


def test_a_cell_below_k_records_is_flagged_threshold_and_k_comes_from_the_agreement(
    gateway: Gateway, views: AgreementViews, pool: pd.DataFrame
) -> None:
    sql = "SELECT platform, COUNT(*) AS n FROM batch GROUP BY platform"
    sizes = pool.groupby("platform").size()
    for k in (2, K, 25):  # the control: the flagged cells move with the agreement's k
        found = acro_evidence.check_query(gateway, views, sql, Disclosure(k=k))
        _shape(found)
        assert found["checked"] is True
        small = {(p, "n") for p, size in sizes.items() if size < k}
        assert set(_cells(found, "threshold")) == small
        assert found["status"] == ("fail" if small else "pass")
    found = acro_evidence.check_query(gateway, views, sql, Disclosure(k=K))
    assert found["cells"] == [
        {
            "row": ["mobile"],
            "column": "n",
            "findings": ["threshold"],
            "detail": f"3 records < threshold {K}",
        }
    ]
    assert any("MinimumThresholdCheck: fail" in line for line in found["summary"])
    assert f"threshold {K} records" in found["note"]


def test_a_dominated_cell_is_flagged_by_the_nk_and_p_ratio_rules(
    gateway: Gateway, views: AgreementViews, pool: pd.DataFrame, disclosure: Disclosure
) -> None:
    sql = (
        "SELECT platform, SUM(yield_g) AS total, AVG(yield_g) AS mean FROM batch "
        "WHERE platform <> 'mobile' GROUP BY platform"
    )
    found = acro_evidence.check_query(gateway, views, sql, disclosure)
    _shape(found)
    assert found["status"] == "fail"

    def dominated(values: pd.Series) -> bool:
        top = values.nlargest(disclosure.dominance_n).sum()
        return bool(top / values.sum() >= disclosure.dominance_percent / 100)

    def p_ratio(values: pd.Series) -> bool:
        ordered = values.sort_values(ascending=False)
        return bool((ordered.iloc[2:].sum()) / ordered.iloc[0] < 0.10)

    shown = pool[pool.platform != "mobile"].groupby("platform").yield_g
    truth = {p for p, v in shown if dominated(v)}
    assert truth == {"point_of_care"}  # the pool is built so; the rest is ACRO's finding
    for column in ("total", "mean"):
        assert {r for r, c in _cells(found, "nk-rule") if c == column} == truth
        assert {r for r, c in _cells(found, "p-ratio") if c == column} == {
            p for p, v in shown if p_ratio(v)
        }
    assert "of the total (limit 90%)" in _cells(found, "nk-rule")[("point_of_care", "total")]

    # The control: N comes from the agreement; the 30 largest values are all of a cell's.
    wide = Disclosure(k=K, dominance_n=30, dominance_percent=90.0)
    everywhere = acro_evidence.check_query(gateway, views, sql, wide)
    assert (
        {r for r, c in _cells(everywhere, "nk-rule") if c == "total"}
        == {p for p, v in shown if v.nlargest(30).sum() / v.sum() >= 0.9}
        == {"central", "point_of_care"}
    )

    # With negative values ACRO says dominance is not defined, and flags them instead.
    signed = acro_evidence.check_query(
        gateway,
        views,
        "SELECT platform, SUM(viability - 88) AS s FROM batch GROUP BY platform",
        disclosure,
    )
    below = {p for p, v in pool.groupby("platform").viability if (v - 88 < 0).any()}
    assert {r for r, _c in _cells(signed, "negative")} == below and not _cells(signed, "nk-rule")


def test_a_zero_cell_and_missing_values_are_flagged(
    gateway: Gateway, views: AgreementViews, pool: pd.DataFrame, disclosure: Disclosure
) -> None:
    counts = acro_evidence.check_query(
        gateway,
        views,
        "SELECT platform, manufacturing_outcome, COUNT(*) AS n FROM batch "
        "GROUP BY platform, manufacturing_outcome",
        disclosure,
    )
    _shape(counts)
    table = pd.crosstab(pool.platform, pool.manufacturing_outcome)
    zeros = {(p, o, "n") for p in table.index for o in table.columns if table.loc[p, o] == 0}
    assert zeros == {("central", "failed", "n"), ("mobile", "conforming", "n")}
    assert set(_cells(counts, "zeros")) == zeros

    means = acro_evidence.check_query(
        gateway,
        views,
        "SELECT platform, AVG(viability) AS v, COUNT(viability) AS n FROM batch GROUP BY platform",
        disclosure,
    )
    _shape(means)
    gaps = {p for p, v in pool.groupby("platform").viability if v.isna().any()}
    assert gaps == {"central"}
    for column in ("v", "n"):
        assert {r for r, c in _cells(means, "missing") if c == column} == gaps
    assert means["status"] == "fail"  # the small mobile cell as well


def test_a_fit_with_too_few_residual_degrees_of_freedom_is_flagged_dof(
    gateway: Gateway, views: AgreementViews, pool: pd.DataFrame
) -> None:
    spec = {
        "table": "batch",
        "model": "linear",
        "features": ["culture_days", "yield_g"],
        "target": "viability",
        "filters": "platform = 'point_of_care'",
    }
    used = pool[pool.platform == "point_of_care"].dropna(subset=["viability"])
    dof = len(used) - len(spec["features"]) - 1
    assert dof == 17
    flagged = acro_evidence.check_fit(gateway, views, spec, Disclosure(k=dof + 1))
    _shape(flagged)
    assert flagged["status"] == "fail"
    assert flagged["cells"] == [
        {
            "row": [],
            "column": "model",
            "findings": ["dof"],
            "detail": f"{dof} residual degrees of freedom < {dof + 1}",
        }
    ]
    passed = acro_evidence.check_fit(gateway, views, spec, Disclosure(k=dof))
    assert passed["status"] == "pass" and passed["cells"] == []
    # The fit's records: the two lots without viability left out, as the fit does.
    whole = acro_evidence.check_fit(gateway, views, {**spec, "filters": None}, Disclosure(k=K))
    assert f"on the {pool.viability.notna().sum()} complete records" in whole["note"]
    assert "2 record(s) with a missing value" in whole["note"]

    logistic = {**spec, "model": "logistic", "target": "culture_days", "features": ["yield_g"]}
    assert acro_evidence.check_fit(gateway, views, logistic, Disclosure(k=K))["checked"] is False


def test_a_safe_table_passes_with_no_cells(
    gateway: Gateway, views: AgreementViews, disclosure: Disclosure
) -> None:
    found = acro_evidence.check_query(
        gateway,
        views,
        "SELECT platform, COUNT(*) AS n, AVG(culture_days) AS days FROM batch "
        "WHERE platform IN ('central', 'point_of_care') GROUP BY platform",
        disclosure,
    )
    _shape(found)
    assert (found["checked"], found["status"], found["cells"]) == (True, "pass", [])
    total = acro_evidence.check_query(
        gateway, views, "SELECT COUNT(*) AS n, STDDEV(culture_days) AS s FROM batch", disclosure
    )
    assert (total["status"], total["cells"]) == ("pass", [])


def test_a_join_is_not_checked_and_says_why(
    gateway: Gateway, views: AgreementViews, disclosure: Disclosure
) -> None:
    found = acro_evidence.check_query(
        gateway,
        views,
        "SELECT e.indication, COUNT(*) AS n FROM batch b "
        "JOIN episode e ON b.platform = e.platform GROUP BY e.indication",
        disclosure,
    )
    _shape(found)
    assert (found["checked"], found["status"], found["cells"]) == (False, "not checked", [])
    assert "joins 2 tables" in found["note"]


class _TimingOut:
    """A gateway whose reads of raw records run out of time."""

    def execute(self, views: AgreementViews, sql: str) -> Any:
        raise QueryTimeout("the query ran longer than 30 s and was stopped")


class _Garbled:
    """A gateway that answers with rows of the wrong shape: ACRO's input breaks."""

    def __init__(self, real: Gateway) -> None:
        self.real = real

    def execute(self, views: AgreementViews, sql: str) -> Any:
        columns, rows = self.real.execute(views, sql)
        return ["__one"], [(1,) for _ in rows]


def test_a_failure_is_evidence_not_a_refusal_and_is_logged(
    gateway: Gateway,
    views: AgreementViews,
    disclosure: Disclosure,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sql = "SELECT platform, COUNT(*) AS n FROM batch GROUP BY platform"
    timed_out = acro_evidence.check_query(_TimingOut(), views, sql, disclosure)  # type: ignore[arg-type]
    _shape(timed_out)
    assert timed_out["checked"] is False and "ran longer" in timed_out["note"]
    with caplog.at_level(logging.ERROR, logger="hub.releases.acro_evidence"):
        broken = acro_evidence.check_query(_Garbled(gateway), views, sql, disclosure)  # type: ignore[arg-type]
    _shape(broken)
    assert broken["checked"] is False and "ACRO failed on this output (KeyError" in broken["note"]
    assert [r.exc_info is not None for r in caplog.records] == [True]  # not swallowed


def test_acro_leaves_no_trace_in_the_process(
    gateway: Gateway,
    views: AgreementViews,
    disclosure: Disclosure,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No files in the working directory, nothing printed, and the logging, warning and
    ACRO settings the same after a check as before."""
    acro_evidence.check_query(gateway, views, "SELECT COUNT(*) AS n FROM batch", disclosure)
    from acro import sdc_agg_funcs

    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    before = (list(root.handlers), root.level, list(warnings.filters), sdc_agg_funcs.NK_N)
    found = acro_evidence.check_query(
        gateway,
        views,
        "SELECT platform, SUM(yield_g) AS total FROM batch GROUP BY platform",
        Disclosure(k=K, dominance_n=3),
    )
    assert found["checked"] is True
    after = (list(root.handlers), root.level, list(warnings.filters), sdc_agg_funcs.NK_N)
    assert after == before
    assert list(tmp_path.iterdir()) == []
    out = capsys.readouterr()
    assert (out.out, out.err) == ("", "")
