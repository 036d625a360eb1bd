"""Synthetic versions in the hub: ask for one, make it in a job, gate it, serve its rows.

* A synthetic version is made from a **released** dataset version (``synth.version``) or
  from an agreement's pooled table (``synth.agreement_table``: every version the agreement
  pools, those shared as synthetic only included). The job reads the de-identified pool
  Parquet only; the library refuses anything that still looks raw.
* The report (:func:`anonymisation.synth_report.build_report`) is judged against the
  steward's gates (``synth_gate_*`` settings). A version that passes is **published**: its
  rows are written under ``synthetic/`` and the gateway may serve them. One that fails is
  ``failed_gates``: its report and plots are kept (they say which gate failed), its rows
  never leave the job.
* Every step is in the audit ledger (``synth.request``, ``synth.published``,
  ``synth.failed_gates``, ``synth.failed``, ``dataset.synthetic_only``).
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.orm import Session

from anonymisation.synth_report import Thresholds, build_report
from anonymisation.synthesis import BACKENDS, SynthesisError, synthesize_table
from hub.agreements import services as agreements
from hub.agreements.models import AgreementRecord
from hub.audit.services import record
from hub.db import Database, utcnow
from hub.errors import BadRequest, Conflict, NotFound
from hub.ingest.models import DatasetVersion, VersionState
from hub.ingest.services import cdm_table
from hub.jobs import services as jobs
from hub.jobs.models import Job, JobState
from hub.jobs.services import JobContext, enqueue, task
from hub.settings import Settings
from hub.storage import Storage, get_storage
from hub.synth.models import SyntheticVersion, SynthState

METHODS = ("gaussian_copula", "ctgan", "tvae")
VERSION_JOB = "synth.version"
AGREEMENT_JOB = "synth.agreement_table"
DEFAULT_PAGE = 10_000
MAX_PAGE = 100_000


def thresholds(settings: Settings) -> Thresholds:
    """The steward's publication gates."""
    return Thresholds(
        quality=float(settings.synth_gate_quality),
        dcr_overfitting=float(settings.synth_gate_dcr_overfitting),
        copied_rows=int(settings.synth_gate_copied_rows),
    )


def get(session: Session, synthetic_id: int) -> SyntheticVersion:
    found = session.get(SyntheticVersion, synthetic_id)
    if found is None:
        raise NotFound(f"no synthetic version {synthetic_id}.")
    return found


def _method(settings: Settings, method: str | None) -> str:
    chosen = method or str(settings.synth_method)
    if chosen not in BACKENDS:
        raise BadRequest(
            f"unknown synthesis method {chosen!r}; choose one of {', '.join(METHODS)}.",
            code="unknown_method",
        )
    return chosen


def _queue(
    session: Session,
    settings: Settings,
    synthetic: SyntheticVersion,
    kind: str,
    *,
    actor: str,
    max_attempts: int | None,
) -> SyntheticVersion:
    session.add(synthetic)
    session.flush()
    job = enqueue(session, kind, {"synthetic_id": synthetic.id}, actor=actor, settings=settings,
                  max_attempts=max_attempts)
    synthetic.job_id = job.id
    record(
        session,
        actor=actor,
        action="synth.request",
        target=f"synthetic:{synthetic.id}",
        detail={"source": synthetic.source, "table": synthetic.cdm_table,
                "method": synthetic.method, "seed": synthetic.seed, "job": job.id},
    )
    return synthetic


def request_for_version(
    session: Session,
    settings: Settings,
    version: DatasetVersion,
    *,
    actor: str,
    method: str | None = None,
    seed: int = 0,
    max_attempts: int | None = None,
) -> SyntheticVersion:
    """Queue the synthesis of a released version (from its pool object)."""
    if version.state != VersionState.RELEASED or not version.pool_key:
        raise Conflict(
            f"{version.cdm_table} version {version.version} is {version.state.replace('_', ' ')}"
            ": only a released version (de-identified, in the pool) can be synthesised."
        )
    synthetic = SyntheticVersion(
        dataset_version_id=version.id,
        cdm_table=version.cdm_table,
        method=_method(settings, method),
        seed=int(seed),
        created_by=actor,
    )
    return _queue(session, settings, synthetic, VERSION_JOB, actor=actor,
                  max_attempts=max_attempts)


