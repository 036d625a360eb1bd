"""Synthetic equivalents of de-identified CDM tables (SDV behind a small interface).

Synthesis runs on **de-identified** data only: pseudonyms, day offsets, age bands. A frame
that still holds a direct identifier, or a linkable-identifier column whose values are not
pseudonyms, is refused (:class:`SynthesisError`) so raw data can never be fitted by mistake.

* **Metadata** comes from the CDM and the frame's dtypes: linkable identifiers are ids
  (regenerated as ``S`` + 31 hex characters, which can never equal a real pseudonym of 32
  hex characters), categories, bands and short strings are categorical, numbers and day
  offsets numerical. Free text is not synthesised (its columns are dropped and listed).
* **Constraints** come from the CDM: ranges (each column stays within the training data's
  range, itself inside the CDM's, then checked against the CDM bounds), allowed values
  (only categories seen in training are sampled, then checked against the CDM's list) and
  the inequalities of :data:`INEQUALITIES` where the columns exist (``release_date`` ≥
  ``manufacturing_start``), enforced by SDV's constraint-augmented generation.
* **Training** uses a seeded subsample of at most ``max_training_rows`` rows; a seeded
  holdout (``holdout_fraction``) is never trained on, so the privacy report can compare.
* **Backends** implement :class:`Backend` and are registered by name in :data:`BACKENDS`;
  ``gaussian_copula`` (default), ``ctgan`` and ``tvae`` are SDV's. SDV is under the Business
  Source License 1.1 (see the README); a deployment may register another backend.

Multi-table synthesis (:func:`synthesize_tables`) keeps the CDM's relationships with SDV's
``HMASynthesizer`` when SDV accepts the schema (at most 5 tables, depth at most 2, no
composite keys); otherwise each table is synthesised alone and its foreign keys are drawn
from the synthetic parent keys with the real number of children per parent, so joins
still work, and the result's ``notes`` say that cross-table correlations are not kept.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from anonymisation.pseudonyms import is_pseudonym
from contracts.cdm import ColumnType, CommonDataModel, IdentifierClass, Table

Progress = Callable[[int, str], None]

DEFAULT_METHOD = "gaussian_copula"
DEFAULT_MAX_TRAINING_ROWS = 200_000
DEFAULT_HOLDOUT_FRACTION = 0.2
MAX_HOLDOUT_ROWS = 50_000
# Synthetic ids: "S" + 31 hex characters. A real pseudonym is 32 lowercase hex characters,
# so a synthetic id can never equal one, and a reader can tell them apart at a glance.
SYNTHETIC_ID_REGEX = "S[0-9a-f]{31}"
# Ordered column chains (each value ≥ the previous one) that hold for CDM tables; a chain
# is applied to the columns of it that a frame has (two or more).
INEQUALITIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "batch": (("manufacturing_start", "release_date", "expiration_date"),),
    "custody_event": (("temp_min", "temp_max"),),
}
# The hierarchy the issue asks to keep when SDV's multi-table synthesizer allows it.
HIERARCHY = ("episode", "collection", "batch", "release_test")
STEPS = 4  # prepare, fit, sample, check: progress(done, label) is called after each

_SDV_LOGGERS = (
    "SingleTableSynthesizer",
    "MultiTableSynthesizer",
    "Metadata",
    "SingleTableMetadata",
)


class SynthesisError(ValueError):
    """The input cannot be synthesised as asked (raw data, unknown method, empty table)."""


# Neutral metadata: what a backend needs to know, with no SDV types ------------------------


@dataclass(frozen=True)
class ColumnSpec:
    """A column as a synthesizer sees it: ``kind`` is id, numerical, categorical or boolean."""

    name: str
    kind: str
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[ColumnSpec, ...]
    primary_key: str | None = None
    inequalities: tuple[tuple[str, ...], ...] = ()

    def column(self, name: str) -> ColumnSpec:
        return next(c for c in self.columns if c.name == name)

    @property
    def id_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns if c.kind == "id")


@dataclass(frozen=True)
class Link:
    """``child.column`` refers to ``parent.key``."""

    parent: str
    key: str
    child: str
    column: str


@dataclass(frozen=True)
class SynthMetadata:
    tables: Mapping[str, TableSpec]
    links: tuple[Link, ...] = ()


class Backend(Protocol):
    """A synthesizer: fitted on de-identified frames, sampled with a seed."""

    name: str

    def fit(
        self, frames: Mapping[str, pd.DataFrame], metadata: SynthMetadata, *, seed: int
    ) -> None:
        """Learn from ``frames`` (table name -> frame) described by ``metadata``."""

    def sample(
        self, *, num_rows: int | None = None, scale: float | None = None, seed: int
    ) -> dict[str, pd.DataFrame]:
        """``num_rows`` rows of a single table, or every table at ``scale`` × its size."""


BACKENDS: dict[str, Callable[..., Backend]] = {}


def register_backend(name: str, factory: Callable[..., Backend]) -> None:
    """Make ``factory(**options)`` available as ``method=name``."""
    BACKENDS[name] = factory


def get_backend(method: str, **options: Any) -> Backend:
    try:
        factory = BACKENDS[method]
    except KeyError:
        raise SynthesisError(
            f"unknown synthesis method {method!r}; choose one of {', '.join(sorted(BACKENDS))}"
        ) from None
    return factory(**options)


# The SDV backend ----------------------------------------------------------------------------


def _quiet_sdv() -> None:
    """SDV 2.x sends nothing over the network; its only usage record is an opt-in local CSV
    log (``log_registry`` in ``sdv_logger_config.yml``, off by default). Detach any handler
    so a user-level config cannot turn it on for the hub, and keep its INFO dicts quiet."""
    for name in _SDV_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed every global generator the SDV stack draws from (numpy, random, and torch when a
    neural backend has loaded it), restoring numpy's and random's state afterwards."""
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed % 2**32)
    random.seed(seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def sdv_metadata_dict(metadata: SynthMetadata) -> dict[str, Any]:
    """The neutral metadata as SDV's ``Metadata.load_from_dict`` input."""
    tables: dict[str, Any] = {}
    for name, spec in metadata.tables.items():
        columns: dict[str, Any] = {}
        for c in spec.columns:
            if c.kind == "id":
                columns[c.name] = {"sdtype": "id", "regex_format": SYNTHETIC_ID_REGEX}
            else:
                columns[c.name] = {"sdtype": c.kind}
        table: dict[str, Any] = {"columns": columns}
        if spec.primary_key:
            table["primary_key"] = spec.primary_key
        tables[name] = table
    relationships = [
        {
            "parent_table_name": link.parent,
            "parent_primary_key": link.key,
            "child_table_name": link.child,
            "child_foreign_key": link.column,
        }
        for link in metadata.links
    ]
    return {"tables": tables, "relationships": relationships}


def sdv_refusal(metadata: SynthMetadata) -> str | None:
    """Why SDV's ``HMASynthesizer`` would refuse this schema, or None if it accepts it.

    Asks SDV itself (its schema check runs when the synthesizer is created)."""
    _quiet_sdv()
    from sdv.metadata import Metadata
    from sdv.multi_table import HMASynthesizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            HMASynthesizer(Metadata.load_from_dict(sdv_metadata_dict(metadata)), verbose=False)
    except Exception as err:  # noqa: BLE001 - SDV raises several error types for a schema
        return " ".join(str(err).split("\n\n")[0].split())
    return None


class SDVBackend:
    """SDV's single-table synthesizers, or ``HMASynthesizer`` for linked tables."""

    _CLASSES = {
        "gaussian_copula": "GaussianCopulaSynthesizer",
        "ctgan": "CTGANSynthesizer",
        "tvae": "TVAESynthesizer",
    }

    def __init__(self, method: str = DEFAULT_METHOD, **parameters: Any) -> None:
        if method not in self._CLASSES:
            raise SynthesisError(f"SDV has no method {method!r}")
        self.name = f"sdv:{method}"
        self.method = method
        self.parameters = parameters
        self.notes: list[str] = []
        self._synth: Any = None
        self._single: str | None = None

    def fit(
        self, frames: Mapping[str, pd.DataFrame], metadata: SynthMetadata, *, seed: int
    ) -> None:
        _quiet_sdv()
        from sdv.cag import Inequality, Range
        from sdv.metadata import Metadata

        sdv_md = Metadata.load_from_dict(sdv_metadata_dict(metadata))
        constraints = []
        for name, spec in metadata.tables.items():
            for chain in spec.inequalities:
                table_name = name if len(metadata.tables) > 1 else None
                if len(chain) == 3:
                    constraints.append(
                        Range(*chain, strict_boundaries=False, table_name=table_name)
                    )
                else:
                    for low, high in zip(chain, chain[1:], strict=False):
                        constraints.append(Inequality(low, high, table_name=table_name))
        if len(metadata.tables) == 1:
            import sdv.single_table as single

            self._single = next(iter(metadata.tables))
            cls = getattr(single, self._CLASSES[self.method])
            params = dict(self.parameters)
            if self.method != "gaussian_copula":
                params.setdefault("enable_gpu", False)  # CPU only, and reproducible
            self._synth = cls(sdv_md, enforce_min_max_values=True, **params)
        else:
            from sdv.multi_table import HMASynthesizer

            if self.method != "gaussian_copula":
                self.notes.append(
                    f"HMASynthesizer models every table with GaussianCopula; {self.method} "
                    "applies to single tables only"
                )
            self._synth = HMASynthesizer(sdv_md, verbose=False)
        if constraints:
            self._synth.add_constraints(constraints)
        with seeded(seed), warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="sdv")
            warnings.filterwarnings("ignore", module="rdt")
            warnings.filterwarnings("ignore", module="copulas")
            self._synth.fit(dict(frames))

    def sample(
        self, *, num_rows: int | None = None, scale: float | None = None, seed: int
    ) -> dict[str, pd.DataFrame]:
        if self._synth is None:
            raise SynthesisError("fit the synthesizer before sampling")
        self._synth.reset_sampling()
        # SDV draws a tqdm bar on stderr when a table has constraints (tqdm reads
        # TQDM_DISABLE only at import); progress is reported through ``progress()``, and a
        # bar in a worker's or `demo seed`'s output is noise. Logging keeps its own stream.
        with (
            seeded(seed),
            warnings.catch_warnings(),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            if self._single is not None:
                self._synth._set_random_state(seed)  # SDV's own hook; else a fixed seed
                rows = num_rows if num_rows is not None else 0
                return dict(self._synth.sample(rows))
            self._synth._numpy_seed = seed  # HMA draws from numpy under this seed
            return dict(self._synth.sample_scale(scale=1.0 if scale is None else scale))


for _method in SDVBackend._CLASSES:
    register_backend(_method, lambda method=_method, **options: SDVBackend(method, **options))


# Preparing a de-identified frame -------------------------------------------------------------


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(
        values.dtype
    )


def _is_bool(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values.dtype):
        return True
    present = values.dropna()
    return len(present) > 0 and present.map(type).isin([bool, np.bool_]).all()


def table_spec(frame: pd.DataFrame, table: Table) -> tuple[TableSpec, dict[str, str]]:
    """The synthesizer's view of a de-identified ``frame`` of CDM ``table`` and the columns
    left out, with why. Raises :class:`SynthesisError` for raw data."""
    columns: list[ColumnSpec] = []
    dropped: dict[str, str] = {}
    known = set(table.column_names)
    for name in frame.columns:
        values = frame[name]
        if name not in known:
            dropped[name] = "not a column of the CDM table"
            continue
        cdm = table.column(name)
        if cdm.identifier is IdentifierClass.DIRECT:
            raise SynthesisError(
                f"column `{name}` of `{table.name}` is a direct identifier: synthesis runs on "
                "de-identified data only; de-identify the version first"
            )
        if cdm.identifier is IdentifierClass.FREE_TEXT:
            dropped[name] = "free text is not synthesised"
            continue
        if cdm.identifier is IdentifierClass.LINKABLE:
            raw = [v for v in values.dropna().unique()[:1000] if not is_pseudonym(v)]
            if raw:
                raise SynthesisError(
                    f"column `{name}` of `{table.name}` holds values that are not pseudonyms "
                    f"(e.g. a {len(str(raw[0]))}-character value): synthesis runs on "
                    "de-identified data only"
                )
            columns.append(ColumnSpec(name, "id"))
            continue
        if values.isna().all():
            dropped[name] = "no values"
            continue
        if cdm.type is ColumnType.BOOLEAN or _is_bool(values):
            columns.append(ColumnSpec(name, "boolean"))
        elif _is_numeric(values):
            integer = pd.api.types.is_integer_dtype(values.dtype) or cdm.type in (
                ColumnType.INTEGER,
                ColumnType.DATE,
                ColumnType.DATETIME,
            )
            columns.append(
                ColumnSpec(name, "numerical", integer, minimum=cdm.minimum, maximum=cdm.maximum)
            )
        else:
            # Categories, age bands, dates coarsened to a month, sites: categorical.
            columns.append(ColumnSpec(name, "categorical", allowed=cdm.allowed))
    present = {c.name for c in columns}
    pk = table.primary_key[0] if len(table.primary_key) == 1 else None
    if pk is not None and (pk not in present or frame[pk].isna().any()):
        pk = None
    chains = []
    for chain in INEQUALITIES.get(table.name, ()):
        kept = tuple(
            c
            for c in chain
            if c in present and next(s for s in columns if s.name == c).kind == "numerical"
        )
        if len(kept) >= 2:
            chains.append(kept)
    return TableSpec(table.name, tuple(columns), pk, tuple(chains)), dropped


def _training_frame(frame: pd.DataFrame, spec: TableSpec) -> pd.DataFrame:
    """Columns in spec order with dtypes SDV handles: nullable ints as floats, bools as
    bool (or object when null), categoricals as object."""
    out: dict[str, pd.Series] = {}
    for c in spec.columns:
        values = frame[c.name]
        if c.kind == "numerical":
            out[c.name] = pd.to_numeric(values, errors="coerce").astype("float64")
        elif c.kind == "boolean":
            out[c.name] = values.astype(object).where(values.notna(), None)
            if not values.isna().any():
                out[c.name] = values.astype(bool)
        else:
            out[c.name] = values.astype(object).where(values.notna(), None)
    return pd.DataFrame(out, index=frame.index)


def _check_inequalities(frame: pd.DataFrame, spec: TableSpec) -> tuple[TableSpec, list[str]]:
    """Keep only the chains the training data meets (SDV refuses to fit otherwise)."""
    kept, notes = [], []
    for chain in spec.inequalities:
        bad = 0
        for low, high in zip(chain, chain[1:], strict=False):
            bad += int((frame[high] < frame[low]).sum())
        if bad:
            notes.append(
                f"inequality {' ≤ '.join(chain)} not applied: {bad} training row(s) break it"
            )
        else:
            kept.append(chain)
    return TableSpec(spec.name, spec.columns, spec.primary_key, tuple(kept)), notes


def _finish(
    sample: pd.DataFrame,
    spec: TableSpec,
    real: pd.DataFrame,
    seed: int,
    keys: frozenset[str] = frozenset(),
) -> pd.DataFrame:
    """Back to the de-identified frame's shape: dtypes, integer rounding, id nulls at the
    real rate (SDV fills every id; ``keys`` are foreign keys already set by linking)."""
    rng = np.random.default_rng(seed)
    out = sample.copy()
    for c in spec.columns:
        if c.kind == "numerical" and c.integer:
            out[c.name] = pd.array(np.round(out[c.name].to_numpy(dtype="float64")), dtype="Int64")
        elif c.kind == "id" and c.name != spec.primary_key and c.name not in keys:
            rate = float(real[c.name].isna().mean())
            if rate > 0:
                out[c.name] = out[c.name].where(rng.random(len(out)) >= rate, None)
    return out.reset_index(drop=True)


def check_constraints(frame: pd.DataFrame, spec: TableSpec) -> list[dict[str, Any]]:
    """Every constraint of ``spec`` with the number of rows of ``frame`` that break it."""
    out: list[dict[str, Any]] = []
    for c in spec.columns:
        if c.kind == "numerical" and (c.minimum is not None or c.maximum is not None):
            values = pd.to_numeric(frame[c.name], errors="coerce")
            bad = 0
            if c.minimum is not None:
                bad += int((values < c.minimum).sum())
            if c.maximum is not None:
                bad += int((values > c.maximum).sum())
            out.append(
                {
                    "kind": "range",
                    "columns": [c.name],
                    "min": c.minimum,
                    "max": c.maximum,
                    "violations": bad,
                }
            )
        if c.kind == "categorical" and c.allowed:
            present = frame[c.name].dropna()
            bad = int((~present.isin(c.allowed)).sum())
            out.append({"kind": "allowed", "columns": [c.name], "violations": bad})
    for chain in spec.inequalities:
        bad = 0
        for low, high in zip(chain, chain[1:], strict=False):
            lo = pd.to_numeric(frame[low], errors="coerce")
            hi = pd.to_numeric(frame[high], errors="coerce")
            bad += int((hi < lo).sum())
        out.append({"kind": "inequality", "columns": list(chain), "violations": bad})
    return out


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
    table: Table,
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
    """Synthesise a de-identified ``frame`` of CDM ``table``: ``num_rows`` rows (default:
    as many as the input). Same input and seed, same output. ``backend`` overrides
    ``method`` with an already built :class:`Backend`; ``backend_options`` go to the
    method's factory (for SDV, to the synthesizer: ``{"epochs": 50}`` for CTGAN or TVAE).
    ``progress(done, label)`` is called after each of :data:`STEPS` steps."""
    if len(frame) < 10:
        raise SynthesisError(f"`{table.name}` has {len(frame)} rows; synthesis needs at least 10")
    done = 0
    timings: dict[str, float] = {}

    def step(label: str, started: float) -> None:
        nonlocal done
        timings[label] = time.perf_counter() - started
        done += 1
        if progress is not None:
            progress(done, label)

    t = time.perf_counter()
    spec, dropped = table_spec(frame, table)
    data = _training_frame(frame, spec)
    training, holdout = split_holdout(
        data, fraction=holdout_fraction, seed=seed, max_training_rows=max_training_rows
    )
    spec, notes = _check_inequalities(training, spec)
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
    synthetic = _finish(sample[[c.name for c in spec.columns]], spec, training, seed)
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
        timings=timings,
    )


