"""Differentially private model fits: linear and logistic regression from noisy sufficient
statistics, the patient as the privacy unit.

Features and target are the agreement's columns or bounded expressions of them (the same
bounds as :mod:`sandbox.gateway.dp`: the CDM's, worked through the expression, or
``CLAMP(expr, low, high)``). Each patient contributes one row (chosen by a hash, the same on
every run), with every value clamped and scaled to [-1, 1] by its public bounds. The hub
never computes a coefficient from exact data:

- ``linear``: sufficient-statistics perturbation. The sums of products of (1, features,
  target) get Laplace noise (OpenDP) for their sensitivity (each entry moves by at most 1 per
  patient); least squares is solved on the noisy sums with a small ridge. Standard errors
  and R² come from the same noisy sums (they ignore the privacy noise's own variance).
- ``logistic``: the functional mechanism (Zhang et al., 2012): the log-likelihood's
  second-order Taylor expansion needs only the same sums, so the same noisy sums give the
  coefficients. An approximation, good near small effects; no standard errors.

A fifth of the answer's ε pays for noisy patient counts per institution, from which ``n`` is
reported and the institution rules are judged; a fit whose noisy counts fail them is refused
after the fact, and its ε is spent all the same (:attr:`FitRefused.spent`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlglot import exp

from contracts.agreements import Disclosure
from sandbox.gateway.dp import (
    RULE_SCALES,
    Resolver,
    _clamped,
    check_epsilon,
    interval,
)
from sandbox.gateway.engine import digest
from sandbox.gateway.errors import FitRefused, QueryRejected
from sandbox.gateway.facts import Facts
from sandbox.gateway.fit import check_request
from sandbox.gateway.noise import Noise
from sandbox.gateway.sql import INSTITUTION

if TYPE_CHECKING:
    from sandbox.gateway.engine import AgreementViews, Gateway

KINDS = ("linear", "logistic")
MAX_FEATURES = 10
RULES_SHARE = 0.2


@dataclass
class PrivateFit:
    """A differentially private fit's summary: nothing row-level, nothing exact."""

    kind: str
    coefficients: dict[str, float]
    std_errors: dict[str, float | None]
    n: int
    epsilon: float
    bounds: dict[str, list[float]]
    metrics: dict[str, float] = field(default_factory=dict)
    method: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "coefficients": self.coefficients,
            "std_errors": self.std_errors,
            "n": self.n,
            "epsilon": self.epsilon,
            "bounds": self.bounds,
            "metrics": self.metrics,
            "method": self.method,
        }


def request_hash(
    kind: str,
    table: str,
    features: Sequence[str],
    target: str,
    filters: str | None,
    epsilon: float,
) -> str:
    """The identity of a fit request (the same request is answered once)."""
    return digest([kind, table, list(features), target, filters or "", epsilon])


