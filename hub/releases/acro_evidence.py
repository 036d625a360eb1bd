"""ACRO's findings for a release output, as evidence for the output checkers.

ACRO (the SACRO project's checker of research outputs) looks at each output again, beside
the gateway's own rules: the records behind each cell (threshold), dominance by a few large
values (N-K and p-ratio rules), empty cells (zeros), missing values, and a model's residual
degrees of freedom. Its thresholds come from the agreement's disclosure rules: ``k`` is
both the cell threshold and the degrees-of-freedom threshold, ``dominance_n`` and
``dominance_percent`` are the N-K rule; the p-ratio keeps ACRO's default.

The checks run hub-side on the raw rows the output reads (trusted code; the rows never
leave this module). A query is mirrored as one ACRO table per aggregate: the rows of its
one table under its ``WHERE``, grouped by its keys. What cannot be mirrored (a join, too
many records) is reported as not checked, with the reason; so is any failure of ACRO
itself: an output the gateway computed is never refused here.

ACRO is driven through its checking library (``acro.sdcchecks``), not its session object,
which keeps a results folder and reads the caller's source. Importing ACRO configures the
root logger and silences FutureWarnings for the whole process, and its N-K rule reads a
module-level setting: all three are put back, and calls are serialised.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sqlglot import exp

from contracts.agreements import Disclosure
from sandbox.gateway import AgreementViews, Gateway, GatewayError
from sandbox.gateway import fit as exact_fit
from sandbox.gateway import sql as gateway_sql
from sandbox.gateway.engine import plain
from sandbox.gateway.sql import Aggregate, CheckedQuery

logger = logging.getLogger(__name__)

MAX_RECORDS = 1_000_000  # above this, reading the raw rows into ACRO costs too much
P_RATIO = 0.10  # ACRO's default p-ratio: the agreement has no matching parameter

# The gateway's aggregates as ACRO's: a variance has the cell composition of a standard
# deviation, and ACRO does not tell sample from population deviations.
ACRO_AGGFUNC = {
    "count_star": "count",
    "count": "count",
    "sum": "sum",
    "avg": "mean",
    "stddev_samp": "std",
    "stddev_pop": "std",
    "var_samp": "std",
    "var_pop": "std",
}
# ACRO's checks and the findings they report; the others (linked tables, whether zeros
# matter) flag no cell.
FINDINGS = {
    "MinimumThresholdCheck": "threshold",
    "PPercentCheck": "p-ratio",
    "NKCheck": "nk-rule",
    "PresenceOfZeroCheck": "zeros",
    "MissingCheck": "missing",
    "AllSameValuesCheck": "all-values-are-same",
    "MinimumDoFCheck": "dof",
}
_NEGATIVE = "Dominance not defined when negative value"  # ACRO's words when it cannot judge
_NO_KEYS = "(all records)"  # the one group of a query without GROUP BY

_lock = threading.Lock()  # one ACRO run at a time (its N-K setting is module-level)
_import_lock = threading.Lock()
_modules: SimpleNamespace | None = None


def _acro() -> SimpleNamespace:
    """ACRO's checking modules, imported once with the process's logging and warning
    settings put back (``import acro`` calls ``logging.basicConfig`` and ignores every
    FutureWarning)."""
    global _modules
    with _import_lock:
        if _modules is not None:
            return _modules
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        try:
            with warnings.catch_warnings():
                import acro.sdc_agg_funcs
                import acro.sdcchecks
                import acro.table_utils
                import acro.tablemodeldetails
                import acro.version
                import statsmodels.api
        finally:
            for handler in [h for h in root.handlers if h not in handlers]:
                root.removeHandler(handler)
            root.setLevel(level)
        _modules = SimpleNamespace(
            version=acro.version.__version__,
            aggfuncs=acro.sdc_agg_funcs,
            checks=acro.sdcchecks,
            tables=acro.table_utils,
            details=acro.tablemodeldetails,
            sm=statsmodels.api,
        )
    return _modules


@contextmanager
def _session() -> Iterator[SimpleNamespace]:
    """ACRO, one call at a time, silent (its log holds tables of the raw data), with its
    module-level N-K setting restored afterwards."""
    with _lock:
        modules = _acro()
        log = logging.getLogger("acro")
        disabled, nk_n = log.disabled, modules.aggfuncs.NK_N
        log.disabled = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield modules
        finally:
            modules.aggfuncs.NK_N = nk_n
            log.disabled = disabled


def risk_appetite(disclosure: Disclosure) -> dict[str, Any]:
    """ACRO's shipped configuration with the agreement's thresholds; zeros and missing
    values checked."""
    path = pathlib.Path(_acro().checks.__file__).with_name("default.yaml")
    config: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    config.update(
        safe_threshold=int(disclosure.k),
        safe_dof_threshold=int(disclosure.k),
        safe_nk_n=int(disclosure.dominance_n),
        safe_nk_k=float(disclosure.dominance_percent) / 100.0,
        safe_pratio_p=P_RATIO,
        check_missing_values=True,
        zeros_are_disclosive=True,
        federated=False,
    )
    return config


def _parameters(config: dict[str, Any]) -> str:
    return (
        f"threshold {config['safe_threshold']} records, degrees of freedom "
        f"{config['safe_dof_threshold']}, N-K rule n={config['safe_nk_n']} "
        f"k={config['safe_nk_k']:.0%}, p-ratio {config['safe_pratio_p']:.0%}; "
        "zeros and missing values checked"
    )


def _not_checked(tool: str, note: str) -> dict[str, Any]:
    return {
        "tool": tool,
        "checked": False,
        "note": note,
        "status": "not checked",
        "summary": [],
        "cells": [],
    }


def _tool() -> str:
    try:
        return f"acro {_acro().version}"
    except Exception:  # a broken install is reported as not checked, never raised
        return "acro"


@dataclass
class _Cell:
    findings: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def add(self, finding: str, detail: str) -> None:
        if finding not in self.findings:
            self.findings.append(finding)
        if detail and detail not in self.details:
            self.details.append(detail)


@dataclass
class _Report:
    """What the ACRO runs of one output found, cell by cell."""

    statuses: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    cells: dict[tuple[str, tuple[Any, ...]], _Cell] = field(default_factory=dict)

    def cell(self, column: str, row: tuple[Any, ...]) -> _Cell:
        return self.cells.setdefault((column, row), _Cell())

    def status(self) -> str:
        for status in ("fail", "review"):
            if status in self.statuses:
                return status
        return "pass"

    def as_cells(self) -> list[dict[str, Any]]:
        return [
            {
                "row": list(row),
                "column": column,
                "findings": cell.findings,
                "detail": "; ".join(cell.details),
            }
            for (column, row), cell in self.cells.items()
            if cell.findings
        ]


def _record(report: _Report, column: str, analysis: str, result: Any) -> None:
    """ACRO's status and own words for one of its tables (or a model): the checks that did
    not pass, each in ACRO's summary."""
    status = str(result.overall_status).lower()
    report.statuses.append(status)
    lines = [
        f"{check}: {' '.join(str(text).split()).rstrip('.')}"
        for check, text in _check_texts(result)
        if result.fair_dict.get("check_status", {}).get(check, "pass") != "pass"
    ]
    report.summary.append("; ".join([f"{column} ({analysis}): {status}", *lines]))


