"""Query gateway latency against plain DuckDB (issue 6).

Writes a pooled ``episode``-shaped table of ``--rows`` rows (default 1,000,000) from three
institutions as Parquet in a temporary directory, then times the same grouped aggregate

- through the gateway library: check (sqlglot), rewrite, locked-down DuckDB views, the
  rewritten query, disclosure control (suppression, dominance, rounding, secondary);
- straight on DuckDB: the researcher's query over ``read_parquet`` of the same files;

and prints both medians and the ratio. Target: gateway ≤ 2× DuckDB. No HTTP: the hub adds
the route; this measures the library it mounts.

Run: ``.venv/bin/python benchmarks/gateway.py [--rows 1000000] [--repeat 21]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

# This folder holds a script named policies.py, which would shadow the `policies` package
# that contracts imports; run from the repository with the folder off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import duckdb  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from contracts.agreements import Disclosure  # noqa: E402
from sandbox.gateway import Gateway, Source  # noqa: E402

QUERY = (
    "SELECT indication, sex, COUNT(*) AS n, AVG(weight_kg) AS mean_weight, "
    "STDDEV(age) AS sd_age, AVG(CASE WHEN bridging THEN 1 ELSE 0 END) AS p_bridging "
    "FROM episode GROUP BY indication, sex"
)


def write_pool(folder: Path, rows: int) -> list[Source]:
    rng = np.random.default_rng(0)
    sources = []
    for i, institution in enumerate(("inst_a", "inst_b", "inst_c")):
        n = rows // 3 + (1 if i < rows % 3 else 0)
        table = pa.table(
            {
                "coi_id": [f"{institution}-{j}" for j in range(n)],
                "indication": rng.choice(["ALL", "LBCL", "FL", "MCL", "MM", "CLL"], n),
                "sex": rng.choice(["female", "male"], n),
                "age": rng.integers(18, 90, n),
                "weight_kg": rng.normal(75, 12, n),
                "bridging": rng.random(n) < 0.4,
            }
        )
        path = folder / f"episode-{institution}.parquet"
        pq.write_table(table, path)
        sources.append(Source(str(path), institution))
    return sources


def median_ms(run, repeat: int) -> float:
    run()  # warm the file cache and DuckDB's metadata cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sources = write_pool(Path(tmp), args.rows)
        paths = [s.path for s in sources]

        raw = duckdb.connect(config={"threads": args.threads})
        raw_sql = QUERY.replace("FROM episode", f"FROM read_parquet({paths!r})")
        baseline = median_ms(lambda: raw.execute(raw_sql).fetchall(), args.repeat)

        gateway = Gateway(threads=args.threads, timeout=60)
        disclosure = Disclosure()
        start = time.perf_counter()
        views = gateway.views("bench", {"episode": sources})
        setup = (time.perf_counter() - start) * 1000
        answer = gateway.run(views, disclosure, QUERY)
        through = median_ms(lambda: gateway.run(views, disclosure, QUERY), args.repeat)
        gateway.close()

    print(f"rows: {args.rows:,} in 3 Parquet files; threads: {args.threads}")
    print(f"query: {QUERY}")
    print(f"answer: {len(answer.rows)} groups, {len(answer.suppressed)} suppressions")
    print(f"views built once per agreement: {setup:.1f} ms")
    print(f"DuckDB direct (baseline): median {baseline:.1f} ms")
    print(f"gateway (check, rewrite, run, disclosure control): median {through:.1f} ms")
    print(f"ratio: {through / baseline:.2f}x (target <= 2.00x)")


if __name__ == "__main__":
    main()