def fit(
    gateway: Gateway,
    views: AgreementViews,
    disclosure: Disclosure,
    *,
    kind: str,
    table: str,
    features: Sequence[str],
    target: str,
    filters: str | None = None,
    epsilon: float | None = None,
    noise: Noise | None = None,
) -> PrivateFit:
    """Fit ``target ~ features`` on ``table`` (rows passing ``filters``) under ε-DP."""
    noise = noise or Noise()
    if not disclosure.allow_model_fitting:
        raise FitRefused("this agreement does not allow model fitting on real data")
    if kind not in KINDS:
        raise FitRefused(f"unknown model kind {kind!r}; use {' or '.join(KINDS)}")
    if len(features) > MAX_FEATURES:
        raise QueryRejected(f"at most {MAX_FEATURES} features", "features")
    epsilon = check_epsilon(epsilon, disclosure)
    checked, sums = check_request(views, table, features, target, filters)
    resolver = Resolver(checked, views)

    def facts(column: exp.Column) -> Facts:
        return resolver.resolve(column)[2]

    names = [*features, target]
    bounds = []
    for name, node in zip(names, sums, strict=True):
        found = interval(node.this, facts)
        if found is None:
            raise QueryRejected(
                "its values have no public bounds; use a column the data model bounds, or "
                "CLAMP(expr, low, high)",
                f"`{name}`",
            )
        bounds.append(found)
    if kind == "logistic" and not (0 <= bounds[-1][0] and bounds[-1][1] <= 1):
        raise QueryRejected(
            "a logistic target takes the values 0 and 1 (e.g. CASE WHEN … THEN 1 ELSE 0 END)",
            f"`{target}`",
        )
    alias, view = checked.tables[0]
    where = checked.tree.args.get("where")
    condition = (
        f"COALESCE(TRY({resolver.qualify(where.this).sql('duckdb')}), FALSE)" if where else "TRUE"
    )
    scaled = []
    for index, (node, (low, high)) in enumerate(zip(sums, bounds, strict=True)):
        value = _clamped(
            f"TRY(CAST({resolver.qualify(node.this).sql('duckdb')} AS DOUBLE))", low, high
        )
        logistic_target = kind == "logistic" and index == len(sums) - 1
        if logistic_target:
            scaled.append(f"CASE WHEN {value} >= 0.5 THEN 1.0 ELSE 0.0 END")
        elif high > low:
            scaled.append(f"({value} - {(low + high) / 2!r}) / {(high - low) / 2!r}")
        else:
            scaled.append(f"{value} * 0.0")
    z = ["1.0", *(f"__z{i}" for i in range(len(scaled)))]
    products = [f"SUM({z[i]} * {z[j]})" for i in range(len(z)) for j in range(i, len(z))]
    rows = (
        f'SELECT "{alias}".__pid AS __pid, "{alias}".{INSTITUTION} AS __inst, '  # noqa: S608
        + ", ".join(f"{s} AS __z{i}" for i, s in enumerate(scaled))
        + f' FROM "{view}" AS "{alias}" WHERE {condition}'
    )
    complete = " AND ".join(f"__z{i} IS NOT NULL" for i in range(len(scaled)))
    one = (
        f"SELECT * FROM ({rows}) WHERE {complete} QUALIFY row_number() OVER "  # noqa: S608
        f"(PARTITION BY __pid ORDER BY hash({', '.join(['__inst', *z[1:]])})) = 1"
    )
    final = (
        f"SELECT __inst, GROUPING(__inst) AS __g, COUNT(*) AS __n, {', '.join(products)} "  # noqa: S608
        f"FROM ({one}) GROUP BY GROUPING SETS ((), (__inst))"
    )
    _, result = gateway.execute(views, final)
    institutions = views.institutions[view]
    per_institution = [0.0] * len(institutions)
    sums_of_products = [0.0] * len(products)
    for row in result:
        if row[1] == 1:
            sums_of_products = [float(v or 0) for v in row[3:]]
        elif row[0] in institutions:
            per_institution[institutions.index(row[0])] = float(row[2])

    rules_epsilon, model_epsilon = epsilon * RULES_SHARE, epsilon * (1 - RULES_SHARE)
    counts, rule_scale = noise.laplace(per_institution, 1.0, rules_epsilon)
    noisy, _ = noise.laplace(sums_of_products, float(len(products)), model_epsilon)
    counts = [max(0.0, c) for c in counts]
    n = sum(counts)
    threshold = max(1.0, RULE_SCALES * rule_scale)
    least = max(disclosure.k, 10 * len(features))
    if n < least:
        raise _refused(f"fewer than {least} patients behind the fit (noisy count)", epsilon)
    if sum(1 for c in counts if c >= threshold) < disclosure.min_institutions:
        raise _refused(
            f"fewer than {disclosure.min_institutions} institutions behind the fit (noisy counts)",
            epsilon,
        )
    top = sum(sorted(counts, reverse=True)[: disclosure.dominance_n])
    if top > n * disclosure.dominance_percent / 100:
        raise _refused(
            f"the largest {disclosure.dominance_n} institutions hold more than "
            f"{disclosure.dominance_percent:g} % of the rows (noisy counts)",
            epsilon,
        )

    size = len(z)
    matrix = np.zeros((size, size))
    position = 0
    for i in range(size):
        for j in range(i, size):
            matrix[i, j] = matrix[j, i] = noisy[position]
            position += 1
    p = size - 1  # intercept + features
    xtx, xty, yty = matrix[:p, :p], matrix[:p, p], matrix[p, p]
    ridge = 2.0 * len(products) / model_epsilon
    xtx_r = xtx + ridge * np.eye(p)
    mids = [(lo + hi) / 2 for lo, hi in bounds[:-1]]
    halves = [(hi - lo) / 2 or 1.0 for lo, hi in bounds[:-1]]
    labels = ["intercept", *features]
    try:
        if kind == "linear":
            beta = np.linalg.solve(xtx_r, xty)
        else:
            beta = 4.0 * np.linalg.solve(xtx_r, xty - 0.5 * xtx[:, 0])
    except np.linalg.LinAlgError:
        raise _refused("the noisy statistics give no solution; add patients", epsilon) from None
    # Back to the original units: z = (x - mid) / half, and for linear y likewise.
    transform = np.zeros((p, p))
    transform[0, 0] = 1.0
    for j in range(1, p):
        transform[0, j] = -mids[j - 1] / halves[j - 1]
        transform[j, j] = 1.0 / halves[j - 1]
    if kind == "linear":
        y_low, y_high = bounds[-1]
        y_mid, y_half = (y_low + y_high) / 2, (y_high - y_low) / 2 or 1.0
        transform *= y_half
    coefficients = transform @ beta
    if kind == "linear":
        coefficients[0] += y_mid
    std_errors: dict[str, float | None] = dict.fromkeys(labels)
    metrics: dict[str, float] = {}
    if kind == "linear":
        residual = float(yty - 2 * beta @ xty + beta @ xtx @ beta)
        dof = max(n - p, 1.0)
        sigma2 = max(residual / dof, 1e-12)
        try:
            cov = sigma2 * np.linalg.inv(xtx_r)
            cov_orig = transform @ cov @ transform.T
            std_errors = {
                name: float(np.sqrt(max(cov_orig[i, i], 0.0))) for i, name in enumerate(labels)
            }
        except np.linalg.LinAlgError:
            pass
        total = float(yty - xty[0] ** 2 / max(xtx[0, 0], 1.0))
        if total > 0:
            metrics["r2"] = float(min(1.0, max(0.0, 1 - residual / total)))
    return PrivateFit(
        kind=kind,
        coefficients={name: float(c) for name, c in zip(labels, coefficients, strict=True)},
        std_errors=std_errors,
        n=int(round(n)),
        epsilon=epsilon,
        bounds={name: [lo, hi] for name, (lo, hi) in zip(names, bounds, strict=True)},
        metrics=metrics,
        method=(
            "sufficient-statistics perturbation (Laplace), ridge-stabilised"
            if kind == "linear"
            else "functional mechanism (second-order approximation, Laplace)"
        ),
    )


def _refused(reason: str, epsilon: float) -> FitRefused:
    error = FitRefused(f"{reason}; this request spent ε = {epsilon:g}")
    error.spent = epsilon
    return error
