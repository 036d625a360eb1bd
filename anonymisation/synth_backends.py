"""Synthesizer backends: the :class:`Backend` interface, the registry, and SDV's backend.

Backends implement :class:`Backend` and are registered by name in :data:`BACKENDS`;
``gaussian_copula`` (default), ``ctgan`` and ``tvae`` are SDV's. SDV is under the Business
Source License 1.1 (see the README); a deployment may register another backend. Linkable
identifiers are regenerated as ``S`` + 31 hex characters (:data:`SYNTHETIC_ID_REGEX`), which
can never equal a real pseudonym of 32 hex characters.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import pandas as pd

from anonymisation.synth_specs import SynthesisError, SynthMetadata

DEFAULT_METHOD = "gaussian_copula"
# Synthetic ids: "S" + 31 hex characters. A real pseudonym is 32 lowercase hex characters,
# so a synthetic id can never equal one, and a reader can tell them apart at a glance.
SYNTHETIC_ID_REGEX = "S[0-9a-f]{31}"

_SDV_LOGGERS = (
    "SingleTableSynthesizer",
    "MultiTableSynthesizer",
    "Metadata",
    "SingleTableMetadata",
)


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
