"""Synthetic versions in the hub: ask for one, make it in a job, gate it, serve its rows.

* A synthetic version is made from a **released** dataset version (``synth.version``),
  from an agreement's pooled table (``synth.agreement_table``: every version the agreement
  pools, those shared as synthetic only included), or, for an agreement's linked tables of
  the CDM hierarchy together (``synth.agreement_tables``), one version per table sharing a
  ``group_id``: their pseudonymous keys join, and they are published all together or not
  at all. The job reads the de-identified pool Parquet only; the library refuses anything
  that still looks raw.
* The report (:func:`anonymisation.synth_report.build_report`) is judged against the
  steward's gates (``synth_gate_*`` settings). A version that passes is **published**: its
  rows are written under ``synthetic/`` and the gateway may serve them. One that fails is
  ``failed_gates``: its report and plots are kept (they say which gate failed), its rows
  never leave the job.
* When a dataset version is withdrawn, every synthetic version trained on it (and every
  member of its group) stops being served and its objects are deleted
  (:func:`withdraw_made_from`).
* Every step is in the audit ledger (``synth.request``, ``synth.published``,
  ``synth.failed_gates``, ``synth.failed``, ``synth.group``, ``synth.withdrawn``,
  ``dataset.synthetic_only``).
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from anonymisation.synth_report import Thresholds, build_report
from anonymisation.synthesis import (
    BACKENDS,
    SynthesisError,
    SynthesisResult,
    synthesize_table,
    synthesize_tables,
)
from contracts.agreements import contributing_institutions
from contracts.cdm import load_cdm
from hub import events
from hub.agreements import services as agreements
from hub.agreements.models import AgreementRecord
from hub.audit.services import record
from hub.db import Database, utcnow
from hub.errors import BadRequest, Conflict, NotFound
from hub.ingest.models import DatasetVersion, VersionState
from hub.ingest.services import cdm_table
from hub.jobs import recheck as job_recheck
from hub.jobs import services as jobs
from hub.jobs.services import JobContext, enqueue, task
from hub.settings import Settings
from hub.storage import Storage, get_storage
from hub.storage.frames import put_frame, read_frames
from hub.synth.facts import HIERARCHY, model_facts, table_facts
from hub.synth.models import SyntheticVersion, SynthState

METHODS = ("gaussian_copula", "ctgan", "tvae")
VERSION_JOB = "synth.version"
AGREEMENT_JOB = "synth.agreement_table"
GROUP_JOB = "synth.agreement_tables"
DEFAULT_PAGE = 10_000
MAX_PAGE = 100_000


def thresholds(settings: Settings) -> Thresholds:
    """The steward's publication gates."""
    return Thresholds(
        quality=settings.synth_gate_quality,
        dcr_overfitting=settings.synth_gate_dcr_overfitting,
        copied_rows=settings.synth_gate_copied_rows,
    )


def get(session: Session, synthetic_id: int) -> SyntheticVersion:
    found = session.get(SyntheticVersion, synthetic_id)
    if found is None:
        raise NotFound(f"no synthetic version {synthetic_id}.")
    return found


def _method(settings: Settings, method: str | None) -> str:
    chosen = method or settings.synth_method
    if chosen not in BACKENDS:
        raise BadRequest(
            f"unknown synthesis method {chosen!r}; choose one of {', '.join(METHODS)}.",
            code="unknown_method",
        )
    return chosen


def _queue(
    session: Session,
    settings: Settings,
    members: Sequence[SyntheticVersion],
    kind: str,
    *,
    actor: str,
    max_attempts: int | None,
) -> list[SyntheticVersion]:
    """Add ``members`` and queue one job that makes them all (a group if ``kind`` is
    :data:`GROUP_JOB`: ``group_id`` is the first member's id)."""
    session.add_all(members)
    session.flush()
    payload: dict[str, Any] = {"synthetic_id": members[0].id}
    if kind == GROUP_JOB:
        for member in members:
            member.group_id = members[0].id
        payload = {"synthetic_ids": [m.id for m in members], "group_id": members[0].id}
    job = enqueue(session, kind, payload, actor=actor, settings=settings, max_attempts=max_attempts)
    for member in members:
        member.job_id = job.id
        record(
            session,
            actor=actor,
            action="synth.request",
            target=f"synthetic:{member.id}",
            detail={
                "source": member.source,
                "table": member.cdm_table,
                "method": member.method,
                "seed": member.seed,
                "job": job.id,
                "group": member.group_id,
            },
        )
    return list(members)


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
    return _queue(
        session, settings, [synthetic], VERSION_JOB, actor=actor, max_attempts=max_attempts
    )[0]


