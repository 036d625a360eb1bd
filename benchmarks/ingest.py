"""Parse + map + validate of a site's ``batch`` table against a plain typed pandas read.

Generates N rows x 30 columns in a temporary directory (not timed): the 21 columns of the CDM
``batch`` table under the demo generator's CSV site headers (CDM synonyms: ``Lot No.``,
``Viability (%)``, ``TVC (x10^9)``, a day-first ``Expiry Date`` ...) and 9 site columns the
CDM does not know, with realistic values and about 1-2 % invalid rows (repeated lots, empty
required cells, impossible dates, values out of range or not allowed).

Then times, separately and in total, what the ingest jobs do: ``sniff_file`` + ``read_table``
(parse), ``propose_mapping`` + ``apply_mapping`` (map) and ``validate`` (validate). The
baseline, run in the same process, is the least any typed ingest must do:
``pandas.read_csv(path, dtype=str)`` followed by ``pd.to_numeric`` / ``pd.to_datetime`` (with
the right format given) on the same numeric and date columns.

Prints times, rows/s, peak RSS per step (a thread sampling ``/proc/self/statm``) and for the
process (``ru_maxrss``), the ratio against the baseline and whether the issue's target
(parse + map + validate of 1,000,000 x 30 in under 60 s) is met.

``--case fhir``: FHIR R5 bulk data. Generates ``--products`` (default 100,000)
``BiologicallyDerivedProduct`` resources as NDJSON (not timed): half apheresis collections
with their DIN, collection date and pre-collection counts in UCUM units, half manufactured
lots whose ``parent`` is a collection, with the Patients they come from, and about 0.5 %
faulty resources (invalid dates, properties the CDM does not know, parents that are not in
the file). Then times ``contracts.fhir.read_fhir`` (parse line by line, validate every
resource with ``fhir.resources``, map through ``contracts/fhir_r5.yaml``, relink references,
convert units) against the baseline of parsing the same file with plain ``json.loads`` per
line, and says whether the issue's target (100,000 products in under 60 s) is met.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contracts.cdm import load_cdm
from contracts.fhir import FhirImport, read_fhir
from hub.demodata import FORMATS
from hub.ingest.mapping import MappingProposal, apply_mapping, propose_mapping
from hub.ingest.parsing import FileKind, ParsedTable, read_table, sniff_file
from hub.ingest.validation import validate

TARGET_ROWS = 1_000_000
TARGET_SECONDS = 60.0
FHIR_TARGET_PRODUCTS = 100_000
FHIR_TARGET_SECONDS = 60.0
CHUNK_ROWS = 100_000

# CDM column -> the site's header for it: the demo generator's CSV site (every header one of
# the synonyms in contracts/cdm.yaml), so the benchmark and the demo read the same habits.
HEADERS: dict[str, str] = dict(FORMATS[0].columns["batch"])
EXTRA = [  # site columns the CDM does not know: left unmapped
    "Batch Record Rev",
    "Incubator",
    "Media Lot",
    "Vector Lot",
    "Cryobag Type",
    "QC Analyst",
    "Shift",
    "Deviation Ref",
    "Internal Comments",
]
NUMERIC = [
    HEADERS[c]
    for c in (
        "culture_days",
        "moi",
        "fold_expansion",
        "viability",
        "transduction_efficiency",
        "vcn",
        "cd3_pct",
        "cd4_cd8_ratio",
        "total_viable_cells",
    )
]
DATES = {
    HEADERS["manufacturing_start"]: "ISO8601",
    HEADERS["release_date"]: "ISO8601",
    HEADERS["expiration_date"]: "%d/%m/%Y",
}

SITES = ["Leiden GMP Unit", "Hopital Saint-Louis CTU", "Charite CAR-T Lab", "Karolinska Vecura"]
NAMES = ["A. Jansen", "M. Dubois", "K. Schmidt", "L. Rossi", "E. Lindqvist", "S. Novak"]
COMMENTS = [
    "",
    "",
    "",
    "",
    "slow expansion, day 9 feed",
    "bag label reprinted; see DEV",
    "harvest delayed 2 h, QA informed",
    'operator note: "clumps" at day 5',
]


def _pick(rng: np.random.Generator, values: list[str], n: int) -> np.ndarray:
    return np.array(values, dtype=object)[rng.integers(0, len(values), n)]


def _spoil(rng: np.random.Generator, values: np.ndarray, share: float, bad: list[str]) -> None:
    """Replace about ``share`` of ``values`` in place with one of ``bad``."""
    hit = rng.random(len(values)) < share
    values[hit] = _pick(rng, bad, int(hit.sum()))


def _decimals(rng: np.random.Generator, low: float, high: float, n: int, digits: int) -> Any:
    return np.round(rng.uniform(low, high, n), digits).astype(str).astype(object)


def _chunk(rng: np.random.Generator, start: int, n: int) -> pd.DataFrame:
    """Rows ``start`` .. ``start + n`` of the benchmark table, columns in file order."""
    seq = np.arange(start, start + n)
    lots = pd.Series(seq).map("CT24-{:07d}".format).to_numpy(dtype=object)
    repeat = rng.random(n) < 0.0005  # a lot entered twice: duplicate key
    lots[repeat] = pd.Series(np.maximum(seq[repeat] - 1, 0)).map("CT24-{:07d}".format)
    coi = pd.Series(rng.integers(0, 400_000, n)).map("COI-{:06d}".format).to_numpy(dtype=object)
    _spoil(rng, coi, 0.001, [""])  # required and empty
    din = pd.Series(rng.integers(0, 10**6, n)).map("W1234 24 {:06d}".format).to_numpy(dtype=object)
    _spoil(rng, din, 0.05, [""])
    start_day = np.datetime64("2022-01-01") + rng.integers(0, 1000, n)
    release = start_day + rng.integers(10, 30, n)
    expiry = pd.DatetimeIndex(release + 365).strftime("%d/%m/%Y").to_numpy(dtype=object)
    _spoil(rng, expiry, 0.002, ["31/02/2025", "TBD", "n/a"])
    manufacturing_start = start_day.astype(str).astype(object)
    _spoil(rng, manufacturing_start, 0.001, ["2023-13-01", "unknown"])
    platform = _pick(rng, ["central", "central", "Central", "point of care", "point_of_care"], n)
    _spoil(rng, platform, 0.001, ["decentral"])
    status = _pick(rng, ["available", "applied", "applied", "processed", "discarded"], n)
    _spoil(rng, status, 0.001, ["Released", "quarantine"])
    outcome = _pick(rng, ["conforming"] * 8 + ["Non-conforming", "failed"], n)
    days = rng.integers(7, 15, n).astype(str).astype(object)
    _spoil(rng, days, 0.001, ["10.5", "45", "ten"])
    viability = _decimals(rng, 70, 99.9, n, 1)
    _spoil(rng, viability, 0.002, ["n/a", "105.2", "NA"])
    by_column = {
        "lot_id": lots,
        "coi_id": coi,
        "din": din,
        "product_code": _pick(rng, ["S2080V00", "S2081V00", "X0519V00"], n),
        "processing_facility": _pick(rng, SITES, n),
        "platform": platform,
        "manufacturing_start": manufacturing_start,
        "release_date": release.astype(str).astype(object),
        "expiration_date": expiry,
        "product_status": status,
        "manufacturing_outcome": outcome,
        "culture_days": days,
        "moi": _decimals(rng, 1, 5, n, 1),
        "fold_expansion": _decimals(rng, 10, 200, n, 1),
        "viability": viability,
        "transduction_efficiency": _decimals(rng, 10, 80, n, 1),
        "vcn": _decimals(rng, 0.5, 5, n, 2),
        "cd3_pct": _decimals(rng, 85, 99.9, n, 1),
        "cd4_cd8_ratio": _decimals(rng, 0.2, 5, n, 2),
        "total_viable_cells": _decimals(rng, 0.5, 20, n, 2),
        "released_by": _pick(rng, NAMES, n),
    }
    columns = {HEADERS[c]: values for c, values in by_column.items()}
    columns.update(
        {
            "Batch Record Rev": _pick(rng, ["BR-0012 rev 3", "BR-0012 rev 4", "BR-0031 rev 1"], n),
            "Incubator": pd.Series(rng.integers(1, 13, n)).map("INC-{:02d}".format).to_numpy(),
            "Media Lot": pd.Series(rng.integers(0, 900, n)).map("ML2403-{:03d}".format).to_numpy(),
            "Vector Lot": pd.Series(rng.integers(0, 120, n)).map("VL-23-{:04d}".format).to_numpy(),
            "Cryobag Type": _pick(rng, ["CryoMACS 250", "CryoMACS 500", "CellSeal 20 mL"], n),
            "QC Analyst": _pick(rng, ["AJ", "MD", "KS", "LR"], n),
            "Shift": _pick(rng, ["day", "night"], n),
            "Deviation Ref": _pick(rng, [""] * 19 + ["DEV-2024-0117"], n),
            "Internal Comments": _pick(rng, COMMENTS, n),
        }
    )
    assert list(columns) == [*HEADERS.values(), *EXTRA]
    return pd.DataFrame(columns)


def generate(path: Path, rows: int, seed: int = 1) -> None:
    """Write the benchmark CSV (UTF-8, comma-separated, quoted where needed) in chunks."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8", newline="") as out:
        for start in range(0, rows, CHUNK_ROWS):
            chunk = _chunk(rng, start, min(CHUNK_ROWS, rows - start))
            chunk.to_csv(out, header=start == 0, index=False, lineterminator="\n")


