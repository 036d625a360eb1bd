"""Quality and privacy report for a synthetic table, its plots, and the publication gates.

:func:`build_report` takes a :class:`anonymisation.synthesis.SynthesisResult` and returns a
JSON-able dict:

* ``quality``: SDMetrics ``QualityReport`` (overall score, Column Shapes, Column Pair Trends,
  per-column and per-pair scores) on the training rows against the synthetic rows;
* ``diagnostic``: SDMetrics ``DiagnosticReport`` (data validity, data structure);
* ``privacy``: ``DCROverfittingProtection`` against the holdout (a gate),
  ``DCRBaselineProtection`` (for information: it compares with uniform random rows, so a
  faithful synthesizer scores low on it), ``copied_rows`` (synthetic rows equal, ignoring
  ids, to a training row that is unique in the training data: a copy of one record),
  ``common_rows`` (equal to a training row that occurs more than once: not a copy of anyone
  in particular), SDMetrics ``NewRowSynthesis`` on a sample, and ``pii_overlap`` (synthetic
  id values equal to real ones);
* ``plots``: what :func:`render_plots` draws: real vs synthetic per column and for the
  strongest pairs, as small self-contained SVG files (no JavaScript, no fonts, nothing to
  download), which the portal can inline or serve from its own origin.

:func:`gates` compares a report with the steward's :class:`Thresholds` and lists the gates
that failed; a version with any failed gate is not published. Large inputs are sampled with
a seed (``report_rows`` for quality, ``privacy_rows`` for the distance metrics, which are
quadratic), so the same result always gives the same report.
"""

from __future__ import annotations

import html
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from anonymisation.synth_specs import TableSpec
from anonymisation.synthesis import SynthesisResult

DEFAULT_REPORT_ROWS = 50_000
DEFAULT_PRIVACY_ROWS = 2_000
DEFAULT_PAIRS = 5
REAL_COLOUR, SYNTH_COLOUR = "#1f5f9f", "#e07b00"


@dataclass(frozen=True)
class Thresholds:
    """Publication gates; the steward sets the defaults."""

    quality: float = 0.75
    dcr_overfitting: float = 0.9
    copied_rows: int = 0
    pii_overlap: int = 0


def _metadata(spec: TableSpec, *, ids: bool) -> dict[str, Any]:
    columns = {c.name: {"sdtype": c.kind} for c in spec.columns if ids or c.kind != "id"}
    out: dict[str, Any] = {"columns": columns}
    if ids and spec.primary_key:
        out["primary_key"] = spec.primary_key
    return out


def _data_columns(spec: TableSpec) -> list[str]:
    return [c.name for c in spec.columns if c.kind != "id"]


def _sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    if len(frame) <= n:
        return frame.reset_index(drop=True)
    return frame.sample(n=n, random_state=seed).reset_index(drop=True)


def _for_metrics(frame: pd.DataFrame, spec: TableSpec, *, ids: bool) -> pd.DataFrame:
    """Plain dtypes SDMetrics handles: floats for numbers, objects for the rest."""
    out = {}
    for c in spec.columns:
        if c.kind == "id" and not ids:
            continue
        values = frame[c.name]
        if c.kind == "numerical":
            out[c.name] = pd.to_numeric(values, errors="coerce").astype("float64")
        else:
            out[c.name] = values.astype(object).where(values.notna(), None)
    return pd.DataFrame(out)


def _round(value: Any, digits: int = 4) -> Any:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, digits)