# Several linked tables ----------------------------------------------------------------------


def links_between(
    cdm: CommonDataModel, specs: Mapping[str, TableSpec]
) -> tuple[tuple[Link, ...], list[str]]:
    """The CDM relationships among ``specs`` (both key columns present, parent keyed), and
    notes on those left out. A child that refers to a parent and to that parent's own parent
    (``batch.coi_id`` beside ``batch.din`` → ``collection.coi_id``) keeps only the deeper
    link; its other key is copied from the parent row."""
    found: list[Link] = []
    notes: list[str] = []
    for rel in cdm.relationships:
        if rel.table not in specs or rel.ref_table not in specs:
            continue
        child, parent = specs[rel.table], specs[rel.ref_table]
        if rel.column not in {c.name for c in child.columns}:
            continue
        if parent.primary_key != rel.ref_column:
            notes.append(
                f"{rel.table}.{rel.column} -> {rel.ref_table}.{rel.ref_column} not kept: the "
                f"parent has no single-column key in this data"
            )
            continue
        found.append(Link(rel.ref_table, rel.ref_column, rel.table, rel.column))
    kept = []
    for link in found:
        shortcut = any(
            other.child == link.child
            and other is not link
            and any(
                up.child == other.parent and up.parent == link.parent and up.column == link.column
                for up in found
            )
            for other in found
        )
        if shortcut:
            continue
        kept.append(link)
    return tuple(kept), notes