def request_for_agreement(
    session: Session,
    settings: Settings,
    slug: str,
    table: str,
    *,
    actor: str,
    method: str | None = None,
    seed: int = 0,
    max_attempts: int | None = None,
) -> SyntheticVersion:
    """Queue the synthesis of an agreement's pooled ``table``."""
    stored = agreements.get(session, slug)
    covered = {c.table for c in agreements.contract_of(stored).tables}
    if table not in covered:
        raise BadRequest(
            f"agreement {slug!r} does not cover {table!r} (it covers "
            f"{', '.join(sorted(covered)) or 'no table'}).",
            code="table_not_covered",
        )
    synthetic = SyntheticVersion(
        agreement_slug=slug,
        cdm_table=table,
        method=_method(settings, method),
        seed=int(seed),
        created_by=actor,
    )
    return _queue(session, settings, synthetic, AGREEMENT_JOB, actor=actor,
                  max_attempts=max_attempts)


def share_synthetic_only(
    session: Session, settings: Settings, version: DatasetVersion, *, actor: str
) -> SyntheticVersion | None:
    """The contributor shares only a synthetic equivalent of ``version``: its real rows
    leave every agreement's views, and its synthesis is queued (now if released, else on
    release). Returns the queued synthetic version, if one was queued."""
    if version.state not in (VersionState.AWAITING_REVIEW, VersionState.RELEASED):
        raise Conflict(
            "only a version under review or released can be shared as synthetic only "
            f"(this one is {version.state.replace('_', ' ')})."
        )
    if version.synthetic_only:
        return None
    version.synthetic_only = True
    record(
        session,
        actor=actor,
        action="dataset.synthetic_only",
        target=f"dataset:{version.id}",
        detail={"table": version.cdm_table, "version": version.version},
    )
    if version.state == VersionState.RELEASED:
        return request_for_version(session, settings, version, actor=actor)
    return None


def for_version(session: Session, version_id: int) -> list[SyntheticVersion]:
    return list(
        session.scalars(
            select(SyntheticVersion)
            .where(SyntheticVersion.dataset_version_id == version_id)
            .order_by(SyntheticVersion.id.desc())
        )
    )


def recent(session: Session, limit: int = 200) -> list[SyntheticVersion]:
    return list(
        session.scalars(select(SyntheticVersion).order_by(SyntheticVersion.id.desc()).limit(limit))
    )


# What the gateway serves ---------------------------------------------------------------------


def _latest_published(session: Session, *where: Any) -> SyntheticVersion | None:
    found: SyntheticVersion | None = session.scalar(
        select(SyntheticVersion)
        .where(SyntheticVersion.state == SynthState.PUBLISHED, SyntheticVersion.data_key != "",
               *where)
        .order_by(SyntheticVersion.id.desc())
        .limit(1)
    )
    return found


def published_for_agreement(
    session: Session, stored: AgreementRecord, table: str
) -> list[SyntheticVersion]:
    """The synthetic versions a researcher of the agreement reads for ``table``: the newest
    published synthesis of the agreement's pooled table; failing that, the newest published
    synthesis of each version the agreement pools now (synthetic-only ones included)."""
    pooled = _latest_published(
        session, SyntheticVersion.agreement_slug == stored.slug,
        SyntheticVersion.cdm_table == table,
    )
    if pooled is not None:
        return [pooled]
    out = []
    for version in agreements.pool_versions(session, stored, table, include_synthetic_only=True):
        found = _latest_published(session, SyntheticVersion.dataset_version_id == version.id)
        if found is not None:
            out.append(found)
    return out


def read_rows(storage: Storage, synthetic: Sequence[SyntheticVersion]) -> pd.DataFrame:
    return _read_parquet(storage, [s.data_key for s in synthetic])


def page(frame: pd.DataFrame, *, limit: int, offset: int) -> dict[str, Any]:
    """``{"columns", "rows", "total", "offset", "limit", "next_offset"}`` (JSON-safe)."""
    part = frame.iloc[offset: offset + limit]
    body = json.loads(part.to_json(orient="split", index=False, date_format="iso"))
    end = offset + len(part)
    return {
        "columns": [str(c) for c in frame.columns],
        "rows": body["data"],
        "total": len(frame),
        "offset": offset,
        "limit": limit,
        "next_offset": end if end < len(frame) else None,
    }


def plot(storage: Storage, synthetic: SyntheticVersion, name: str) -> bytes:
    key = json.loads(synthetic.plot_keys or "{}").get(name)
    if not key:
        raise NotFound(f"synthetic version {synthetic.id} has no plot {name!r}.")
    with storage.open(key) as fh:
        data: bytes = fh.read()
    return data