def _check_texts(result: Any) -> list[tuple[str, str]]:
    """Each check's summary: ACRO joins them as ``Check: text`` in one string."""
    checks = list(result.outcomes)
    text = str(result.summaries)
    found = []
    for i, check in enumerate(checks):
        start = text.find(f"{check}: ")
        if start < 0:
            continue
        start += len(check) + 2
        ends = [text.find(f" {c}: ", start) for c in checks[i + 1 :]]
        end = min([e for e in ends if e >= 0], default=len(text))
        found.append((check, text[start:end]))
    return found


def _number(table: Any, row: Any, column: Any) -> float | None:
    """One cell of an ACRO table; a one-column table (no GROUP BY across) by position, as
    ACRO names its column after the data it counted."""
    try:
        if column not in table.columns and table.shape[1] == 1:
            value = float(table.iloc[:, 0].loc[row])
        else:
            value = float(table.loc[row, column])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _detail(finding: str, evidence: Any, config: dict[str, Any], row: Any, col: Any) -> str:
    """A cell's finding in words, from ACRO's own evidence: counts and shares only, never
    a record's value."""
    tables = evidence.interim_tables
    if finding in ("threshold", "zeros") and "count_table" in tables:
        n = _number(tables["count_table"], row, col)
        if n is not None:
            if finding == "zeros":
                return "no records (an empty combination)"
            return f"{int(n)} records < threshold {config['safe_threshold']}"
    if finding == "nk-rule" and {"top_n_sum", "sum"} <= set(tables):
        top, total = _number(tables["top_n_sum"], row, col), _number(tables["sum"], row, col)
        if top is not None and total:
            return (
                f"the largest {config['safe_nk_n']} values hold {top / total:.0%} of the "
                f"total (limit {config['safe_nk_k']:.0%})"
            )
    if finding == "p-ratio" and {"max", "top_2_sum", "sum"} <= set(tables):
        largest = _number(tables["max"], row, col)
        top2, total = _number(tables["top_2_sum"], row, col), _number(tables["sum"], row, col)
        if largest and top2 is not None and total is not None:
            return (
                f"the values beyond the largest two are {(total - top2) / largest:.1%} of "
                f"the largest (at least {config['safe_pratio_p']:.0%} needed)"
            )
    if finding == "dof" and isinstance(evidence.dof, pd.DataFrame):
        dof = _number(evidence.dof, row, col)
        if dof is not None:
            return f"{int(dof)} degrees of freedom < {config['safe_dof_threshold']}"
    return {
        "missing": "missing values in the aggregated column (the aggregate leaves them out)",
        "negative": "negative values: dominance is not defined",
        "zeros": "no records (an empty combination)",
    }.get(finding, finding)


