"""Several linked tables: which relations to keep, holdout by family, and re-linking.

When SDV's ``HMASynthesizer`` refuses a schema (more than 5 tables, depth over 2, composite
keys), each table is synthesised alone and :func:`relink` draws its foreign keys from the
synthetic parent keys with the real number of children per parent, so joins still work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from anonymisation.datamodel import Relation
from anonymisation.synth_backends import Backend
from anonymisation.synth_specs import Link, SynthesisError, TableSpec


def links_between(
    relations: Sequence[Relation], specs: Mapping[str, TableSpec]
) -> tuple[tuple[Link, ...], list[str]]:
    """The ``relations`` among ``specs`` (both key columns present, parent keyed), and
    notes on those left out. A child that refers to a parent and to that parent's own parent
    (``batch.coi_id`` beside ``batch.din`` → ``collection.coi_id``) keeps only the deeper
    link; its other key is copied from the parent row."""
    found: list[Link] = []
    notes: list[str] = []
    for rel in relations:
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


def derived_keys(links: Sequence[Link], all_links: Sequence[Link]) -> list[tuple[Link, Link]]:
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


def order_tables(specs: Mapping[str, TableSpec], links: Sequence[Link]) -> list[str]:
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


def split_linked(
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
    order = order_tables(specs, links)
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


def relink(
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