def synthetic_dict(synthetic: SyntheticVersion, *, report: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": synthetic.id,
        "source": synthetic.source,
        "dataset_version_id": synthetic.dataset_version_id,
        "agreement": synthetic.agreement_slug or None,
        "table": synthetic.cdm_table,
        "method": synthetic.method,
        "seed": synthetic.seed,
        "state": synthetic.state,
        "rows": synthetic.rows,
        "error": synthetic.error or None,
        "job_id": synthetic.job_id,
        "created_at": synthetic.created_at.isoformat() if synthetic.created_at else None,
        "finished_at": synthetic.finished_at.isoformat() if synthetic.finished_at else None,
        "plots": sorted(json.loads(synthetic.plot_keys or "{}")),
    }
    if report:
        body["report"] = json.loads(synthetic.report or "{}")
    return body


def scores(synthetic: SyntheticVersion) -> dict[str, Any]:
    """The headline numbers of the report, for lists and the CLI."""
    report = json.loads(synthetic.report or "{}")
    privacy = report.get("privacy", {})
    gates = report.get("gates", {})
    return {
        "quality": (report.get("quality") or {}).get("score"),
        "dcr_overfitting_protection": privacy.get("dcr_overfitting_protection"),
        "copied_rows": privacy.get("copied_rows"),
        "pii_overlap": privacy.get("pii_overlap_total"),
        "gates_passed": gates.get("passed"),
        "failed_gates": gates.get("failed", []),
    }


# The jobs --------------------------------------------------------------------------------------


def _read_parquet(storage: Storage, keys: Sequence[str]) -> pd.DataFrame:
    frames = []
    for key in keys:
        with storage.open(key) as fh:
            frames.append(pq.read_table(pa.BufferReader(fh.read())).to_pandas())
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _put_parquet(storage: Storage, key: str, frame: pd.DataFrame) -> None:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf, compression="zstd")
    buf.seek(0)
    storage.put(key, buf)


def _finite(value: Any) -> Any:
    """The report with NaN and infinities as null, so it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _source_keys(session: Session, synthetic: SyntheticVersion) -> list[str]:
    """The pool objects (de-identified) the synthesis reads."""
    if synthetic.dataset_version_id is not None:
        version = session.get(DatasetVersion, synthetic.dataset_version_id)
        if version is None or version.state != VersionState.RELEASED or not version.pool_key:
            raise SynthesisError("the dataset version is no longer released")
        return [version.pool_key]
    stored = agreements.get(session, synthetic.agreement_slug)
    versions = agreements.pool_versions(
        session, stored, synthetic.cdm_table, include_synthetic_only=True
    )
    if not versions:
        raise SynthesisError(
            f"agreement {synthetic.agreement_slug!r} pools no released {synthetic.cdm_table} "
            "data now (not active, or nothing released)"
        )
    return [v.pool_key for v in versions]


def _prefix(synthetic: SyntheticVersion) -> str:
    if synthetic.dataset_version_id is not None:
        where = f"dataset={synthetic.dataset_version_id}"
    else:
        where = f"agreement={synthetic.agreement_slug}"
    return f"synthetic/{synthetic.cdm_table}/{where}/synthetic={synthetic.id}"


def _failed(database: Database, synthetic_id: int, message: str) -> None:
    with database.session() as s:
        synthetic = get(s, synthetic_id)
        synthetic.state = SynthState.FAILED
        synthetic.error = message[:4000]
        synthetic.finished_at = utcnow()
        record(s, actor="system", action="synth.failed", target=f"synthetic:{synthetic_id}",
               detail={"source": synthetic.source, "error": message[:500]})


@task(VERSION_JOB)
def version_job(ctx: JobContext) -> dict[str, Any]:
    """Synthesise a released dataset version."""
    return _run(ctx)


@task(AGREEMENT_JOB)
def agreement_table_job(ctx: JobContext) -> dict[str, Any]:
    """Synthesise an agreement's pooled table (the union of the versions it pools)."""
    return _run(ctx)


