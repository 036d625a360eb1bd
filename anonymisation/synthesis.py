"""Synthetic equivalents of de-identified tables (SDV behind a small interface).

The public entry point: :func:`synthesize_table` and :func:`synthesize_tables`. The caller
describes its tables with :mod:`anonymisation.datamodel` (the hub builds those facts from the
common data model); the library knows no data model of its own.

Synthesis runs on **de-identified** data only: pseudonyms, day offsets, age bands. A frame
that still holds a direct identifier, or a linkable-identifier column whose values are not
pseudonyms, is refused (:class:`SynthesisError`) so raw data can never be fitted by mistake.

* **Metadata** (:mod:`anonymisation.synth_specs`) comes from the table facts and the frame's
  dtypes: linkable identifiers are ids (regenerated as ``S`` + 31 hex characters, which can
  never equal a real pseudonym of 32 hex characters), categories, bands and short strings are
  categorical, numbers and day offsets numerical. Free text is not synthesised (its columns
  are dropped and listed).
* **Constraints** come from the table facts: ranges (each column stays within the training
  data's range, itself inside the declared one, then checked against the declared bounds),
  allowed values (only categories seen in training are sampled, then checked against the
  declared list) and the table's inequality chains where the columns exist (``release_date``
  ≥ ``manufacturing_start``), enforced by SDV's constraint-augmented generation.
* **Training** uses a seeded subsample of at most ``max_training_rows`` rows; a seeded
  holdout (``holdout_fraction``) is never trained on, so the privacy report can compare.
* **Backends** (:mod:`anonymisation.synth_backends`) implement :class:`Backend` and are
  registered by name in :data:`BACKENDS`; ``gaussian_copula`` (default), ``ctgan`` and
  ``tvae`` are SDV's. SDV is under the Business Source License 1.1 (see the README); a
  deployment may register another backend.

Multi-table synthesis (:func:`synthesize_tables`) keeps the relations with SDV's
``HMASynthesizer`` when SDV accepts the schema (at most 5 tables, depth at most 2, no
composite keys); otherwise each table is synthesised alone and its foreign keys are drawn
from the synthetic parent keys with the real number of children per parent
(:mod:`anonymisation.synth_links`), so joins still work, and the result's ``notes`` say that
cross-table correlations are not kept.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from anonymisation.datamodel import ModelFacts, TableFacts
from anonymisation.progress import Progress, Steps
from anonymisation.synth_backends import (
    BACKENDS,
    DEFAULT_METHOD,
    SYNTHETIC_ID_REGEX,
    Backend,
    SDVBackend,
    get_backend,
    register_backend,
    sdv_refusal,
)
from anonymisation.synth_links import (
    derived_keys,
    links_between,
    order_tables,
    referential_integrity,
    relink,
    split_linked,
)
from anonymisation.synth_specs import (
    ColumnSpec,
    Link,
    SynthesisError,
    SynthMetadata,
    TableSpec,
    check_constraints,
    check_inequalities,
    distinct_keys,
    finish,
    table_spec,
    training_frame,
)

# The names callers import from here, wherever they are defined.
__all__ = [
    "BACKENDS",
    "DEFAULT_HOLDOUT_FRACTION",
    "DEFAULT_MAX_TRAINING_ROWS",
    "DEFAULT_METHOD",
    "MAX_HOLDOUT_ROWS",
    "STEPS",
    "SYNTHETIC_ID_REGEX",
    "Backend",
    "ColumnSpec",
    "Link",
    "MultiSynthesisResult",
    "Progress",
    "SDVBackend",
    "SynthMetadata",
    "SynthesisError",
    "SynthesisResult",
    "TableSpec",
    "check_constraints",
    "get_backend",
    "referential_integrity",
    "register_backend",
    "split_holdout",
    "synthesize_table",
    "synthesize_tables",
    "table_spec",
]

DEFAULT_MAX_TRAINING_ROWS = 200_000
DEFAULT_HOLDOUT_FRACTION = 0.2
MAX_HOLDOUT_ROWS = 50_000
STEPS = 4  # prepare, fit, sample, check: progress(done, label) is called after each

# Results ------------------------------------------------------------------------------------


@dataclass
class SynthesisResult:
    """One synthetic table with what it was made from; ``summary()`` is JSON-able."""

    table: str
    method: str
    backend: str
    seed: int
    synthetic: pd.DataFrame
    training: pd.DataFrame
    holdout: pd.DataFrame
    spec: TableSpec
    rows_in: int
    dropped_columns: dict[str, str] = field(default_factory=dict)
    constraints: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "method": self.method,
            "backend": self.backend,
            "seed": self.seed,
            "rows_in": self.rows_in,
            "rows_trained": len(self.training),
            "rows_holdout": len(self.holdout),
            "rows_synthetic": len(self.synthetic),
            "columns": [{"name": c.name, "kind": c.kind} for c in self.spec.columns],
            "dropped_columns": self.dropped_columns,
            "constraints": self.constraints,
            "notes": self.notes,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


@dataclass
class MultiSynthesisResult:
    """Linked synthetic tables: per-table results plus how the links were kept."""

    tables: dict[str, SynthesisResult]
    links: tuple[Link, ...]
    mode: str  # "hma" or "per_table"
    notes: list[str] = field(default_factory=list)
    integrity: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "links": [
                f"{link.child}.{link.column} -> {link.parent}.{link.key}" for link in self.links
            ],
            "notes": self.notes,
            "integrity": self.integrity,
            "tables": {name: r.summary() for name, r in self.tables.items()},
        }


# Single table -------------------------------------------------------------------------------


def split_holdout(
    frame: pd.DataFrame, *, fraction: float, seed: int, max_training_rows: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, holdout): a seeded holdout of ``fraction`` (at most
    :data:`MAX_HOLDOUT_ROWS`), then at most ``max_training_rows`` of the rest."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    n_hold = min(int(round(len(frame) * fraction)), MAX_HOLDOUT_ROWS) if fraction > 0 else 0
    hold, rest = order[:n_hold], order[n_hold:]
    rest = np.sort(rest[:max_training_rows])
    return frame.iloc[rest], frame.iloc[np.sort(hold)]


def synthesize_table(
    frame: pd.DataFrame,
    table: TableFacts,
    *,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    num_rows: int | None = None,
    max_training_rows: int = DEFAULT_MAX_TRAINING_ROWS,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    backend: Backend | None = None,
    backend_options: Mapping[str, Any] | None = None,
    progress: Progress | None = None,
) -> SynthesisResult:
    """Synthesise a de-identified ``frame`` of ``table``: ``num_rows`` rows (default:
    as many as the input). Same input and seed, same output. ``backend`` overrides
    ``method`` with an already built :class:`Backend`; ``backend_options`` go to the
    method's factory (for SDV, to the synthesizer: ``{"epochs": 50}`` for CTGAN or TVAE).
    ``progress(done, label)`` is called after each of :data:`STEPS` steps."""
    if len(frame) < 10:
        raise SynthesisError(f"`{table.name}` has {len(frame)} rows; synthesis needs at least 10")
    step = Steps(progress)
    t = time.perf_counter()
    spec, dropped = table_spec(frame, table)
    data = training_frame(frame, spec)
    training, holdout = split_holdout(
        data, fraction=holdout_fraction, seed=seed, max_training_rows=max_training_rows
    )
    spec, notes = check_inequalities(training, spec)
    if len(data) - len(holdout) > max_training_rows:
        notes.append(
            f"trained on a seeded sample of {max_training_rows:,} of "
            f"{len(data) - len(holdout):,} rows"
        )
    engine = backend or get_backend(method, **(backend_options or {}))
    step("prepare", t)

    t = time.perf_counter()
    engine.fit({table.name: training}, SynthMetadata({table.name: spec}), seed=seed)
    notes += list(getattr(engine, "notes", []))
    step("fit", t)

    t = time.perf_counter()
    rows = num_rows if num_rows is not None else len(frame)
    sample = engine.sample(num_rows=rows, seed=seed)[table.name]
    synthetic = finish(sample[[c.name for c in spec.columns]], spec, training, seed)
    synthetic, repeated = distinct_keys(synthetic, spec)
    if repeated:
        notes.append(_repeated_note(repeated, spec))
    step("sample", t)

    t = time.perf_counter()
    constraints = check_constraints(synthetic, spec)
    step("check", t)
    return SynthesisResult(
        table=table.name,
        method=method if backend is None else getattr(backend, "name", "custom"),
        backend=getattr(engine, "name", type(engine).__name__),
        seed=seed,
        synthetic=synthetic,
        training=training.reset_index(drop=True),
        holdout=holdout.reset_index(drop=True),
        spec=spec,
        rows_in=len(frame),
        dropped_columns=dropped,
        constraints=constraints,
        notes=notes,
        timings=step.timings,
    )


# Several linked tables ----------------------------------------------------------------------


def synthesize_tables(
    frames: Mapping[str, pd.DataFrame],
    model: ModelFacts,
    *,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    scale: float = 1.0,
    max_training_rows: int = DEFAULT_MAX_TRAINING_ROWS,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    multi_table: bool = True,
    progress: Progress | None = None,
) -> MultiSynthesisResult:
    """Synthesise linked de-identified tables (described, with the relations among them, by
    ``model``) so that joins on pseudonymous keys work on the synthetic tables too. SDV's
    ``HMASynthesizer`` models the relationships when SDV accepts the schema; otherwise (or
    with ``multi_table=False``) each table is synthesised alone and its keys re-linked (see
    the module docstring); the result's ``mode`` and ``notes`` say which happened and why."""
    step = Steps(progress)
    specs: dict[str, TableSpec] = {}
    dropped: dict[str, dict[str, str]] = {}
    data: dict[str, pd.DataFrame] = {}
    for name, frame in frames.items():
        spec, dropped[name] = table_spec(frame, model.table(name))
        specs[name] = spec
        data[name] = training_frame(frame, spec)
    all_links, notes = links_between(model.relations, specs)
    links = all_links
    full = tuple(
        Link(r.ref_table, r.ref_column, r.table, r.column)
        for r in model.relations
        if r.table in specs
        and r.ref_table in specs
        and r.column in {c.name for c in specs[r.table].columns}
        and specs[r.ref_table].primary_key == r.ref_column
    )
    derived = derived_keys(links, full)
    for shortcut, via in derived:
        notes.append(
            f"{shortcut.child}.{shortcut.column} is taken from the linked "
            f"{via.parent} row ({via.parent}.{shortcut.column}), not modelled separately"
        )
    # Derived key columns are filled after sampling; the model does not see them.
    model_specs = {
        name: TableSpec(
            name,
            tuple(
                c
                for c in spec.columns
                if not any(s.child == name and s.column == c.name for s, _ in derived)
            ),
            spec.primary_key,
            spec.inequalities,
            spec.unique,
        )
        for name, spec in specs.items()
    }
    train, hold, split_notes = split_linked(
        data,
        model_specs,
        links,
        fraction=holdout_fraction,
        seed=seed,
        max_training_rows=max_training_rows,
    )
    notes += split_notes
    checked: dict[str, TableSpec] = {}
    for name, spec in model_specs.items():
        checked[name], more = check_inequalities(train[name], spec)
        notes += more
    model_specs = checked
    metadata = SynthMetadata(model_specs, links)
    order = order_tables(model_specs, links)
    step("prepare")

    refusal = sdv_refusal(metadata) if multi_table and links else "multi-table modelling off"
    synthetic: dict[str, pd.DataFrame] = {}
    timings: dict[str, dict[str, float]] = {name: {} for name in specs}
    engine_notes: list[str] = []
    if refusal is None:
        mode = "hma"
        engine = SDVBackend(method)
        t = time.perf_counter()
        fit_frames = {n: train[n][[c.name for c in model_specs[n].columns]] for n in order}
        engine.fit(fit_frames, metadata, seed=seed)
        fit_time = time.perf_counter() - t
        step("fit")
        t = time.perf_counter()
        synthetic = engine.sample(scale=scale, seed=seed)
        sample_time = time.perf_counter() - t
        engine_notes = engine.notes
        for name in specs:
            timings[name] = {"fit": fit_time, "sample": sample_time}
        step("sample")
    else:
        mode = "per_table"
        if links:
            notes.append(
                f"SDV's multi-table synthesizer refused this schema ({refusal}); each table was "
                "synthesised alone and its foreign keys drawn from the synthetic parent keys "
                "with the real number of children per parent: joins work, but correlations "
                "across tables are not kept"
            )
        engines: dict[str, Backend] = {}
        for name in order:
            t = time.perf_counter()
            engines[name] = get_backend(method)
            single = SynthMetadata({name: model_specs[name]})
            fit_cols = [c.name for c in model_specs[name].columns]
            engines[name].fit({name: train[name][fit_cols]}, single, seed=seed)
            timings[name]["fit"] = time.perf_counter() - t
        step("fit")
        t = time.perf_counter()
        relink(synthetic, train, model_specs, links, order, engines, seed, scale)
        for name in order:
            timings[name]["sample"] = time.perf_counter() - t
        step("sample")
    for shortcut, via in derived:
        parent = synthetic[via.parent].set_index(via.key)[shortcut.column]
        child = synthetic[shortcut.child]
        child[shortcut.column] = child[via.column].map(parent).where(child[via.column].notna())
    results: dict[str, SynthesisResult] = {}
    for name in order:
        spec = specs[name]
        cols = [c.name for c in spec.columns]
        keys = frozenset(link.column for link in full if link.child == name)
        out = finish(synthetic[name][cols], spec, data[name], seed, keys)
        out, repeated = distinct_keys(out, spec)
        table_notes = list(engine_notes)
        if repeated:
            table_notes.append(_repeated_note(repeated, spec))
        results[name] = SynthesisResult(
            table=name,
            method=method,
            backend=f"sdv:{method}" if mode == "per_table" else "sdv:hma",
            seed=seed,
            synthetic=out,
            training=train[name].reset_index(drop=True),
            holdout=hold[name].reset_index(drop=True),
            spec=spec,
            rows_in=len(frames[name]),
            dropped_columns=dropped[name],
            constraints=check_constraints(out, spec),
            notes=table_notes,
            timings=timings[name],
        )
    integrity = referential_integrity({n: r.synthetic for n, r in results.items()}, full)
    step("check")
    return MultiSynthesisResult(results, links, mode, notes, integrity)


def _repeated_note(repeated: int, spec: TableSpec) -> str:
    return (
        f"{repeated} sampled row(s) repeated the key ({', '.join(spec.unique)}) of an earlier "
        "row and were removed: the model cannot keep a key of several columns unique"
    )