def _derived_keys(links: Sequence[Link], all_links: Sequence[Link]) -> list[tuple[Link, Link]]:
    """(dropped shortcut link, the kept link whose parent row carries its value)."""
    out = []
    for link in all_links:
        if link in links:
            continue
        for kept in links:
            if kept.child == link.child:
                out.append((link, kept))
                break
    return out


def _order(specs: Mapping[str, TableSpec], links: Sequence[Link]) -> list[str]:
    """Parents before children."""
    order: list[str] = []
    pending = list(specs)
    while pending:
        for name in pending:
            parents = {link.parent for link in links if link.child == name}
            if parents <= set(order):
                order.append(name)
                pending.remove(name)
                break
        else:
            raise SynthesisError("the relationships among these tables form a cycle")
    return order


def _split_linked(
    frames: Mapping[str, pd.DataFrame],
    specs: Mapping[str, TableSpec],
    links: Sequence[Link],
    *,
    fraction: float,
    seed: int,
    max_training_rows: int,
) -> tuple[dict[str, pd.DataFrame], dict[str, pd.DataFrame], list[str]]:
    """Holdout and subsample by root entity, so a held-out episode's children are held out
    too and training keeps whole families."""
    order = _order(specs, links)
    rng = np.random.default_rng(seed)
    train: dict[str, pd.DataFrame] = {}
    hold: dict[str, pd.DataFrame] = {}
    notes: list[str] = []
    largest = max(len(f) for f in frames.values())
    keep_fraction = min(1.0, max_training_rows / max(1, largest * (1 - fraction)))
    if keep_fraction < 1:
        notes.append(
            f"trained on a seeded {keep_fraction:.1%} of the root entities (largest table "
            f"{largest:,} rows, limit {max_training_rows:,})"
        )
    for name in order:
        frame = frames[name]
        parent_links = [link for link in links if link.child == name]
        if not parent_links:
            u = rng.random(len(frame))
            is_hold = u < fraction
            is_train = (~is_hold) & (rng.random(len(frame)) < keep_fraction)
        else:
            is_hold = np.zeros(len(frame), dtype=bool)
            is_train = np.ones(len(frame), dtype=bool)
            for link in parent_links:
                values = frame[link.column]
                in_hold = values.isin(hold[link.parent][link.key]).to_numpy()
                in_train = values.isin(train[link.parent][link.key]).to_numpy()
                is_hold |= in_hold
                is_train &= in_train | values.isna().to_numpy()
            is_train &= ~is_hold
        train[name] = frame[is_train].reset_index(drop=True)
        hold[name] = frame[is_hold].reset_index(drop=True)
    return train, hold, notes