def _covered(session: Session, slug: str) -> set[str]:
    stored = agreements.get(session, slug)
    return {c.table for c in agreements.contract_of(stored).tables}


def _for_agreement(
    slug: str,
    tables: Sequence[str],
    settings: Settings,
    method: str | None,
    seed: int,
    actor: str,
) -> list[SyntheticVersion]:
    chosen = _method(settings, method)
    return [
        SyntheticVersion(
            agreement_slug=slug, cdm_table=table, method=chosen, seed=int(seed), created_by=actor
        )
        for table in tables
    ]


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
    covered = _covered(session, slug)
    if table not in covered:
        raise BadRequest(
            f"agreement {slug!r} does not cover {table!r} (it covers "
            f"{', '.join(sorted(covered)) or 'no table'}).",
            code="table_not_covered",
        )
    members = _for_agreement(slug, [table], settings, method, seed, actor)
    return _queue(
        session, settings, members, AGREEMENT_JOB, actor=actor, max_attempts=max_attempts
    )[0]


def linked_tables(covered: Iterable[str]) -> list[str]:
    """The tables of the CDM hierarchy (episode → collection → batch → release_test) among
    ``covered`` that a CDM relationship links to another of them, parents first."""
    chosen = [t for t in HIERARCHY if t in set(covered)]
    pairs = {(r.table, r.ref_table) for r in load_cdm().relationships}
    return [t for t in chosen if any((t, o) in pairs or (o, t) in pairs for o in chosen)]


def request_for_agreement_tables(
    session: Session,
    settings: Settings,
    slug: str,
    *,
    actor: str,
    method: str | None = None,
    seed: int = 0,
    max_attempts: int | None = None,
) -> list[SyntheticVersion]:
    """Queue the synthesis of the agreement's linked tables together (one group, one job):
    its covered tables of the CDM hierarchy, so joins on the synthetic keys work across
    them. Published all together or not at all."""
    covered = _covered(session, slug)
    tables = linked_tables(covered)
    if len(tables) < 2:
        raise BadRequest(
            f"agreement {slug!r} covers {len(tables)} linked table(s) of the hierarchy "
            f"{' → '.join(HIERARCHY)} (it covers {', '.join(sorted(covered)) or 'no table'}): "
            "synthesise its tables one at a time.",
            code="no_linked_tables",
        )
    members = _for_agreement(slug, tables, settings, method, seed, actor)
    return _queue(session, settings, members, GROUP_JOB, actor=actor, max_attempts=max_attempts)


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


