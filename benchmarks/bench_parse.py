"""read_table on a CSV against a plain ``pandas.read_csv(path, dtype=str)`` of the same file.

Generates N rows x 30 columns (ids, dates, decimals, text with quoted delimiters, some empty
cells) in a temporary directory, then prints both times, rows/s, the ratio and the peak RSS.
The baseline is the least any CSV reader must do; read_table adds sniffing, encoding and
delimiter detection, header checks, the cell-length check and None for missing values.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from hub.ingest.parsing import FileKind, read_table, sniff_file

COLUMNS = 30


def generate(path: Path, rows: int, seed: int = 1) -> None:
    """Write the benchmark CSV, a block of lines at a time."""
    rng = random.Random(seed)
    words = ["CD3+", "CD4", "naïve", "expansion", "harvest", "µg/mL", "IL-2", "T cells"]
    header = ",".join(f"col_{i:02d}" for i in range(COLUMNS))
    with open(path, "w", encoding="utf-8", newline="") as out:
        out.write(header + "\n")
        block: list[str] = []
        for r in range(rows):
            cells = []
            for c in range(COLUMNS):
                kind = c % 6
                if kind == 0:
                    cells.append(f"P{r:08d}")
                elif kind == 1:
                    cells.append(f"2024-{1 + r % 12:02d}-{1 + r % 28:02d}")
                elif kind == 2:
                    cells.append(f"{rng.random() * 1000:.3f}")
                elif kind == 3:
                    cells.append("" if r % 7 == 0 else str(rng.randrange(10**6)))
                elif kind == 4:
                    cells.append(f'"{rng.choice(words)}, {rng.choice(words)}"')
                else:
                    cells.append(rng.choice(words))
            block.append(",".join(cells))
            if len(block) == 10_000:
                out.write("\n".join(block) + "\n")
                block = []
        if block:
            out.write("\n".join(block) + "\n")


def peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.csv"
        start = time.perf_counter()
        generate(path, args.rows)
        made = time.perf_counter() - start
        size = path.stat().st_size
        print(f"file: {args.rows:,} rows x {COLUMNS} columns, {size / (1 << 20):.1f} MiB")
        print(f"(generated in {made:.1f} s; best of {args.repeat} runs each)")

        base_times: list[float] = []
        ours_times: list[float] = []
        rss_baseline = 0.0
        for _ in range(args.repeat):  # alternate, so neither side gets a warmer cache
            start = time.perf_counter()
            frame = pd.read_csv(path, dtype=str)
            base_times.append(time.perf_counter() - start)
            assert frame.shape == (args.rows, COLUMNS)
            del frame
            rss_baseline = rss_baseline or peak_rss_mib()  # before read_table ever ran

            start = time.perf_counter()
            assert sniff_file(path) is FileKind.CSV
            table = read_table(path, FileKind.CSV)
            ours_times.append(time.perf_counter() - start)
            assert (table.rows, table.columns) == (args.rows, COLUMNS), table.warnings
            del table

    base, ours = min(base_times), min(ours_times)
    print(f"baseline pandas.read_csv(dtype=str): {base:.3f} s ({args.rows / base:,.0f} rows/s)")
    print(f"read_table (sniff + read):           {ours:.3f} s ({args.rows / ours:,.0f} rows/s)")
    print(f"ratio read_table/baseline: {ours / base:.2f}x")
    print(f"peak RSS: {peak_rss_mib():,.0f} MiB (baseline alone: {rss_baseline:,.0f} MiB)")


if __name__ == "__main__":
    main()