def _relink(
    synthetic: dict[str, pd.DataFrame],
    training: Mapping[str, pd.DataFrame],
    specs: Mapping[str, TableSpec],
    links: Sequence[Link],
    order: Sequence[str],
    engines: Mapping[str, Backend],
    seed: int,
    scale: float,
) -> None:
    """Per-table fallback: sample each child with as many rows as the synthetic parents'
    drawn child counts (the real distribution of children per parent), and point its
    foreign key at those parents."""
    rng = np.random.default_rng(seed + 1)
    for name in order:
        parent_links = [link for link in links if link.child == name]
        if not parent_links:
            rows = max(1, int(round(len(training[name]) * scale)))
            synthetic[name] = engines[name].sample(num_rows=rows, seed=seed)[name]
            continue
        # The first link decides the row count; further links draw keys at random.
        main = parent_links[0]
        real_counts = (
            training[name][main.column]
            .value_counts()
            .reindex(training[main.parent][main.key], fill_value=0)
            .to_numpy()
        )
        parents = synthetic[main.parent][main.key].dropna().to_numpy()
        counts: Any = rng.choice(real_counts, size=len(parents)) if len(real_counts) else []
        null_rate = float(training[name][main.column].isna().mean())
        n_linked = int(np.sum(counts))
        n_null = int(round(n_linked * null_rate / max(1e-9, 1 - null_rate)))
        rows = max(1, n_linked + n_null)
        sample = engines[name].sample(num_rows=rows, seed=seed)[name]
        keys = np.concatenate([np.repeat(parents, counts), np.full(rows - n_linked, None)])
        sample[main.column] = keys[:rows]
        for link in parent_links[1:]:
            pool = synthetic[link.parent][link.key].dropna().to_numpy()
            rate = float(training[name][link.column].isna().mean())
            drawn = rng.choice(pool, size=len(sample)) if len(pool) else np.full(len(sample), None)
            missing = rng.random(len(sample)) < rate
            sample[link.column] = np.where(missing, np.full(len(sample), None), drawn)
        synthetic[name] = sample