class RssSampler:
    """Resident set size of this process from ``/proc/self/statm`` every ``interval`` s in a
    thread; :meth:`measure` reports the peak seen while a step ran. A step that holds the
    GIL delays the samples, so a peak may be missed: ``ru_maxrss`` is the exact one."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def measure(self, fn: Callable[[], Any]) -> tuple[Any, float, int, int]:
        """``fn()``, its wall time, RSS before it and the peak RSS while it ran (bytes)."""
        before = self.rss()
        self.peak = before
        start = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - start
        return result, elapsed, before, max(self.peak, self.rss())


def peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def baseline(path: Path) -> pd.DataFrame:
    """The least a typed ingest does: read as strings, then type the numbers and dates."""
    frame = pd.read_csv(path, dtype=str)
    for name in NUMERIC:
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    for name, fmt in DATES.items():
        frame[name] = pd.to_datetime(frame[name], errors="coerce", format=fmt)
    return frame


def pipeline(
    path: Path, rows: int, sampler: RssSampler, steps: dict[str, list[tuple[float, int]]]
) -> dict[str, Any]:
    """One parse, map and validate of the file as the ingest jobs do them; appends each
    step's (time, peak RSS) to ``steps`` and returns the validation summary."""
    table = load_cdm().table("batch")

    def parse() -> ParsedTable:
        assert sniff_file(path) is FileKind.CSV
        return read_table(path, FileKind.CSV)

    parsed, took, _, peak = sampler.measure(parse)
    steps["parse"].append((took, peak))
    assert parsed.rows == rows, parsed.warnings

    def map_() -> tuple[MappingProposal, pd.DataFrame]:
        proposal = propose_mapping(parsed.frame, table)
        return proposal, apply_mapping(parsed.frame, proposal, table)

    (proposal, mapped), took, _, peak = sampler.measure(map_)
    steps["map"].append((took, peak))
    wrong = {s: t for s, t in proposal.as_mapping().items() if HEADERS.get(t) != s}
    assert len(proposal.as_mapping()) == len(HEADERS) and not wrong, proposal.to_dict()

    result, took, _, peak = sampler.measure(
        lambda: validate(mapped, table, factors=proposal.factors())
    )
    steps["validate"].append((took, peak))
    return result.summary