def _run(ctx: JobContext) -> dict[str, Any]:
    synthetic_id = int(ctx.payload["synthetic_id"])
    storage = get_storage(ctx.settings)
    with ctx.database.session() as s:
        synthetic = get(s, synthetic_id)
        synthetic.state = SynthState.RUNNING
        synthetic.error = ""
        table, method, seed = synthetic.cdm_table, synthetic.method, synthetic.seed
        prefix = _prefix(synthetic)
        try:
            keys = _source_keys(s, synthetic)
        except (SynthesisError, NotFound) as err:
            keys, problem = [], str(getattr(err, "message", err))
        else:
            problem = ""
    if problem:
        _failed(ctx.database, synthetic_id, problem)
        return {"state": SynthState.FAILED, "error": problem}
    try:
        ctx.progress(5, "reading the de-identified pool")
        frame = _read_parquet(storage, keys)
        ctx.progress(10, f"training {method} on {len(frame):,} rows")
        result = synthesize_table(
            frame,
            cdm_table(table),
            method=method,
            seed=seed,
            max_training_rows=int(ctx.settings.synth_max_training_rows),
            progress=lambda done, label: ctx.progress(10 + 15 * done, label),
        )
        ctx.progress(72, "scoring quality and privacy")
        with tempfile.TemporaryDirectory(prefix="cleanroom-synth-") as tmp:
            report = _finite(
                build_report(result, thresholds=thresholds(ctx.settings), plot_dir=Path(tmp))
            )
            ctx.progress(92, "storing the report")
            plot_keys: dict[str, str] = {}
            for item in report["plots"]:
                path = Path(tmp) / item["file"]
                if path.is_file():
                    key = f"{prefix}/plots/{item['file']}"
                    with path.open("rb") as fh:
                        storage.put(key, fh)
                    plot_keys[item["file"]] = key
    except SynthesisError as err:
        _failed(ctx.database, synthetic_id, str(err))
        return {"state": SynthState.FAILED, "error": str(err)}
    except jobs.LeaseLost:
        raise
    except Exception as err:
        _failed(ctx.database, synthetic_id, f"{type(err).__name__}: {err}")
        raise
    passed = bool(report["gates"]["passed"])
    data_key = ""
    if passed:
        data_key = f"{prefix}/part-0.parquet"
        _put_parquet(storage, data_key, result.synthetic)  # invisible until the row commits
    state = SynthState.PUBLISHED if passed else SynthState.FAILED_GATES
    with ctx.database.session() as s:
        synthetic = get(s, synthetic_id)
        synthetic.report = json.dumps(report)
        synthetic.plot_keys = json.dumps(plot_keys)
        synthetic.rows = len(result.synthetic)
        synthetic.data_key = data_key
        synthetic.state = state
        synthetic.finished_at = utcnow()
        headline = scores(synthetic)
        record(
            s,
            actor="system",
            action="synth.published" if passed else "synth.failed_gates",
            target=f"synthetic:{synthetic_id}",
            detail={
                "source": synthetic.source,
                "table": table,
                "method": method,
                "seed": seed,
                "rows_in": result.rows_in,
                "rows": len(result.synthetic),
                "quality": headline["quality"],
                "dcr_overfitting_protection": headline["dcr_overfitting_protection"],
                "copied_rows": headline["copied_rows"],
                "failed_gates": [g["gate"] for g in headline["failed_gates"]],
                "data_key": data_key or None,
            },
        )
    return {"state": state, "synthetic_id": synthetic_id, "rows": len(result.synthetic),
            "failed_gates": [g["gate"] for g in report["gates"]["failed"]]}


# Running one job in this process (the CLI) -------------------------------------------------


@dataclass
class _InlineContext(JobContext):
    on_progress: Callable[[int, str], None] | None = None

    def progress(self, percent: int, message: str = "") -> None:
        super().progress(percent, message)
        if self.on_progress is not None:
            self.on_progress(int(percent), message)


def run_inline(
    database: Database,
    settings: Settings,
    job_id: int,
    on_progress: Callable[[int, str], None] | None = None,
) -> str:
    """Claim job ``job_id`` for this process and run it now; returns its final state."""
    token = uuid.uuid4().hex
    with database.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.state != JobState.QUEUED:
            raise Conflict(f"job {job_id} is not waiting to run.")
        now = utcnow()
        job.state = JobState.RUNNING
        job.attempts += 1
        job.worker_id = "cli"
        job.lease_token = token
        job.heartbeat_at = now
        job.started_at = job.started_at or now
        ctx = _InlineContext(database, settings, job.id, job.kind,
                             json.loads(job.payload or "{}"), job.attempts, token,
                             on_progress=on_progress)
    return jobs.run(ctx)