def synthesize_tables(
    frames: Mapping[str, pd.DataFrame],
    cdm: CommonDataModel,
    *,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    scale: float = 1.0,
    max_training_rows: int = DEFAULT_MAX_TRAINING_ROWS,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    multi_table: bool = True,
    progress: Progress | None = None,
) -> MultiSynthesisResult:
    """Synthesise linked de-identified tables (e.g. :data:`HIERARCHY`) so that joins on
    pseudonymous keys work on the synthetic tables too. SDV's ``HMASynthesizer`` models the
    relationships when SDV accepts the schema; otherwise (or with ``multi_table=False``)
    each table is synthesised alone and its keys re-linked (see the module docstring); the
    result's ``mode`` and ``notes`` say which happened and why."""
    done = 0

    def step(label: str) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, label)

    specs: dict[str, TableSpec] = {}
    dropped: dict[str, dict[str, str]] = {}
    data: dict[str, pd.DataFrame] = {}
    for name, frame in frames.items():
        spec, dropped[name] = table_spec(frame, cdm.table(name))
        specs[name] = spec
        data[name] = _training_frame(frame, spec)
    all_links, notes = links_between(cdm, specs)
    links = all_links
    full = tuple(
        Link(r.ref_table, r.ref_column, r.table, r.column)
        for r in cdm.relationships
        if r.table in specs
        and r.ref_table in specs
        and r.column in {c.name for c in specs[r.table].columns}
        and specs[r.ref_table].primary_key == r.ref_column
    )
    derived = _derived_keys(links, full)
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
        )
        for name, spec in specs.items()
    }
    train, hold, split_notes = _split_linked(
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
        checked[name], more = _check_inequalities(train[name], spec)
        notes += more
    model_specs = checked
    metadata = SynthMetadata(model_specs, links)
    order = _order(model_specs, links)
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
        _relink(synthetic, train, model_specs, links, order, engines, seed, scale)
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
        out = _finish(synthetic[name][cols], spec, data[name], seed, keys)
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
            notes=list(engine_notes),
            timings=timings[name],
        )
    integrity = referential_integrity({n: r.synthetic for n, r in results.items()}, full)
    step("check")
    return MultiSynthesisResult(results, links, mode, notes, integrity)


def referential_integrity(
    frames: Mapping[str, pd.DataFrame], links: Sequence[Link]
) -> list[dict[str, Any]]:
    """Per link, the child rows whose key is set but matches no parent row (should be 0)."""
    out = []
    for link in links:
        child = frames[link.child][link.column].dropna()
        orphans = int((~child.isin(frames[link.parent][link.key])).sum())
        out.append(
            {
                "link": f"{link.child}.{link.column} -> {link.parent}.{link.key}",
                "child_rows": int(len(child)),
                "orphans": orphans,
            }
        )
    return out
