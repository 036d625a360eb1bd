"""Synthesis benchmark: fit + sample + report of a batch-like de-identified table.

Ours: ``anonymisation.synthesis.synthesize_table`` (GaussianCopula, CDM metadata and
constraints, holdout) then ``anonymisation.synth_report.build_report`` (quality, diagnostic,
privacy, gates). Baseline, in the same process: plain SDV, metadata detected with
``Metadata.detect_from_dataframes``, ``GaussianCopulaSynthesizer`` fit + sample, then SDV's
``evaluate_quality`` + ``run_diagnostic``. Target: ours < 90 s for 100,000 × 20 on 2 cores.

    .venv/bin/python benchmarks/synth.py [--rows 100000] [--seed 0] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anonymisation.synth_report import build_report  # noqa: E402
from anonymisation.synthesis import synthesize_table  # noqa: E402
from contracts.cdm import load_cdm  # noqa: E402
from hub.synth.facts import table_facts  # noqa: E402


def _pseudonyms(prefix: str, n: int) -> list[str]:
    return [hashlib.sha256(f"{prefix}{i}".encode()).hexdigest()[:32] for i in range(n)]


def batch_frame(rows: int, seed: int) -> pd.DataFrame:
    """A de-identified ``batch`` table: 20 CDM columns, pseudonyms, day offsets, realistic
    correlations (failure with low viability, VCN with transduction)."""
    rng = np.random.default_rng(seed)
    facility = rng.choice([f"facility-{i}" for i in range(12)], rows)
    platform = np.where(rng.random(rows) < 0.8, "central", "point_of_care")
    start = rng.integers(2, 25, rows)
    culture = np.clip(np.round(rng.normal(9, 1.5, rows)), 6, 14).astype(int)
    release = start + culture + rng.integers(3, 10, rows)
    expiry = release + rng.integers(180, 365, rows)
    viability = np.clip(np.round(rng.normal(88, 6, rows), 1), 40, 99.9)
    fail = (rng.random(rows) < 0.03) | (viability < 70)
    outcome = np.where(
        fail, "failed", np.where(rng.random(rows) < 0.08, "non_conforming", "conforming")
    )
    transduction = np.clip(np.round(rng.normal(30, 10, rows), 1), 2, 80)
    vcn = np.clip(np.round(0.05 * transduction + rng.normal(0.4, 0.3, rows), 2), 0.1, 8)
    moi = np.round(rng.uniform(5, 10, rows), 1)
    fold = np.clip(np.round(rng.lognormal(np.log(30), 0.5, rows), 1), 3, 300)
    tvc = np.round(fold * rng.uniform(0.05, 0.2, rows), 2)
    return pd.DataFrame(
        {
            "lot_id": _pseudonyms("lot", rows),
            "coi_id": _pseudonyms("coi", rows),
            "din": _pseudonyms("din", rows),
            "product_code": rng.choice(["S1180A00", "S1181A00", "S2041A00", "S2047A00"], rows),
            "processing_facility": facility,
            "platform": platform,
            "manufacturing_start": pd.array(start, dtype="Int64"),
            "release_date": pd.array(release, dtype="Int64"),
            "expiration_date": pd.array(expiry, dtype="Int64"),
            "product_status": np.where(fail, "discarded", "applied"),
            "manufacturing_outcome": outcome,
            "culture_days": pd.array(culture, dtype="Int64"),
            "moi": moi,
            "fold_expansion": fold,
            "viability": viability,
            "transduction_efficiency": transduction,
            "vcn": vcn,
            "cd3_pct": np.clip(np.round(rng.normal(97, 2, rows), 1), 80, 100),
            "cd4_cd8_ratio": np.clip(np.round(rng.lognormal(0, 0.5, rows), 2), 0.05, 10),
            "total_viable_cells": tvc,
        }
    )


def baseline(frame: pd.DataFrame) -> dict[str, float]:
    from sdv.evaluation import evaluate_quality, run_diagnostic
    from sdv.metadata import Metadata
    from sdv.single_table import GaussianCopulaSynthesizer

    times: dict[str, float] = {}
    t = time.perf_counter()
    metadata = Metadata.detect_from_dataframes({"batch": frame})
    synth = GaussianCopulaSynthesizer(metadata)
    synth.fit({"batch": frame})
    times["fit"] = time.perf_counter() - t
    t = time.perf_counter()
    sample = synth.sample(len(frame))["batch"]
    times["sample"] = time.perf_counter() - t
    t = time.perf_counter()
    quality = evaluate_quality({"batch": frame}, {"batch": sample}, metadata, verbose=False)
    run_diagnostic({"batch": frame}, {"batch": sample}, metadata, verbose=False)
    times["report"] = time.perf_counter() - t
    times["quality"] = quality.get_score()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    frame = batch_frame(args.rows, args.seed)
    print(f"input: {len(frame):,} rows × {len(frame.columns)} columns")
    t0 = time.perf_counter()
    result = synthesize_table(frame, table_facts(load_cdm().table("batch")), seed=args.seed)
    report = build_report(result)
    total = time.perf_counter() - t0
    for phase, seconds in {**result.timings, **report["timings"]}.items():
        print(f"  {phase:<12} {seconds:7.2f} s")
    q, p = report["quality"], report["privacy"]
    print(f"ours total (fit + sample + report): {total:.1f} s (target < 90 s)")
    print(
        f"  quality {q['score']} (shapes {q['column_shapes']}, pairs {q['column_pair_trends']}), "
        f"diagnostic {report['diagnostic']['score']}"
    )
    print(
        f"  DCR overfitting {p['dcr_overfitting_protection']} (SDMetrics equal sizes "
        f"{p['dcr_overfitting_protection_sdmetrics_equal_sizes']}), DCR baseline "
        f"{p['dcr_baseline_protection']} (info), copied rows {p['copied_rows']}, "
        f"PII overlap {p['pii_overlap_total']}, gates passed {report['gates']['passed']}"
    )
    if args.skip_baseline:
        return
    b = baseline(frame)
    base_total = b["fit"] + b["sample"] + b["report"]
    print(
        f"baseline (plain SDV detect + fit + sample + evaluate_quality + run_diagnostic): "
        f"{base_total:.1f} s (fit {b['fit']:.1f}, sample {b['sample']:.1f}, report "
        f"{b['report']:.1f}; quality {b['quality']:.4f})"
    )
    print(f"ratio ours / baseline: {total / base_total:.2f}×")


if __name__ == "__main__":
    main()