def _flagged(check: str, mask: Any, config: dict[str, Any]) -> pd.DataFrame | None:
    """ACRO's per-cell outcome of a check as True where the cell is flagged."""
    if not isinstance(mask, pd.DataFrame):
        return None
    if check == "MinimumDoFCheck":
        return (mask.astype(float) < config["safe_dof_threshold"]) | mask.isna()
    # ACRO leaves an empty cell's outcome blank and counts it as flagged; but an empty
    # cell has no values, so none missing.
    values = mask.to_numpy(dtype=object)
    blank = check != "MissingCheck"
    flags = np.where(pd.isna(values), blank, values).astype(bool)
    return pd.DataFrame(flags, index=mask.index, columns=mask.columns)


def _key_label(value: Any) -> str:
    """A key value as ACRO's category: text, one per value (NULL included)."""
    return json.dumps(value, sort_keys=True, default=str)


def _raw_sql(checked: CheckedQuery, values: Sequence[exp.Expr]) -> str:
    """The rows the query aggregates: its keys and each aggregate's argument, under its
    ``WHERE``, built from the checked tree (the researcher's text never runs)."""
    columns: list[exp.Expr] = [exp.alias_(exp.Literal.number(1), "__one", quoted=True)]
    columns += [exp.alias_(k.copy(), f"__k{i}", quoted=True) for i, k in enumerate(checked.keys)]
    columns += [exp.alias_(v, f"__v{j}", quoted=True) for j, v in enumerate(values)]
    select = exp.Select(expressions=columns)
    select.set("from_", checked.tree.args["from_"].copy())
    if checked.conjuncts:
        select = select.where(exp.and_(*[c.copy() for c in checked.conjuncts]), copy=False)
    return select.limit(MAX_RECORDS + 1).sql(dialect="duckdb")


def _value(agg: Aggregate) -> exp.Expr:
    """What ACRO aggregates for one of the query's aggregates: 1 per record for COUNT(*),
    1 or NULL for COUNT(x) (NULL: a missing value), the argument as a number otherwise."""
    double = exp.DataType.build("DOUBLE")
    if agg.arg is None:
        return exp.Cast(this=exp.Literal.number(1), to=double)
    if agg.func == "count":
        missing = exp.Is(this=exp.paren(agg.arg.copy()), expression=exp.Null())
        return exp.Case(ifs=[exp.If(this=missing, true=exp.Null())], default=exp.Literal.number(1))
    return exp.TryCast(this=agg.arg.copy(), to=double)


