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


def test_a_fit_on_many_records_of_few_patients_is_refused(gateway, tmp_path) -> None:
    """Patients are the unit: 40 custody events of 8 patients are not enough at k = 10,
    though 40 records are; the control with 40 patients fits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sandbox.gateway import Source

    def pool(patients: int, per_patient: int) -> dict[str, list[Source]]:
        rng = np.random.default_rng(3)
        sources = []
        for inst in ("inst_a", "inst_b", "inst_c"):
            ids = [f"{inst}_{p}" for p in range(patients) for _ in range(per_patient)]
            n = len(ids)
            path = tmp_path / f"{patients}_{inst}.parquet"
            pq.write_table(
                pa.table(
                    {
                        "event_id": [f"E{inst}{i}" for i in range(n)],
                        "coi_id": ids,
                        "unit_id": [f"U{i}" for i in ids],
                        "temp_min": rng.normal(4, 1, n).tolist(),
                        "temp_max": rng.normal(8, 1, n).tolist(),
                    }
                ),
                path,
            )
            sources.append(Source(str(path), inst))
        return {"custody_event": sources}

    rules = Disclosure(allow_model_fitting=True, min_institutions=1)
    few = gateway.views(f"few-{tmp_path.name}", pool(patients=3, per_patient=5))
    with pytest.raises(FitRefused, match="fewer than k=10 patients"):
        gateway.fit(
            few,
            rules,
            kind="linear",
            table="custody_event",
            features=["temp_min"],
            target="temp_max",
        )
    many = gateway.views(f"many-{tmp_path.name}", pool(patients=15, per_patient=1))
    result = gateway.fit(
        many,
        rules,
        kind="linear",
        table="custody_event",
        features=["temp_min"],
        target="temp_max",
    )
    assert result.n == 45
