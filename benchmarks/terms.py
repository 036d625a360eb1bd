"""Site terms at profiling: finding the category-like columns of an upload and counting
their distinct values (:func:`hub.ingest.terms.distinct_values`), against the plain pandas
way (strip every cell, count every column), on a wide file of a million rows; then the
proposals for every term (goal: profiling a 1,000,000-row file spends < 2 s on terms, and
proposing is instant).

Run: .venv/bin/python benchmarks/terms.py [--rows N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from contracts.cdm import load_cdm
from hub.ingest.terms import MAX_TERMS, distinct_values, propose

TERMS = ["Kymriah", "Yescarta", "tisa-cel", "Breyanzi", " axi-cel", "Flux-cel", "Carvykti"]


def _baseline(frame: pd.DataFrame) -> dict[str, int]:
    """Every column stripped and counted whole, the obvious pandas way."""
    out = {}
    for name in frame.columns:
        values = frame[name].dropna().astype(str).str.strip()
        counts = values[values != ""].value_counts()
        if 0 < len(counts) <= MAX_TERMS:
            out[name] = len(counts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    n = args.rows
    columns: dict[str, np.ndarray] = {}
    for i in range(10):  # category-like columns, and as many identifiers and numbers
        columns[f"category_{i}"] = rng.choice(TERMS, n)
        columns[f"number_{i}"] = rng.integers(0, 10**6, n).astype(str)
    frame = pd.DataFrame(columns)
    print(f"{n:,} rows x {frame.shape[1]} columns (10 category-like)")

    started = time.perf_counter()
    expected = _baseline(frame)
    baseline = time.perf_counter() - started
    started = time.perf_counter()
    found = distinct_values(frame)
    ours = time.perf_counter() - started
    assert {k: len(v) for k, v in found.items()} == expected, "not the same columns and terms"
    print(f"baseline (strip and count every column): {baseline:.2f} s")
    print(f"distinct_values:                         {ours:.2f} s  ({baseline / ours:.1f}x)")
    print(f"goal < 2 s for 1,000,000 rows: {'met' if ours < 2 or n > 1_000_000 else 'NOT met'}")

    episode = load_cdm().table("episode")
    started = time.perf_counter()
    listed = propose(episode, {"product": "category_0"}, found, {})
    took = time.perf_counter() - started
    print(f"proposals for {len(listed['product'])} terms: {took * 1000:.1f} ms")


if __name__ == "__main__":
    main()