def check_query(
    gateway: Gateway, views: AgreementViews, sql: str, disclosure: Disclosure
) -> dict[str, Any]:
    """ACRO's findings for an aggregate query the gateway answered (see the module doc)."""
    tool = _tool()
    try:
        checked = gateway_sql.check_query(sql, views.names, views.identifiers)
    except GatewayError as err:
        return _not_checked(tool, f"ACRO could not read the query: {err.message}")
    if len(checked.tables) != 1:
        return _not_checked(
            tool,
            f"ACRO checks tables of one table's rows; this query joins {len(checked.tables)} "
            "tables.",
        )
    aggregated = [(o.name, a) for o in checked.outputs if o.key is None for a in o.aggregates]
    try:
        values = [_value(a) for _name, a in aggregated]
        columns, rows = gateway.execute(views, _raw_sql(checked, values))
    except GatewayError as err:
        return _not_checked(tool, f"ACRO could not read the query's records: {err.message}")
    if len(rows) > MAX_RECORDS:
        return _not_checked(
            tool, f"the query reads more than {MAX_RECORDS:,} records; ACRO was not run on them."
        )
    if not rows:
        return _not_checked(tool, "no record meets the query's conditions: no cell to check.")
    try:
        with _session() as acro:
            return _check_table(acro, tool, checked, aggregated, columns, rows, disclosure)
    except Exception as err:  # ACRO's failure is evidence for the checkers, not a refusal
        logger.exception("ACRO failed on a release query")
        return _not_checked(tool, f"ACRO failed on this output ({type(err).__name__}: {err})")


def _check_table(
    acro: SimpleNamespace,
    tool: str,
    checked: CheckedQuery,
    aggregated: Sequence[tuple[str, Aggregate]],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    disclosure: Disclosure,
) -> dict[str, Any]:
    config = risk_appetite(disclosure)
    # Objects, as DuckDB gave them: an integer key with a NULL must not become 7.0.
    raw = pd.DataFrame(list(rows), columns=list(columns), dtype=object)
    names = _key_names(checked)
    labels: list[dict[str, Any]] = []  # per key: ACRO's label -> the value shown
    frame = pd.DataFrame(index=raw.index)
    for i, name in enumerate(names):
        # Plain lists: a pandas map would turn the values into numpy scalars.
        shown = [plain(v) for v in raw[f"__k{i}"].tolist()]
        labels.append({_key_label(v): v for v in shown})
        frame[name] = pd.Series([_key_label(v) for v in shown], index=raw.index, dtype=object)
    if not names:
        names = [_NO_KEYS]
        frame[_NO_KEYS] = "All"
        labels.append({"All": None})
    report = _Report()
    for j, (column, agg) in enumerate(aggregated):
        values = pd.to_numeric(raw[f"__v{j}"], errors="coerce").astype(float)
        values.name = _unique(f"{column} ({agg.func})", names)
        # COUNT(*) aggregates no column, so it has no missing value to look for.
        appetite = {**config, "check_missing_values": agg.arg is not None}
        _check_aggregate(
            acro,
            report,
            appetite,
            frame,
            names,
            values,
            column,
            agg.func,
            place=lambda key: _row(checked, labels, key),
        )
    hidden = [i for i in range(len(checked.keys)) if all(o.key != i for o in checked.outputs)]
    note = (
        f"ACRO checked {len(aggregated)} aggregate(s) over the {len(raw)} records the query "
        f"reads ({_parameters(config)})."
    )
    if hidden:
        note += " Some GROUP BY keys are not in the answer; cells name only the keys shown."
    if any(a.func in ("var_samp", "var_pop") for _c, a in aggregated):
        note += " ACRO has no variance: a variance is checked as a standard deviation."
    return _checked(tool, note, report)


def _check_aggregate(
    acro: SimpleNamespace,
    report: _Report,
    config: dict[str, Any],
    frame: pd.DataFrame,
    names: Sequence[str],
    values: pd.Series,
    column: str,
    func: str,
    place: Callable[[tuple[Any, ...]], tuple[Any, ...]],
) -> None:
    """One ACRO table: ``values`` aggregated by the keys (all but the last down the side,
    the last across, so that empty combinations show); ``place`` turns ACRO's labels of a
    cell into the answer row's key values."""
    index = [frame[n] for n in (names[:-1] if len(names) > 1 else names)]
    across = [frame[names[-1]]] if len(names) > 1 else []
    aggfunc = ACRO_AGGFUNC[func]
    model = acro.details.TableModelDetails(
        index=index,
        columns=across,
        values=values,
        thekwargs={
            "values": values,
            "rownames": None,
            "colnames": None,
            "aggfunc": aggfunc,
            "margins": False,
            "margins_name": "All",
            "dropna": False,
            "normalize": False,
        },
        risk_appetite=config,
        command="crosstab" if across else "pivot_table",
    )
    (analysis,) = acro.tables.aggfunc_to_strings(aggfunc)
    checks = acro.checks.SDCChecks(config)
    evidence = checks.get_evidence_forall_analyses([analysis], model)
    result = checks.run_checks_for_analysis(analysis, evidence, model)
    _record(report, column, analysis, result)
    for check, mask in result.outcomes.items():
        finding = FINDINGS.get(check)
        flagged = _flagged(check, mask, config) if finding else None
        if flagged is None or finding is None:
            continue
        if check in ("NKCheck", "PPercentCheck") and _NEGATIVE in str(result.summaries):
            finding = "negative"
        for r, c in np.argwhere(flagged.to_numpy(dtype=bool)):
            row_label, col_label = flagged.index[r], flagged.columns[c]
            key = (row_label if isinstance(row_label, tuple) else (row_label,)) + (
                (col_label,) if across else ()
            )
            detail = _detail(finding, evidence, config, row_label, col_label)
            report.cell(column, place(key)).add(finding, detail)


