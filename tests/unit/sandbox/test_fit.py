"""Server-side regression: estimates and gates."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.agreements import Disclosure
from sandbox.gateway import FitRefused, QueryRejected


def test_linear_matches_numpy_and_returns_no_rows(gateway, views, disclosure) -> None:
    result = gateway.fit(
        views,
        disclosure,
        kind="linear",
        table="episode",
        features=["age", "prior_lines"],
        target="weight_kg",
    )
    rows = (
        views.connection.cursor()
        .execute("SELECT age, prior_lines, weight_kg FROM episode")
        .fetchall()
    )
    data = np.asarray(rows, dtype=float)
    x = np.column_stack([np.ones(len(data)), data[:, :2]])
    beta, *_ = np.linalg.lstsq(x, data[:, 2], rcond=None)
    assert result.coefficients["age"] == pytest.approx(beta[1])
    assert result.n == 450 and result.df_resid == 447
    assert set(result.as_dict()) == {
        "kind",
        "coefficients",
        "std_errors",
        "n",
        "df_resid",
        "metrics",
    }
    assert 0 <= result.metrics["r2"] <= 1 and result.std_errors["age"] > 0


def test_logistic_returns_auc(gateway, views, disclosure) -> None:
    result = gateway.fit(
        views,
        disclosure,
        kind="logistic",
        table="episode",
        features=["age", "weight_kg"],
        target="bridging",
        filters="indication <> 'SCD'",
    )
    assert 0.0 <= result.metrics["auc"] <= 1.0
    assert result.n == 449


def test_gates(gateway, views, disclosure) -> None:
    with pytest.raises(FitRefused, match="does not allow"):
        gateway.fit(
            views,
            Disclosure(),
            kind="linear",
            table="episode",
            features=["age"],
            target="weight_kg",
        )
    with pytest.raises(FitRefused, match="too few"):
        gateway.fit(
            views,
            disclosure,
            kind="linear",
            table="episode",
            features=["age"],
            target="weight_kg",
            filters="age > 78",
        )
    with pytest.raises(FitRefused, match="institutions"):
        gateway.fit(
            views,
            disclosure,
            kind="linear",
            table="episode",
            features=["age"],
            target="weight_kg",
            filters="site = 'inst_a_site_0'",
        )
    with pytest.raises(QueryRejected):
        gateway.fit(
            views,
            disclosure,
            kind="linear",
            table="episode",
            features=["coi_id"],
            target="weight_kg",
        )
    with pytest.raises(QueryRejected):
        gateway.fit(
            views,
            disclosure,
            kind="linear",
            table="episode",
            features=["age) FROM episode; SELECT MIN(age"],
            target="weight_kg",
        )
