"""Differentially private fits (``sandbox.gateway.dpfit``). With the noise off, the linear
fit must equal ridge least squares recomputed with numpy from the pool's Parquet; with it on,
no coefficient is exact."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from contracts.agreements import Disclosure
from sandbox.gateway import FitRefused, QueryRejected, dpfit
from sandbox.gateway.noise import Noise

ALLOWED = Disclosure(allow_model_fitting=True)


def _episodes(pool) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(s.path) for s in pool["episode"]], ignore_index=True)


def test_linear_without_noise_is_ridge_least_squares_on_scaled_bounds(gateway, views, pool) -> None:
    found = dpfit.fit(
        gateway,
        views,
        ALLOWED,
        kind="linear",
        table="episode",
        features=["CLAMP(age, 20, 80)", "prior_lines"],
        target="CLAMP(weight_kg, 40, 110)",
        noise=Noise(enabled=False),
    )
    data = _episodes(pool)
    age = (data["age"].clip(20, 80) - 50) / 30
    lines = (data["prior_lines"].clip(0, 15) - 7.5) / 7.5
    weight = (data["weight_kg"].clip(40, 110) - 75) / 35
    x = np.column_stack([np.ones(len(data)), age, lines])
    ridge = 2.0 * 10 / 0.8  # 10 sums of products, 4/5 of ε = 1
    beta = np.linalg.solve(x.T @ x + ridge * np.eye(3), x.T @ weight)
    expected_age = 35 * beta[1] / 30
    expected_lines = 35 * beta[2] / 7.5
    assert found.coefficients["CLAMP(age, 20, 80)"] == pytest.approx(expected_age, rel=1e-6)
    assert found.coefficients["prior_lines"] == pytest.approx(expected_lines, rel=1e-6)
    assert found.n == len(data) == 450
    assert found.bounds["prior_lines"] == [0.0, 15.0]


def test_noisy_fits_are_never_the_exact_fit(gateway, views) -> None:
    request = {
        "kind": "linear",
        "table": "episode",
        "features": ["CLAMP(age, 20, 80)"],
        "target": "CLAMP(weight_kg, 40, 110)",
    }
    exact = dpfit.fit(gateway, views, ALLOWED, noise=Noise(enabled=False), **request)
    noisy = [dpfit.fit(gateway, views, ALLOWED, **request) for _ in range(3)]
    slopes = {round(f.coefficients["CLAMP(age, 20, 80)"], 9) for f in noisy}
    assert len(slopes) == 3
    assert round(exact.coefficients["CLAMP(age, 20, 80)"], 9) not in slopes
    # n: three noisy institution counts (scale 5 each); 100 is over 8 standard deviations.
    assert all(abs(f.n - 450) < 100 for f in noisy) and noisy[0].epsilon == 1.0


def test_logistic_fit_from_the_same_noisy_sums(gateway, views) -> None:
    found = dpfit.fit(
        gateway,
        views,
        ALLOWED,
        kind="logistic",
        table="episode",
        features=["CLAMP(age, 20, 80)"],
        target="CASE WHEN bridging THEN 1 ELSE 0 END",
    )
    assert set(found.coefficients) == {"intercept", "CLAMP(age, 20, 80)"}
    assert all(np.isfinite(v) for v in found.coefficients.values())
    assert found.std_errors["intercept"] is None and "functional" in found.method


@pytest.mark.parametrize(
    ("features", "target", "kind", "error"),
    [
        (["LENGTH(site)"], "weight_kg", "linear", QueryRejected),
        (["age"], "weight_kg / (age - 50)", "linear", QueryRejected),
        (["age"], "weight_kg", "logistic", QueryRejected),
        (["age"], "weight_kg", "poisson", FitRefused),
        ([], "weight_kg", "linear", QueryRejected),
    ],
)
def test_requests_that_cannot_be_bounded_are_refused_before_reading(
    gateway, views, features, target, kind, error
) -> None:
    with pytest.raises(error):
        dpfit.fit(
            gateway, views, ALLOWED, kind=kind, table="episode", features=features, target=target
        )


def test_fitting_must_be_allowed(gateway, views) -> None:
    with pytest.raises(FitRefused, match="does not allow"):
        dpfit.fit(
            gateway,
            views,
            Disclosure(),
            kind="linear",
            table="episode",
            features=["age"],
            target="weight_kg",
        )


def test_a_fit_on_too_few_patients_is_refused_and_has_spent(gateway, views) -> None:
    with pytest.raises(FitRefused) as refused:
        dpfit.fit(
            gateway,
            views,
            ALLOWED,
            kind="linear",
            table="episode",
            features=["age"],
            target="weight_kg",
            filters="indication = 'SCD'",
        )
    assert refused.value.spent == 1.0 and "noisy" in refused.value.message