def _key_names(checked: CheckedQuery) -> list[str]:
    """A name per group key for ACRO's table: the answer's column name where shown."""
    names: list[str] = []
    for i, key in enumerate(checked.keys):
        shown = next((o.name for o in checked.outputs if o.key == i), None)
        names.append(_unique(shown or key.sql(dialect="duckdb"), names))
    return names


def _unique(name: str, taken: Sequence[str]) -> str:
    found, n = name, 1
    while found in taken:
        n += 1
        found = f"{name}_{n}"
    return found


def _row(
    checked: CheckedQuery, labels: Sequence[dict[str, Any]], key: tuple[Any, ...]
) -> tuple[Any, ...]:
    """ACRO's cell labels as the answer row's key values, in the answer's column order."""
    if len(checked.keys) == 0:
        return ()
    values = [labels[i].get(label, label) for i, label in enumerate(key)]
    return tuple(values[o.key] for o in checked.outputs if o.key is not None)


def check_fit(
    gateway: Gateway, views: AgreementViews, spec: dict[str, Any], disclosure: Disclosure
) -> dict[str, Any]:
    """ACRO's degrees-of-freedom check of a model fit, on the complete records the fit
    uses (``sandbox.gateway.fit``): ACRO's OLS for a linear model, its logit otherwise."""
    tool = _tool()
    features = list(spec.get("features") or [])
    try:
        sql = exact_fit.data_sql(
            views, spec["table"], features, spec["target"], spec.get("filters")
        )
        _columns, rows = gateway.execute(views, sql)
    except GatewayError as err:
        return _not_checked(tool, f"ACRO could not read the fit's records: {err.message}")
    p = len(features)
    complete = [
        r[: p + 1] for r in rows if all(v is not None and np.isfinite(v) for v in r[: p + 1])
    ]
    if not complete:
        return _not_checked(tool, "the fit has no complete record: nothing to check.")
    try:
        with _session() as acro:
            config = risk_appetite(disclosure)
            config["check_missing_values"] = False  # a table check; the fit drops them
            data = np.asarray(complete, dtype=float)
            x = acro.sm.add_constant(data[:, :p], has_constant="add")
            y = data[:, p]
            if spec.get("model") == "logistic":
                model, analysis = acro.sm.Logit(y, x), "Logit"
            else:
                model, analysis = acro.sm.OLS(y, x), "GeneralLinearModel"
            checks = acro.checks.SDCChecks(config)
            evidence = checks.get_evidence_forall_analyses([analysis], model)
            result = checks.run_checks_for_analysis(analysis, evidence, model)
    except Exception as err:  # ACRO's failure is evidence for the checkers, not a refusal
        logger.exception("ACRO failed on a release fit")
        return _not_checked(tool, f"ACRO failed on this fit ({type(err).__name__}: {err})")
    report = _Report()
    _record(report, "model", analysis, result)
    dof = int(evidence.dof)
    if dof < config["safe_dof_threshold"]:
        report.cell("model", ()).add(
            "dof",
            f"{dof} residual degrees of freedom < {config['safe_dof_threshold']}",
        )
    dropped = len(rows) - len(complete)
    note = (
        f"ACRO checked the model's residual degrees of freedom on the {len(complete)} complete "
        f"records the fit uses (threshold {config['safe_dof_threshold']})."
    )
    if dropped:
        note += f" {dropped} record(s) with a missing value are left out, as the fit does."
    return _checked(tool, note, report)


def _checked(tool: str, note: str, report: Any) -> dict[str, Any]:
    """The evidence of an output ACRO checked: its status, summary and flagged cells."""
    return {
        "tool": tool,
        "checked": True,
        "note": note,
        "status": report.status(),
        "summary": report.summary,
        "cells": report.as_cells(),
    }