def _quality(real: pd.DataFrame, synth: pd.DataFrame, spec: TableSpec) -> dict[str, Any]:
    from sdmetrics.reports.single_table import QualityReport

    report = QualityReport()
    report.generate(real, synth, _metadata(spec, ids=False), verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    shapes = report.get_details("Column Shapes")
    pairs = report.get_details("Column Pair Trends")
    pair_rows = []
    for row in pairs.to_dict("records"):
        pair_rows.append(
            {
                "columns": [row["Column 1"], row["Column 2"]],
                "metric": row["Metric"],
                "score": _round(row.get("Score")),
                "real_correlation": _round(row.get("Real Correlation")),
                "synthetic_correlation": _round(row.get("Synthetic Correlation")),
            }
        )
    return {
        "score": _round(report.get_score()),
        "column_shapes": _round(props.get("Column Shapes")),
        "column_pair_trends": _round(props.get("Column Pair Trends")),
        "columns": [
            {"column": r["Column"], "metric": r["Metric"], "score": _round(r["Score"])}
            for r in shapes.to_dict("records")
        ],
        "pairs": pair_rows,
    }


def _diagnostic(real: pd.DataFrame, synth: pd.DataFrame, spec: TableSpec) -> dict[str, Any]:
    from sdmetrics.reports.single_table import DiagnosticReport

    report = DiagnosticReport()
    report.generate(real, synth, _metadata(spec, ids=True), verbose=False)
    props = report.get_properties().set_index("Property")["Score"]
    return {
        "score": _round(report.get_score()),
        "properties": {k: _round(v) for k, v in props.items()},
    }


def _row_keys(frame: pd.DataFrame, columns: list[str]) -> pd.Series:
    """A hash per row over ``columns``, with nulls equal to nulls and 1 == 1.0."""
    norm = pd.DataFrame(
        {
            c: (
                pd.to_numeric(frame[c], errors="coerce").astype("float64")
                if pd.api.types.is_numeric_dtype(frame[c].dtype)
                and not pd.api.types.is_bool_dtype(frame[c].dtype)
                else frame[c].astype(object).where(frame[c].notna(), None).astype(str)
            )
            for c in columns
        }
    )
    return pd.util.hash_pandas_object(norm, index=False)


def copied_rows(training: pd.DataFrame, synthetic: pd.DataFrame, spec: TableSpec) -> dict[str, int]:
    """Synthetic rows equal (all non-id columns) to a unique training row (``copied``) or
    to a training row that occurs more than once (``common``)."""
    columns = _data_columns(spec)
    if not columns:
        return {"copied": 0, "common": 0}
    counts = _row_keys(training, columns).value_counts()
    synth = _row_keys(synthetic, columns)
    matched = synth.map(counts).fillna(0)
    return {"copied": int((matched == 1).sum()), "common": int((matched > 1).sum())}


def pii_overlap(real: pd.DataFrame, synthetic: pd.DataFrame, spec: TableSpec) -> dict[str, int]:
    """Per id column, synthetic values that equal a real value (should be 0 everywhere)."""
    out = {}
    for name in spec.id_columns:
        real_values = set(real[name].dropna().astype(str))
        out[name] = int(synthetic[name].dropna().astype(str).isin(real_values).sum())
    return out


_DCR_KINDS = ("numerical", "datetime", "categorical", "boolean")


def _dcr_columns(
    dataset: pd.DataFrame, reference: pd.DataFrame, metadata: Mapping[str, Any]
) -> list[tuple[str, str]]:
    return [
        (name, meta["sdtype"])
        for name, meta in metadata["columns"].items()
        if meta["sdtype"] in _DCR_KINDS and name in dataset and name in reference
    ]


def _as_float(values: pd.Series, kind: str) -> np.ndarray:
    if kind == "datetime":
        stamps = pd.to_datetime(values, errors="coerce")
        seconds = stamps.astype("int64").astype("float64") / 1e9
        return np.where(stamps.isna(), np.nan, seconds)
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")


def fast_dcr(
    dataset: pd.DataFrame,
    reference: pd.DataFrame,
    metadata: Mapping[str, Any],
    *,
    chunk: int = 256,
    span_of: pd.DataFrame | None = None,
) -> np.ndarray:
    """Distance to the closest record of ``reference`` for every row of ``dataset``, with
    SDMetrics' definition (``sdmetrics.single_table.privacy.dcr_utils.calculate_dcr``): per
    column, numbers and dates differ by ``|a - b| / range`` (capped at 1; a zero range
    counts any difference as 1), categories by 0 or 1, a value against a missing one by 1,
    two missing by 0; a row's distance is the mean over columns. ``span_of`` (default
    ``reference``) gives the ranges: distances to two references compare only when both
    use the same ranges. Vectorised with numpy,
    ``chunk`` rows at a time, instead of pandas cross joins (a test checks both agree)."""
    columns = _dcr_columns(dataset, reference, metadata)
    if not columns:
        raise ValueError("there are no overlapping statistical columns to measure")
    n, m = len(dataset), len(reference)
    data_cols: list[tuple[np.ndarray, np.ndarray, str, float]] = []
    for name, kind in columns:
        if kind in ("numerical", "datetime"):
            d, r = _as_float(dataset[name], kind), _as_float(reference[name], kind)
            spread = r if span_of is None else _as_float(span_of[name], kind)
            finite = spread[~np.isnan(spread)]
            span = float(finite.max() - finite.min()) if finite.size else 0.0
            data_cols.append((d, r, "num", span))
        else:
            both = pd.concat([dataset[name], reference[name]], ignore_index=True).astype(object)
            codes, _ = pd.factorize(both, use_na_sentinel=True)  # missing -> -1, equal to itself
            data_cols.append((codes[:n].astype("float64"), codes[n:].astype("float64"), "cat", 0))
    out = np.empty(n, dtype="float64")
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        total = np.zeros((stop - start, m), dtype="float64")
        for d, r, how, span in data_cols:
            a, b = d[start:stop, None], r[None, :]
            if how == "cat":
                total += a != b
                continue
            diff = np.abs(a - b)
            dist = (diff > 0).astype("float64") if span == 0 else np.minimum(diff / span, 1.0)
            a_nan, b_nan = np.isnan(a), np.isnan(b)
            dist = np.where(a_nan ^ b_nan, 1.0, dist)
            dist = np.where(a_nan & b_nan, 0.0, dist)
            total += dist
        out[start:stop] = total.min(axis=1) / len(data_cols)
    return out


def _random_like(
    reference: pd.DataFrame, metadata: Mapping[str, Any], n: int, seed: int
) -> pd.DataFrame:
    """Uniform random rows over each column's observed range or categories (SDMetrics'
    baseline for ``DCRBaselineProtection``)."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for name, kind in _dcr_columns(reference, reference, metadata):
        values = reference[name].dropna()
        if values.empty:
            out[name] = [None] * n
        elif kind in ("numerical", "datetime"):
            x = _as_float(values, kind)
            drawn = rng.uniform(np.nanmin(x), np.nanmax(x), n)
            out[name] = pd.to_datetime(drawn, unit="s") if kind == "datetime" else drawn
        else:
            cats = pd.unique(values.astype(object))
            out[name] = cats[rng.integers(0, len(cats), n)]
    return pd.DataFrame(out)


def _privacy(result: SynthesisResult, spec: TableSpec, rows: int, seed: int) -> dict[str, Any]:
    from sdmetrics.single_table import DCROverfittingProtection, NewRowSynthesis

    meta = _metadata(spec, ids=False)
    train = _for_metrics(_sample(result.training, rows, seed), spec, ids=False)
    synth = _for_metrics(_sample(result.synthetic, rows, seed + 1), spec, ids=False)
    out: dict[str, Any] = {}
    hold = _for_metrics(_sample(result.holdout, rows, seed + 2), spec, ids=False)
    # One set of column ranges (the real rows compared: training and holdout samples) for
    # both distances: the larger training sample spans a wider range, so ranges of its own
    # would shrink every distance to it and count rows "closer to training" that are not.
    real_rows = pd.concat([train, hold], ignore_index=True)
    d_train = fast_dcr(synth, train, meta, span_of=real_rows)  # overfitting and baseline
    if len(result.holdout):
        # SDMetrics' DCROverfittingProtection is 2 × (share of synthetic rows closer to the
        # holdout), for a holdout as large as the training set. Ours is usually smaller, so
        # the share expected of a synthesizer that learnt nothing row-specific is
        # |H| / (|T| + |H|) (the nearest of T ∪ H is then equally likely any row); the score
        # is the observed share over that, capped at 1: the same number when |T| = |H|.
        d_hold = fast_dcr(synth, hold, meta, span_of=real_rows)
        closer_to_training = float(np.mean(d_train < d_hold))
        expected_holdout = len(hold) / (len(train) + len(hold))
        score = min(1.0, (1.0 - closer_to_training) / expected_holdout)
        out["dcr_overfitting_protection"] = _round(score)
        out["dcr_overfitting_detail"] = {
            "closer_to_training": _round(closer_to_training),
            "closer_to_holdout": _round(1 - closer_to_training),
            "expected_closer_to_holdout": _round(expected_holdout),
            "training_rows": len(train),
            "holdout_rows": len(hold),
            "synthetic_rows": len(synth),
        }
        # SDMetrics' own metric at equal sizes, for reference, on at most 500 rows each (its
        # pandas cross joins are slow).
        n = min(len(train), len(hold), len(synth), 500)
        sd = DCROverfittingProtection.compute(
            _sample(train, n, seed), _sample(synth, n, seed), _sample(hold, n, seed), meta, None
        )
        out["dcr_overfitting_protection_sdmetrics_equal_sizes"] = _round(sd)
    else:
        out["dcr_overfitting_protection"] = None
    # DCRBaselineProtection: median DCR of the synthetic rows over that of uniform random
    # rows, both against the training sample, capped at 1.
    random_rows = _random_like(train, meta, len(synth), seed + 3)
    synth_median = float(np.median(d_train))
    random_median = float(np.median(fast_dcr(random_rows, train, meta, span_of=real_rows)))
    baseline = 1.0 if random_median == 0 else min(1.0, synth_median / random_median)
    out["dcr_baseline_protection"] = _round(baseline)
    out["new_row_synthesis"] = _round(
        NewRowSynthesis.compute(train, synth, meta, synthetic_sample_size=min(len(synth), 200))
    )
    out.update(
        {f"{k}_rows": v for k, v in copied_rows(result.training, result.synthetic, spec).items()}
    )
    real = pd.concat([result.training, result.holdout], ignore_index=True)
    overlap = pii_overlap(real, result.synthetic, spec)
    out["pii_overlap"] = overlap
    out["pii_overlap_total"] = int(sum(overlap.values()))
    out["rows_compared"] = {"training": len(train), "synthetic": len(synth)}
    return out


def _strongest_pairs(quality: Mapping[str, Any], n: int) -> list[list[str]]:
    numeric = [p for p in quality["pairs"] if p.get("real_correlation") is not None]
    numeric.sort(key=lambda p: -abs(p["real_correlation"]))
    return [p["columns"] for p in numeric[:n]]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def build_report(
    result: SynthesisResult,
    *,
    thresholds: Thresholds | None = None,
    report_rows: int = DEFAULT_REPORT_ROWS,
    privacy_rows: int = DEFAULT_PRIVACY_ROWS,
    pairs: int = DEFAULT_PAIRS,
    plot_dir: Path | None = None,
) -> dict[str, Any]:
    """The quality and privacy report of ``result`` (see the module docstring), with its
    gates evaluated against ``thresholds``; plots are written to ``plot_dir`` if given."""
    spec, seed = result.spec, result.seed
    timings: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        real = _for_metrics(_sample(result.training, report_rows, seed), spec, ids=False)
        synth = _for_metrics(_sample(result.synthetic, report_rows, seed + 1), spec, ids=False)
        quality = _quality(real, synth, spec)
        timings["quality"] = time.perf_counter() - t
        t = time.perf_counter()
        diag_real = _for_metrics(_sample(result.training, report_rows, seed), spec, ids=True)
        diag_synth = _for_metrics(_sample(result.synthetic, report_rows, seed + 1), spec, ids=True)
        diagnostic = _diagnostic(diag_real, diag_synth, spec)
        timings["diagnostic"] = time.perf_counter() - t
        t = time.perf_counter()
        privacy = _privacy(result, spec, privacy_rows, seed)
        timings["privacy"] = time.perf_counter() - t
    plots = [
        {
            "file": f"{_slug(result.table)}-column-{_slug(c)}.svg",
            "kind": "column",
            "columns": [c],
        }
        for c in _data_columns(spec)
    ] + [
        {
            "file": f"{_slug(result.table)}-pair-{_slug(a)}-{_slug(b)}.svg",
            "kind": "pair",
            "columns": [a, b],
        }
        for a, b in _strongest_pairs(quality, pairs)
    ]
    report: dict[str, Any] = {
        "synthesis": result.summary(),
        "quality": quality,
        "diagnostic": diagnostic,
        "privacy": privacy,
        "plots": plots,
        "thresholds": asdict(thresholds or Thresholds()),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    failed = gates(report, thresholds)
    report["gates"] = {"passed": not failed, "failed": failed}
    if plot_dir is not None:
        t = time.perf_counter()
        write_plots(render_plots(result, report), plot_dir)
        report["timings"]["plots"] = round(time.perf_counter() - t, 3)
    return report


def gates(report: Mapping[str, Any], thresholds: Thresholds | None = None) -> list[dict[str, Any]]:
    """The publication gates ``report`` fails (empty: publishable), each with its value,
    threshold and a sentence saying what failed."""
    th = thresholds or Thresholds()
    failed: list[dict[str, Any]] = []
    quality = report["quality"]["score"]
    if quality is None or quality < th.quality:
        failed.append(
            {
                "gate": "quality",
                "value": quality,
                "threshold": th.quality,
                "message": f"quality score {quality} is below the minimum {th.quality}",
            }
        )
    dcr = report["privacy"].get("dcr_overfitting_protection")
    if dcr is None or dcr < th.dcr_overfitting:
        failed.append(
            {
                "gate": "dcr_overfitting",
                "value": dcr,
                "threshold": th.dcr_overfitting,
                "message": (
                    "no holdout to measure overfitting against"
                    if dcr is None
                    else f"DCR overfitting protection {dcr} is below the minimum "
                    f"{th.dcr_overfitting}: synthetic rows sit closer to the training rows "
                    "than to unseen rows"
                ),
            }
        )
    copied = report["privacy"]["copied_rows"]
    if copied > th.copied_rows:
        failed.append(
            {
                "gate": "copied_rows",
                "value": copied,
                "threshold": th.copied_rows,
                "message": f"{copied} synthetic row(s) copy a unique real row",
            }
        )
    overlap = report["privacy"]["pii_overlap_total"]
    if overlap > th.pii_overlap:
        columns = [c for c, n in report["privacy"]["pii_overlap"].items() if n]
        failed.append(
            {
                "gate": "pii_overlap",
                "value": overlap,
                "threshold": th.pii_overlap,
                "message": f"{overlap} synthetic identifier value(s) equal real ones "
                f"(columns {', '.join(columns)})",
            }
        )
    return failed


# Plots: small self-contained SVG ------------------------------------------------------------

_W, _H, _PAD = 420, 260, 36


def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
        f"<title>{html.escape(title)}</title>"
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-size="12">'
        f"{html.escape(title)}</text>" + "".join(body) + "</svg>"
    )


def _legend(x: float, y: float) -> list[str]:
    return [
        f'<rect x="{x}" y="{y - 8}" width="10" height="10" fill="{REAL_COLOUR}"/>'
        f'<text x="{x + 14}" y="{y + 1}">real</text>'
        f'<rect x="{x + 50}" y="{y - 8}" width="10" height="10" fill="{SYNTH_COLOUR}"/>'
        f'<text x="{x + 64}" y="{y + 1}">synthetic</text>'
    ]


def _numeric_plot(real: pd.Series, synth: pd.Series, title: str, bins: int = 30) -> str:
    r = pd.to_numeric(real, errors="coerce").dropna().to_numpy(dtype=float)
    s = pd.to_numeric(synth, errors="coerce").dropna().to_numpy(dtype=float)
    if len(r) == 0:
        return _svg(_W, _H, ['<text x="20" y="40">no values</text>'], title)
    lo, hi = float(np.min(r)), float(np.max(r))
    if hi <= lo:
        hi = lo + 1
    edges = np.linspace(lo, hi, bins + 1)
    hr = np.histogram(r, edges)[0] / max(1, len(r))
    hs = np.histogram(np.clip(s, lo, hi), edges)[0] / max(1, len(s))
    top = max(float(hr.max()), float(hs.max()), 1e-9)
    pw, ph = _W - 2 * _PAD, _H - 2 * _PAD
    body = [f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#888"/>']
    bw = pw / bins
    for i in range(bins):
        x = _PAD + i * bw
        for j, (h, colour) in enumerate(((hr[i], REAL_COLOUR), (hs[i], SYNTH_COLOUR))):
            height = ph * h / top
            body.append(
                f'<rect x="{x + j * bw / 2:.1f}" y="{_H - _PAD - height:.1f}" '
                f'width="{bw / 2:.1f}" height="{height:.1f}" fill="{colour}"/>'
            )
    body.append(f'<text x="{_PAD}" y="{_H - _PAD + 14}">{lo:.4g}</text>')
    body.append(f'<text x="{_W - _PAD}" y="{_H - _PAD + 14}" text-anchor="end">{hi:.4g}</text>')
    body += _legend(_PAD, 30)
    return _svg(_W, _H, body, title)


def _categorical_plot(real: pd.Series, synth: pd.Series, title: str, top: int = 12) -> str:
    r = real.astype(object).where(real.notna(), "(missing)").astype(str)
    s = synth.astype(object).where(synth.notna(), "(missing)").astype(str)
    rf = r.value_counts(normalize=True)
    sf = s.value_counts(normalize=True)
    cats = list(rf.index[:top])
    height = 40 + 22 * len(cats) + 20
    label_w = 130
    pw = _W - label_w - 20
    peak = max([float(rf.get(c, 0)) for c in cats] + [float(sf.get(c, 0)) for c in cats] + [1e-9])
    body = _legend(label_w, 32)
    for i, cat in enumerate(cats):
        y = 44 + 22 * i
        body.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{html.escape(cat[:20])}</text>'
        )
        for j, (f, colour) in enumerate(
            ((float(rf.get(cat, 0)), REAL_COLOUR), (float(sf.get(cat, 0)), SYNTH_COLOUR))
        ):
            body.append(
                f'<rect x="{label_w}" y="{y + j * 9}" width="{pw * f / peak:.1f}" height="8" '
                f'fill="{colour}"/>'
            )
    if len(rf) > top:
        body.append(f'<text x="{label_w}" y="{height - 6}">+{len(rf) - top} more</text>')
    return _svg(_W, height, body, title)


def _heatmap(x: np.ndarray, y: np.ndarray, xe: np.ndarray, ye: np.ndarray, ox: float) -> list[str]:
    counts = np.histogram2d(x, y, [xe, ye])[0]
    counts = counts / max(1.0, counts.max())
    n = len(xe) - 1
    cell = (_H - 2 * _PAD) / n
    body = []
    for i in range(n):
        for j in range(n):
            v = counts[i, j]
            if v <= 0:
                continue
            shade = int(255 - 215 * v)
            body.append(
                f'<rect x="{ox + i * cell:.1f}" y="{_H - _PAD - (j + 1) * cell:.1f}" '
                f'width="{cell:.1f}" height="{cell:.1f}" fill="rgb({shade},{shade},255)"/>'
            )
    return body


def _pair_plot(real: pd.DataFrame, synth: pd.DataFrame, a: str, b: str, bins: int = 16) -> str:
    def xy(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        both = frame[[a, b]].apply(pd.to_numeric, errors="coerce").dropna()
        return both[a].to_numpy(dtype=float), both[b].to_numpy(dtype=float)

    rx, ry = xy(real)
    sx, sy = xy(synth)
    title = f"{a} × {b}: real (left) and synthetic (right)"
    if len(rx) == 0:
        return _svg(2 * _W, _H, ['<text x="20" y="40">no values</text>'], title)
    xe = np.linspace(rx.min(), rx.max() if rx.max() > rx.min() else rx.min() + 1, bins + 1)
    ye = np.linspace(ry.min(), ry.max() if ry.max() > ry.min() else ry.min() + 1, bins + 1)
    body = _heatmap(rx, ry, xe, ye, _PAD) + _heatmap(
        np.clip(sx, xe[0], xe[-1]), np.clip(sy, ye[0], ye[-1]), xe, ye, _W + _PAD
    )
    for ox in (_PAD, _W + _PAD):
        body.append(f'<text x="{ox}" y="{_H - _PAD + 14}">{html.escape(a)}</text>')
        body.append(
            f'<text x="{ox - 4}" y="{_PAD}" text-anchor="end" '
            f'transform="rotate(-90 {ox - 4} {_PAD})">{html.escape(b)}</text>'
        )
    return _svg(2 * _W, _H, body, title)


def render_plots(result: SynthesisResult, report: Mapping[str, Any]) -> dict[str, str]:
    """``{file name: SVG text}`` for every plot the report lists (on the same seeded
    samples as the quality scores)."""
    seed, spec = result.seed, result.spec
    rows = DEFAULT_REPORT_ROWS
    real = _sample(result.training, rows, seed)
    synth = _sample(result.synthetic, rows, seed + 1)
    out: dict[str, str] = {}
    for plot in report["plots"]:
        if plot["kind"] == "column":
            (name,) = plot["columns"]
            title = f"{result.table}.{name}"
            if spec.column(name).kind == "numerical":
                out[plot["file"]] = _numeric_plot(real[name], synth[name], title)
            else:
                out[plot["file"]] = _categorical_plot(real[name], synth[name], title)
        else:
            a, b = plot["columns"]
            out[plot["file"]] = _pair_plot(real, synth, a, b)
    return out


def write_plots(plots: Mapping[str, str], directory: Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, svg in plots.items():
        path = directory / name
        path.write_text(svg, encoding="utf-8")
        paths.append(path)
    return paths
