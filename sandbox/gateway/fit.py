"""Server-side model fitting on real data: linear (OLS) and logistic (Newton/IRLS) regression.

The features, target and filters go through the same SQL checker as queries (identifier
columns, subqueries and forbidden functions are refused the same way); the rows they select
stay inside the gateway. The answer holds only coefficients, standard errors, n, residual
degrees of freedom and fit metrics (R², adjusted R²; AUC and log-likelihood), and only when

- the agreement allows model fitting;
- n ≥ max(k, 10 × features) and the residual degrees of freedom n - features - 1 ≥ 10, and
  the rows come from at least k distinct patients (patients are the unit);
- the rows come from at least ``min_institutions`` institutions and the largest
  ``dominance_n`` institutions hold no more than ``dominance_percent`` % of them;
- for logistic regression, each outcome class holds at least k patients and the fit
  converges.

Never predictions, residuals or fitted values.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlglot import exp

from contracts.agreements import Disclosure
from sandbox.gateway.errors import FitRefused, QueryRejected
from sandbox.gateway.sql import INSTITUTION, CheckedQuery, check_query
from sandbox.gateway.typecheck import check_types

if TYPE_CHECKING:
    from sandbox.gateway.engine import AgreementViews, Gateway

KINDS = ("linear", "logistic")


@dataclass
class FitResult:
    """A fitted model's summary: nothing row-level."""

    kind: str
    coefficients: dict[str, float]
    std_errors: dict[str, float]
    n: int
    df_resid: int
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "coefficients": self.coefficients,
            "std_errors": self.std_errors,
            "n": self.n,
            "df_resid": self.df_resid,
            "metrics": self.metrics,
        }


def check_request(
    views: AgreementViews, table: str, features: Sequence[str], target: str, filters: str | None
) -> tuple[CheckedQuery, list[exp.Expr]]:
    """A fit request through the query checker, as the probe ``SELECT SUM(feature), ...,
    SUM(target) FROM table WHERE filters``: the checked probe and its ``SUM`` nodes (features
    first, the target last). Nothing runs."""
    if not features:
        raise QueryRejected("name at least one feature", "features")
    probe = ", ".join(f"SUM({f})" for f in [*features, target])
    # Only a probe: check_query parses and allow-lists all of it before anything runs.
    sql = f"SELECT {probe} FROM {table}" + (f" WHERE {filters}" if filters else "")  # noqa: S608
    checked = check_query(sql, views.names, views.identifiers)
    check_types(checked, views.columns, views.facts, fit=True)
    sums = [o.expr for o in checked.outputs]
    if (
        len(checked.tables) != 1
        or len(sums) != len(features) + 1
        or not all(type(s) is exp.Sum for s in sums)
        or checked.keys
    ):
        raise QueryRejected(
            "each feature and the target must be one expression over the table", "fit request"
        )
    return checked, sums