# FHIR R5 case -----------------------------------------------------------------------------

UCUM = "http://unitsofmeasure.org"
PROPERTY = "urn:cleanroom:cdm:property"
CDM_CODE = "urn:cleanroom:cdm:code"


def _property(code: str, **value: Any) -> dict[str, Any]:
    return {"type": {"coding": [{"system": PROPERTY, "code": code}]}, **value}


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code}


def fhir_generate(path: Path, products: int, seed: int = 1) -> int:
    """Write ``products`` products (half collections, half lots) and their Patients as
    NDJSON; returns the number of resources written."""
    rng = np.random.default_rng(seed)
    pairs = products // 2
    days = np.datetime64("2022-01-01") + rng.integers(0, 1000, pairs)
    alc = np.round(rng.uniform(200, 3000, pairs), 0)  # cells/uL, converted to 10^9/L
    cd3 = np.round(rng.uniform(0.5, 20, pairs), 2)  # 10^9 cells
    viability = np.round(rng.uniform(0.7, 0.99, pairs), 3)  # fraction, converted to %
    faulty = rng.random(pairs) < 0.005
    written = 0
    with open(path, "w", encoding="utf-8") as out:
        for i in range(pairs):
            coi, din, lot = f"COI-{i:07d}", f"W1234{24:02d}{i:06d}", f"CT24-{i:07d}"
            day = str(days[i])
            patient = {
                "resourceType": "Patient",
                "id": f"p{i}",
                "identifier": [{"system": "urn:cleanroom:id:coi", "value": coi}],
                "gender": "female" if i % 2 else "male",
                "managingOrganization": {"display": SITES[i % len(SITES)]},
            }
            collection = {
                "resourceType": "BiologicallyDerivedProduct",
                "id": f"c{i}",
                "productCategory": {
                    "system": "http://hl7.org/fhir/product-category",
                    "code": "cells",
                },
                "identifier": [{"system": "urn:cleanroom:id:din", "value": din}],
                "biologicalSourceEvent": {"system": "urn:cleanroom:id:din", "value": din},
                "collection": {"source": {"reference": f"Patient/p{i}"}, "collectedDateTime": day},
                "property": [
                    _property(
                        "fresh_or_cryo",
                        valueCodeableConcept={"coding": [{"system": CDM_CODE, "code": "fresh"}]},
                    ),
                    _property("alc_pre", valueQuantity=_quantity(float(alc[i]), "cells/uL", "/uL")),
                    _property(
                        "cd3_yield",
                        valueQuantity=_quantity(float(cd3[i]), "10^9 cells", "10*9{cells}"),
                    ),
                    _property("device", valueString="Spectra Optia"),
                ],
            }
            parent = f"BiologicallyDerivedProduct/c{i}"
            lot_product: dict[str, Any] = {
                "resourceType": "BiologicallyDerivedProduct",
                "id": f"l{i}",
                "productCategory": {
                    "system": "http://hl7.org/fhir/product-category",
                    "code": "cells",
                },
                "productCode": {
                    "coding": [{"system": "urn:oid:2.16.840.1.113883.6.18", "code": "S2080V00"}]
                },
                "identifier": [{"system": "urn:cleanroom:id:lot", "value": lot}],
                "parent": [{"reference": parent}],
                "collection": {"source": {"reference": f"Patient/p{i}"}},
                "processingFacility": [{"display": SITES[(i + 1) % len(SITES)]}],
                "productStatus": {"code": "applied"},
                "expirationDate": str(days[i] + 365),
                "property": [
                    _property(
                        "platform",
                        valueCodeableConcept={"coding": [{"system": CDM_CODE, "code": "central"}]},
                    ),
                    _property(
                        "viability", valueQuantity=_quantity(float(viability[i]), "fraction", "1")
                    ),
                    _property("culture_days", valueQuantity=_quantity(int(9 + i % 5), "days", "d")),
                    _property(
                        "vcn", valueQuantity=_quantity(1.8, "copies/cell", "{copies}/{cell}")
                    ),
                ],
            }
            if faulty[i]:  # one of three faults: invalid FHIR, an unknown property, a lost parent
                kind = i % 3
                if kind == 0:
                    lot_product["expirationDate"] = "31/02/2025"
                elif kind == 1:
                    lot_product["property"].append(_property("bag_colour", valueString="blue"))
                else:
                    lot_product["parent"] = [{"reference": "BiologicallyDerivedProduct/lost"}]
            for resource in (patient, collection, lot_product):
                out.write(json.dumps(resource, separators=(",", ":")))
                out.write("\n")
                written += 1
    return written