def group(session: Session, group_id: int) -> list[SyntheticVersion]:
    """The members of a synthesis group, parents first (in request order)."""
    return list(
        session.scalars(
            select(SyntheticVersion)
            .where(SyntheticVersion.group_id == group_id)
            .order_by(SyntheticVersion.id)
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
        .where(
            SyntheticVersion.state == SynthState.PUBLISHED, SyntheticVersion.data_key != "", *where
        )
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
        session,
        SyntheticVersion.agreement_slug == stored.slug,
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
    return read_frames(storage, [s.data_key for s in synthetic])


def page(frame: pd.DataFrame, *, limit: int, offset: int) -> dict[str, Any]:
    """``{"columns", "rows", "total", "offset", "limit", "next_offset"}`` (JSON-safe)."""
    part = frame.iloc[offset : offset + limit]
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
        "group_id": synthetic.group_id,
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


def _finite(value: Any) -> Any:
    """The report with NaN and infinities as null, so it is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _source_versions(session: Session, synthetic: SyntheticVersion) -> list[DatasetVersion]:
    """The released dataset versions whose pool objects (de-identified) the synthesis
    reads."""
    if synthetic.dataset_version_id is not None:
        version = session.get(DatasetVersion, synthetic.dataset_version_id)
        if version is None or version.state != VersionState.RELEASED or not version.pool_key:
            raise SynthesisError("the dataset version is no longer released")
        return [version]
    stored = agreements.get(session, synthetic.agreement_slug)
    versions = agreements.pool_versions(
        session, stored, synthetic.cdm_table, include_synthetic_only=True
    )
    if not versions:
        raise SynthesisError(
            f"agreement {synthetic.agreement_slug!r} pools no released {synthetic.cdm_table} "
            "data now (not active, or nothing released)"
        )
    return versions


def _prefix(synthetic: SyntheticVersion) -> str:
    if synthetic.dataset_version_id is not None:
        where = f"dataset={synthetic.dataset_version_id}"
    else:
        where = f"agreement={synthetic.agreement_slug}"
    return f"synthetic/{synthetic.cdm_table}/{where}/synthetic={synthetic.id}"


def _failed(database: Database, synthetic_ids: Sequence[int], message: str) -> None:
    with database.session() as s:
        for synthetic_id in synthetic_ids:
            synthetic = get(s, synthetic_id)
            if synthetic.state == SynthState.WITHDRAWN:
                continue  # withdrawn says more, and was recorded when it happened
            synthetic.state = SynthState.FAILED
            synthetic.error = message[:4000]
            synthetic.finished_at = utcnow()
            record(
                s,
                actor="system",
                action="synth.failed",
                target=f"synthetic:{synthetic_id}",
                detail={
                    "source": synthetic.source,
                    "error": message[:500],
                    "group": synthetic.group_id,
                },
            )


def _objects(synthetic: SyntheticVersion) -> list[str]:
    """The storage objects of a synthetic version: its rows and its plots."""
    plots = json.loads(synthetic.plot_keys or "{}").values()
    return [k for k in (synthetic.data_key, *plots) if k]


@task(VERSION_JOB)
def version_job(ctx: JobContext) -> dict[str, Any]:
    """Synthesise a released dataset version."""
    return _run(ctx)


@task(AGREEMENT_JOB)
def agreement_table_job(ctx: JobContext) -> dict[str, Any]:
    """Synthesise an agreement's pooled table (the union of the versions it pools)."""
    return _run(ctx)


@task(GROUP_JOB)
def agreement_tables_job(ctx: JobContext) -> dict[str, Any]:
    """Synthesise an agreement's linked pooled tables together (one group)."""
    return _run(ctx)


@dataclass
class _Member:
    """One synthetic version the job makes: its table, object prefix and pool objects."""

    id: int
    table: str
    prefix: str
    keys: list[str]
    sources: list[int]


@dataclass
class _Plan:
    members: list[_Member]
    method: str
    seed: int
    group_id: int | None
    agreement: str


def _start(database: Database, ids: Sequence[int]) -> tuple[_Plan, str]:
    """Mark the versions running and find what each reads; the first problem found."""
    members: list[_Member] = []
    problem = ""
    with database.session() as s:
        for synthetic_id in ids:
            synthetic = get(s, synthetic_id)
            if synthetic.state == SynthState.WITHDRAWN:  # its source went while it queued
                problem = problem or "its training data was withdrawn before it ran"
                continue
            synthetic.state = SynthState.RUNNING
            synthetic.error = ""
            try:
                versions = _source_versions(s, synthetic)
            except (SynthesisError, NotFound) as err:
                problem = problem or str(getattr(err, "message", err))
                continue
            synthetic.source_versions = json.dumps([v.id for v in versions])
            members.append(
                _Member(
                    synthetic.id,
                    synthetic.cdm_table,
                    _prefix(synthetic),
                    [v.pool_key for v in versions],
                    [v.id for v in versions],
                )
            )
        plan = _Plan(
            members, synthetic.method, synthetic.seed, synthetic.group_id, synthetic.agreement_slug
        )
    return plan, problem


def _synthesize(
    ctx: JobContext, plan: _Plan, frames: dict[str, pd.DataFrame]
) -> tuple[dict[str, SynthesisResult], dict[str, Any] | None]:
    """One table with ``synthesize_table``; a group with ``synthesize_tables``, whose
    summary (how the relationships were kept, and why) comes back for the reports."""
    options: dict[str, Any] = {
        "method": plan.method,
        "seed": plan.seed,
        "max_training_rows": ctx.settings.synth_max_training_rows,
        "progress": lambda done, label: ctx.progress(10 + 15 * done, label),
    }
    if plan.group_id is None:
        table = plan.members[0].table
        facts = table_facts(cdm_table(table))
        return {table: synthesize_table(frames[table], facts, **options)}, None
    multi = synthesize_tables(frames, model_facts(), **options)
    summary = multi.summary()
    refusal = [n for n in multi.notes if "refused" in n]
    if multi.mode == "hma":
        kept = (
            "kept by SDV's multi-table model (HMASynthesizer): the relationships and "
            "the correlations across tables are modelled"
        )
    else:
        kept = "kept by the per-table fallback: " + (
            refusal[0] if refusal else "SDV's multi-table model was not used"
        )
    group = {
        "group_id": plan.group_id,
        "agreement": plan.agreement,
        "tables": [m.table for m in plan.members],
        "mode": multi.mode,
        "relationships": kept,
        "links": summary["links"],
        "integrity": summary["integrity"],
        "notes": summary["notes"],
    }
    return multi.tables, group


def _report(
    storage: Storage, settings: Settings, result: SynthesisResult, prefix: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The report against the steward's gates, and its plots stored under ``prefix``."""
    with tempfile.TemporaryDirectory(prefix="cleanroom-synth-") as tmp:
        report = _finite(build_report(result, thresholds=thresholds(settings), plot_dir=Path(tmp)))
        plot_keys: dict[str, str] = {}
        for item in report["plots"]:
            path = Path(tmp) / item["file"]
            if path.is_file():
                key = f"{prefix}/plots/{item['file']}"
                with path.open("rb") as fh:
                    storage.put(key, fh)
                plot_keys[item["file"]] = key
    return report, plot_keys


def _all_or_none(reports: dict[str, dict[str, Any]], group: dict[str, Any]) -> list[str]:
    """A group is published whole or not at all (else the published tables' keys would
    dangle): a table that passed its own gates fails the ``group`` gate when another
    failed. Every report gets the group's summary. Returns the tables that failed."""
    failed = [table for table, r in reports.items() if not r["gates"]["passed"]]
    for table, report in reports.items():
        report["group"] = {**group, "published": not failed, "failed_tables": failed}
        if failed and table not in failed:
            report["gates"]["passed"] = False
            report["gates"]["failed"].append(
                {
                    "gate": "group",
                    "value": failed,
                    "threshold": None,
                    "message": f"linked table(s) {', '.join(failed)} of its group failed their "
                    "gates, and a group is published all together or not at all",
                }
            )
    return failed


def _recheck(ctx: JobContext, ids: Sequence[int]) -> None:
    """Before it reads the pool, the job asks the policy again: may whoever queued it still
    have it made, and does the agreement (for an agreement's tables) still grant its data?
    When not, the versions fail and the job stops with the reason (and a ledger entry)."""
    with ctx.database.session() as s:
        members = [get(s, i) for i in ids]
        version_id, slug = members[0].dataset_version_id, members[0].agreement_slug
        tables = [m.cdm_table for m in members]
        version = s.get(DatasetVersion, version_id) if version_id is not None else None
        institution = version.institution_id if version is not None else None
        who, _user = job_recheck.queued_by(s, ctx.job_id)
        off: list[str] = []
        if slug:  # an agreement's pooled tables: does the agreement still grant them?
            policy = job_recheck.policy_now(s, f"agreement:{slug}")
            off = [t for t in tables if not agreements.in_force(policy, slug, t)]
    try:
        if version_id is not None:
            job_recheck.recheck(
                ctx,
                "synthesise",
                f"datasets/{version_id}",
                owner=lambda user: user.institution_id == institution,
                what="have this version synthesised",
            )
            return
        job_recheck.recheck(ctx, "synthesise", "synthetic", what="have syntheses made")
        if off:
            job_recheck.refuse(
                ctx,
                who,
                "synthesise",
                f"agreement:{slug}",
                f"stopped: agreement `{slug}` no longer grants its {', '.join(off)} data "
                "(suspended, terminated or expired while the synthesis waited); nothing was "
                "read. Synthesise again once it is active.",
                reason="agreement not in force",
                tables=off,
            )
    except job_recheck.JobRefused as err:
        _failed(ctx.database, ids, err.message)
        raise


def _run(ctx: JobContext) -> dict[str, Any]:
    payload = ctx.payload
    ids = [int(i) for i in payload.get("synthetic_ids", [payload.get("synthetic_id")])]
    storage = get_storage(ctx.settings)
    _recheck(ctx, ids)
    plan, problem = _start(ctx.database, ids)
    if problem:
        _failed(ctx.database, ids, problem)
        return {"state": SynthState.FAILED, "error": problem}
    try:
        ctx.progress(5, "reading the de-identified pool")
        frames = {m.table: read_frames(storage, m.keys) for m in plan.members}
        rows_in = sum(len(f) for f in frames.values())
        ctx.progress(10, f"training {plan.method} on {rows_in:,} rows")
        results, group = _synthesize(ctx, plan, frames)
        reports: dict[str, dict[str, Any]] = {}
        plot_keys: dict[str, dict[str, str]] = {}
        for n, m in enumerate(plan.members):
            ctx.progress(72 + 20 * n // len(plan.members), f"scoring {m.table}")
            reports[m.table], plot_keys[m.table] = _report(
                storage, ctx.settings, results[m.table], m.prefix
            )
    except SynthesisError as err:
        _failed(ctx.database, ids, str(err))
        return {"state": SynthState.FAILED, "error": str(err)}
    except jobs.LeaseLost:
        raise
    except Exception as err:
        _failed(ctx.database, ids, f"{type(err).__name__}: {err}")
        raise
    failed_tables = _all_or_none(reports, group) if group is not None else []
    passed = all(r["gates"]["passed"] for r in reports.values())
    data_keys = {m.table: f"{m.prefix}/part-0.parquet" if passed else "" for m in plan.members}
    ctx.progress(94, "storing the synthetic rows" if passed else "storing the report")
    for table, key in data_keys.items():
        if key:  # invisible until the rows below commit
            put_frame(storage, key, results[table].synthetic)
    state = SynthState.PUBLISHED if passed else SynthState.FAILED_GATES
    doomed: list[str] = []
    with ctx.database.session() as s:
        gone = _not_released(s, [v for m in plan.members for v in m.sources])
        if gone:  # withdrawn while the job ran: never published, objects deleted
            state = SynthState.WITHDRAWN
        for m in plan.members:
            synthetic = get(s, m.id)
            logged = synthetic.state == SynthState.WITHDRAWN  # by withdraw_made_from
            synthetic.report = json.dumps(reports[m.table])
            synthetic.plot_keys = json.dumps(plot_keys[m.table])
            synthetic.rows = len(results[m.table].synthetic)
            synthetic.data_key = data_keys[m.table]
            synthetic.state = state
            synthetic.finished_at = utcnow()
            if gone:
                doomed += _objects(synthetic)
                _withdrawn(s, synthetic, gone[0], actor="system", log=not logged)
                continue
            headline = scores(synthetic)
            record(
                s,
                actor="system",
                action="synth.published" if passed else "synth.failed_gates",
                target=f"synthetic:{m.id}",
                detail={
                    "source": synthetic.source,
                    "table": m.table,
                    "method": plan.method,
                    "seed": plan.seed,
                    "rows_in": results[m.table].rows_in,
                    "rows": synthetic.rows,
                    "quality": headline["quality"],
                    "dcr_overfitting_protection": headline["dcr_overfitting_protection"],
                    "copied_rows": headline["copied_rows"],
                    "failed_gates": [g["gate"] for g in headline["failed_gates"]],
                    "data_key": synthetic.data_key or None,
                    "group": plan.group_id,
                },
            )
        if group is not None:
            record(
                s,
                actor="system",
                action="synth.group",
                target=f"synthetic-group:{plan.group_id}",
                detail={
                    "agreement": plan.agreement,
                    "synthetic_versions": {m.table: m.id for m in plan.members},
                    "state": state,
                    "mode": group["mode"],
                    "relationships": group["relationships"],
                    "failed_tables": failed_tables,
                    "orphan_keys": sum(i["orphans"] for i in group["integrity"]),
                },
            )
    for key in doomed:
        storage.delete(key)
    failed = {t: [g["gate"] for g in r["gates"]["failed"]] for t, r in reports.items()}
    if group is None:
        m = plan.members[0]
        return {
            "state": state,
            "synthetic_id": m.id,
            "rows": len(results[m.table].synthetic),
            "failed_gates": failed[m.table],
        }
    return {
        "state": state,
        "group_id": plan.group_id,
        "synthetic_ids": ids,
        "rows": {t: len(r.synthetic) for t, r in results.items()},
        "failed_gates": failed,
    }


# Withdrawal ----------------------------------------------------------------------------------


def _not_released(session: Session, version_ids: Sequence[int]) -> list[int]:
    """Those of ``version_ids`` that are no longer released (withdrawn)."""
    if not version_ids:
        return []
    released = set(
        session.scalars(
            select(DatasetVersion.id).where(
                DatasetVersion.id.in_(version_ids), DatasetVersion.state == VersionState.RELEASED
            )
        )
    )
    return sorted(set(version_ids) - released)


def _withdrawn(
    session: Session,
    synthetic: SyntheticVersion,
    version_id: int,
    *,
    actor: str,
    via_group: bool = False,
    log: bool = True,
) -> None:
    """Never served again; the caller deletes its objects (:func:`_objects`) after commit."""
    objects = len(_objects(synthetic))
    synthetic.state = SynthState.WITHDRAWN
    synthetic.data_key = ""
    synthetic.plot_keys = "{}"
    synthetic.error = (
        f"withdrawn: {'its group was ' if via_group else ''}trained on dataset version "
        f"{version_id}, which its contributor withdrew; its rows and plots are deleted"
    )
    if log:
        record(
            session,
            actor=actor,
            action="synth.withdrawn",
            target=f"synthetic:{synthetic.id}",
            detail={
                "source": synthetic.source,
                "table": synthetic.cdm_table,
                "dataset_version": version_id,
                "group": synthetic.group_id,
                "via_group": via_group,
                "deleted_objects": objects,
            },
        )


def _trained_on(session: Session, synthetic: SyntheticVersion, version: DatasetVersion) -> bool:
    if synthetic.dataset_version_id is not None:
        return synthetic.dataset_version_id == version.id
    if synthetic.trained_on:
        return version.id in synthetic.trained_on
    if synthetic.state in (SynthState.QUEUED, SynthState.FAILED):
        return False  # it has read nothing (a queued one reads the pool as it is then)
    # Made before its sources were recorded: was the version's institution a contributor?
    stored = session.scalar(
        select(AgreementRecord).where(AgreementRecord.slug == synthetic.agreement_slug)
    )
    if stored is None:
        return True
    contributors = contributing_institutions(agreements.contract_of(stored))
    return version.institution.slug in contributors


def withdraw_made_from(session: Session, version: DatasetVersion, *, actor: str) -> list[str]:
    """Stop serving every synthetic version trained on ``version``: its own syntheses, the
    agreement-wide ones whose training data included it, and every member of their groups
    (a group stands or falls whole). Each is marked ``withdrawn`` in this transaction, with
    a ``synth.withdrawn`` ledger entry; returns the storage objects (rows and plots) the
    caller deletes once it has committed."""
    candidates = session.scalars(
        select(SyntheticVersion).where(
            SyntheticVersion.state != SynthState.WITHDRAWN,
            (SyntheticVersion.dataset_version_id == version.id)
            | (
                (SyntheticVersion.agreement_slug != "")
                & (SyntheticVersion.cdm_table == version.cdm_table)
            ),
        )
    )
    hit = [c for c in candidates if _trained_on(session, c, version)]
    groups = {c.group_id for c in hit if c.group_id is not None}
    companions = []
    if groups:
        companions = list(
            session.scalars(
                select(SyntheticVersion).where(
                    SyntheticVersion.group_id.in_(groups),
                    SyntheticVersion.state != SynthState.WITHDRAWN,
                    SyntheticVersion.id.not_in([c.id for c in hit]),
                )
            )
        )
    doomed: list[str] = []
    for synthetic in hit + companions:
        doomed += _objects(synthetic)
        _withdrawn(session, synthetic, version.id, actor=actor, via_group=synthetic in companions)
    return doomed


# Reactions to the ingest domain's events (hub.events) -------------------------------------


@events.on(events.DATASET_RELEASED)
def _on_release(session: Session, settings: Settings, version: DatasetVersion, actor: str) -> None:
    """A version shared as synthetic only is synthesised as soon as it is released."""
    if version.synthetic_only:
        request_for_version(session, settings, version, actor=actor)


@events.on(events.DATASET_WITHDRAWN)
def _on_withdrawal(session: Session, version: DatasetVersion, actor: str) -> list[str]:
    """Withdraw what was made from a withdrawn version; its objects, for the caller to delete."""
    return withdraw_made_from(session, version, actor=actor)