def data_sql(
    views: AgreementViews, table: str, features: Sequence[str], target: str, filters: str | None
) -> str:
    """Check the request through the query checker and build the (internal) row query."""
    checked, sums = check_request(views, table, features, target, filters)
    columns = [
        exp.alias_(exp.Cast(this=s.this.copy(), to=exp.DataType.build("DOUBLE")), f"x{i}")
        for i, s in enumerate(sums)
    ]
    alias = checked.tables[0][0]
    columns.append(exp.alias_(exp.column(INSTITUTION, table=alias), "__inst"))
    columns.append(exp.alias_(exp.column("__pid", table=alias), "__pid"))
    select = exp.Select(expressions=columns)
    select.set("from_", checked.tree.args["from_"].copy())
    if checked.conjuncts:
        select = select.where(exp.and_(*[c.copy() for c in checked.conjuncts]), copy=False)
    return select.sql(dialect="duckdb")


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
) -> FitResult:
    """Fit ``kind`` regression of ``target`` on ``features`` over ``table`` (see module doc)."""
    if not disclosure.allow_model_fitting:
        raise FitRefused("this agreement does not allow model fitting on real data")
    if kind not in KINDS:
        raise FitRefused(f"unknown model `{kind}`; choose one of {', '.join(KINDS)}")
    _columns, rows = gateway.execute(views, data_sql(views, table, features, target, filters))
    p = len(features)
    complete = [r for r in rows if all(v is not None and np.isfinite(v) for v in r[: p + 1])]
    n = len(complete)
    need = max(disclosure.k, 10 * p)
    if n < need or n - p - 1 < 10:
        raise FitRefused(
            f"too few complete records: a fit on {p} feature(s) needs at least {need} records "
            f"and 10 residual degrees of freedom"
        )
    if len({r[p + 2] for r in complete}) < disclosure.k:
        raise FitRefused(f"the records come from fewer than k={disclosure.k} patients")
    institutions = Counter(r[p + 1] for r in complete)
    if len(institutions) < disclosure.min_institutions:
        raise FitRefused(
            f"the records come from fewer than {disclosure.min_institutions} institutions"
        )
    top = sum(c for _i, c in institutions.most_common(disclosure.dominance_n))
    if top > disclosure.dominance_percent / 100.0 * n:
        raise FitRefused(
            f"dominance: the largest {disclosure.dominance_n} institutions hold more than "
            f"{disclosure.dominance_percent:g}% of the records"
        )
    data = np.asarray([r[: p + 1] for r in complete], dtype=float)
    x = np.column_stack([np.ones(n), data[:, :p]])
    y = data[:, p]
    patients = np.asarray([r[p + 2] for r in complete], dtype=object)
    names = ["intercept", *features]
    if np.linalg.matrix_rank(x) < p + 1:
        raise FitRefused("the features are collinear (or constant); drop one")
    if kind == "linear":
        beta, se, metrics = _ols(x, y)
    else:
        beta, se, metrics = _logistic(x, y, patients, disclosure.k)
    return FitResult(
        kind,
        dict(zip(names, map(float, beta), strict=True)),
        dict(zip(names, map(float, se), strict=True)),
        n,
        n - p - 1,
        metrics,
    )


def patients(
    gateway: Gateway,
    views: AgreementViews,
    *,
    table: str,
    features: Sequence[str],
    target: str,
    filters: str | None = None,
) -> frozenset[Any]:
    """The distinct patients (pseudonymous units, never shown) behind a fit's complete rows:
    evidence for reviewed release's differencing check."""
    _columns, rows = gateway.execute(views, data_sql(views, table, features, target, filters))
    p = len(features)
    return frozenset(
        r[p + 2] for r in rows if all(v is not None and np.isfinite(v) for v in r[: p + 1])
    )


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    n, q = x.shape
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    residuals = y - x @ beta
    rss = float(residuals @ residuals)
    sigma2 = rss / (n - q)
    se = np.sqrt(np.diag(np.linalg.inv(x.T @ x)) * sigma2)
    tss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - rss / tss if tss > 0 else 0.0
    adj = 1.0 - (1.0 - r2) * (n - 1) / (n - q)
    return beta, se, {"r2": r2, "adj_r2": adj}


def _logistic(
    x: np.ndarray, y: np.ndarray, patients: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    if not np.isin(y, (0.0, 1.0)).all():
        raise FitRefused("logistic regression needs a 0/1 (or boolean) target")
    if min(len(set(patients[y == 1.0])), len(set(patients[y == 0.0]))) < k:
        raise FitRefused(f"each outcome class needs the records of at least k={k} patients")
    beta = np.zeros(x.shape[1])
    for _ in range(100):
        eta = np.clip(x @ beta, -30, 30)
        mu = 1.0 / (1.0 + np.exp(-eta))
        w = mu * (1.0 - mu)
        hessian = x.T @ (x * w[:, None])
        step = np.linalg.solve(hessian, x.T @ (y - mu))
        beta = beta + step
        if np.max(np.abs(step)) < 1e-8:
            break
    else:
        raise FitRefused("the fit did not converge (perfect separation?)")
    if np.max(np.abs(beta)) > 20:
        raise FitRefused("the fit diverges (perfect separation); drop or recode a feature")
    eta = x @ beta
    mu = 1.0 / (1.0 + np.exp(-eta))
    hessian = x.T @ (x * (mu * (1.0 - mu))[:, None])
    se = np.sqrt(np.diag(np.linalg.inv(hessian)))
    loglik = float(np.sum(y * np.log(mu + 1e-300) + (1 - y) * np.log(1 - mu + 1e-300)))
    return beta, se, {"auc": _auc(eta, y), "log_likelihood": loglik}


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = score[order]
    i = 0
    while i < len(score):
        j = i
        while j + 1 < len(score) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