def fhir_baseline(path: Path) -> int:
    """Plain ``json.loads`` of every line: the least any NDJSON import does."""
    count = 0
    with open(path, "rb") as fh:
        for line in fh:
            json.loads(line)
            count += 1
    return count


def fhir_main(products: int, repeat: int) -> None:
    mib = float(1 << 20)
    sampler = RssSampler()
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "products.ndjson"
        start = time.perf_counter()
        resources = fhir_generate(path, products)
        made = time.perf_counter() - start
        print(
            f"file: {products:,} products ({products // 2:,} collections + {products // 2:,} "
            f"lots) and {resources - 2 * (products // 2):,} Patients as NDJSON, "
            f"{resources:,} resources, {path.stat().st_size / mib:.1f} MiB"
        )
        print(f"(generated in {made:.1f} s, not timed; best of {repeat} run(s) each)")
        base: list[tuple[float, int]] = []
        workers = min(2, os.cpu_count() or 1)
        runs: dict[int, list[tuple[float, int]]] = {1: [], workers: []}
        results: dict[int, FhirImport] = {}
        for _ in range(repeat):  # alternate, so neither side gets a warmer cache
            count, took, _, peak = sampler.measure(lambda: fhir_baseline(path))
            assert count == resources
            base.append((took, peak))
            gc.collect()
            for n in runs:
                result, took, _, peak = sampler.measure(
                    functools.partial(read_fhir, path, workers=n)
                )
                runs[n].append((took, peak))
                results[n] = result
                gc.collect()
    sampler.stop()
    report = results[1].report
    for result in results.values():  # the worker processes change nothing in the result
        assert result.report.rows == report.rows and result.report.invalid == report.invalid
    base_t, base_peak = min(base)
    print(
        f"mapped: {', '.join(f'{t} {n:,}' for t, n in sorted(report.rows.items()))} rows; "
        f"invalid {report.invalid_count:,}, missing references "
        f"{report.missing_reference_count:,}, unmapped elements "
        f"{sum(report.unmapped_elements.values()):,}"
    )
    print(
        f"{'baseline json.loads per line':<54} {base_t:7.2f} s "
        f"({resources / base_t:>9,.0f} resources/s)  peak RSS {base_peak / mib:,.0f} MiB"
    )
    best = {}
    for n, timings in runs.items():
        took, peak = min(timings)
        best[n] = took
        label = "read_fhir (parse + validate + map + relink)"
        if n > 1:
            label = f"read_fhir, validated in {n} worker processes"
        print(
            f"{label:<54} {took:7.2f} s ({resources / took:>9,.0f} resources/s)  "
            f"peak RSS {peak / mib:,.0f} MiB (this process)"
        )
        print(
            f"ratio read_fhir/baseline ({n} process{'es' if n > 1 else ''}): {took / base_t:.1f}x"
        )
    print(f"peak RSS (ru_maxrss): {peak_rss_mib():,.0f} MiB")
    took = min(best.values())
    if products == FHIR_TARGET_PRODUCTS:
        verdict = "met" if took < FHIR_TARGET_SECONDS else "not met"
        print(f"target: < {FHIR_TARGET_SECONDS:.0f} s for {products:,} products: {verdict}")
    else:
        estimate = took * FHIR_TARGET_PRODUCTS / products
        print(
            f"target: < {FHIR_TARGET_SECONDS:.0f} s for {FHIR_TARGET_PRODUCTS:,} products: not "
            f"checked at {products:,} (linear estimate {estimate:.0f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--case", choices=["batch", "fhir"], default="batch")
    parser.add_argument("--rows", type=int, default=TARGET_ROWS)
    parser.add_argument("--products", type=int, default=FHIR_TARGET_PRODUCTS, help="fhir case")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs each")
    args = parser.parse_args()
    if args.case == "fhir":
        fhir_main(args.products, args.repeat)
        return
    mib = float(1 << 20)
    sampler = RssSampler()
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "batch.csv"
        start = time.perf_counter()
        generate(path, args.rows)
        made = time.perf_counter() - start
        size = path.stat().st_size
        print(
            f"file: {args.rows:,} rows x {len(HEADERS) + len(EXTRA)} columns "
            f"({len(HEADERS)} batch columns + {len(EXTRA)} unmapped site columns), "
            f"{size / mib:.1f} MiB"
        )
        print(f"(generated in {made:.1f} s, not timed; best of {args.repeat} run(s) each)")
        gc.collect()

        base: list[tuple[float, int]] = []
        steps: dict[str, list[tuple[float, int]]] = {"parse": [], "map": [], "validate": []}
        rss_baseline = 0.0
        summary: dict[str, Any] = {}
        for _ in range(args.repeat):  # alternate, so neither side gets a warmer cache
            frame, took, _, peak = sampler.measure(lambda: baseline(path))
            base.append((took, peak))
            assert frame.shape == (args.rows, len(HEADERS) + len(EXTRA))
            del frame
            gc.collect()
            rss_baseline = rss_baseline or peak_rss_mib()  # before the pipeline ever ran
            summary = pipeline(path, args.rows, sampler, steps)
            gc.collect()
    sampler.stop()

    def best(runs: list[tuple[float, int]]) -> tuple[float, float]:
        took, peak = min(runs)
        return took, peak / mib

    n = args.rows
    base_t, base_peak = best(base)
    times = {name: best(runs) for name, runs in steps.items()}
    total = sum(t for t, _ in times.values())
    print(
        f"mapped {len(HEADERS)} of {len(HEADERS) + len(EXTRA)} columns; valid rows "
        f"{summary['valid_rows']:,}, held back {summary['invalid_rows']:,} "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(summary['by_rule'].items()))})"
    )
    print(
        f"baseline read_csv(dtype=str) + to_numeric/to_datetime: {base_t:7.2f} s "
        f"({n / base_t:>9,.0f} rows/s)  peak RSS {base_peak:,.0f} MiB"
    )
    labels = {
        "parse": "parse    (sniff_file + read_table)",
        "map": "map      (propose_mapping + apply_mapping)",
        "validate": "validate (validate)",
    }
    for name, (took, peak) in times.items():
        print(
            f"{labels[name]:<54} {took:7.2f} s ({n / took:>9,.0f} rows/s)  peak RSS {peak:,.0f} MiB"
        )
    print(f"{'total parse + map + validate':<54} {total:7.2f} s ({n / total:>9,.0f} rows/s)")
    print(f"ratio total/baseline: {total / base_t:.2f}x")
    print(
        f"peak RSS (ru_maxrss): {peak_rss_mib():,.0f} MiB (baseline alone: {rss_baseline:,.0f} MiB)"
    )
    if n == TARGET_ROWS:
        verdict = "met" if total < TARGET_SECONDS else "not met"
        print(f"target: < {TARGET_SECONDS:.0f} s for {TARGET_ROWS:,} rows: {verdict}")
    else:
        estimate = total * TARGET_ROWS / n
        print(
            f"target: < {TARGET_SECONDS:.0f} s for {TARGET_ROWS:,} rows: not checked at "
            f"{n:,} rows (linear estimate {estimate:.0f} s)"
        )


if __name__ == "__main__":
    main()
