"""Query gateway latency against plain DuckDB, and the utility of its differentially private
answers (issues 6 and 13).

Writes a pooled ``episode``-shaped table of ``--rows`` rows (default 1,000,000; one row per
patient) from three institutions as Parquet in a temporary directory, then times the same
grouped aggregate

- through the gateway library (``sandbox.gateway.dp.answer``): check (sqlglot), public key
  domains and bounds, locked-down DuckDB views, the bounded statistics, OpenDP's noise, the
  institution rules on noisy counts;
- straight on DuckDB: the researcher's query over ``read_parquet`` of the same files;

- with ``--http`` also through the hub: ``POST /api/v1/sandbox/query`` on a real
  ``cleanroom`` app served by waitress on loopback (bearer-token sign-in, the policy decision
  per covered table, the pool lookup of the agreement's signing contributors, the gateway,
  the ledger entry), against a throwaway data directory holding the same files as released
  versions under an active agreement (each timed request is a new question, so it is
  computed and paid for, not remembered; a budget large enough for the run);

and prints the medians and the ratios, timed in turns (DuckDB, gateway, HTTP, DuckDB, ...) so
that other work on the machine slows each alike. Target: gateway (over HTTP) ≤ 2× DuckDB.

**Utility** (``--utility``): the median relative error of answered cells at the default
per-answer budget (ε = 1), against the exact answer from plain DuckDB, for cells of at least
50 and at least 200 patients, over ``--trials`` noisy answers of counts, means and
proportions grouped by public keys. Goals: ≤ 10 % and ≤ 3 %.

**Rate check** (``--rate``): one sandbox rate check as the hub now makes it (one
conditional ``UPDATE`` of the researcher's counter row, committed) against the check it
replaced (counting the researcher's ledger rows of the last minute), on a SQLite database
(or ``--database-url``) whose ledger holds ``--ledger`` entries of 50 researchers.

**Notebooks** (``--notebooks``): seeds the demo consortium in a temporary directory, serves
it, runs the three example notebooks as the demo researcher and prints the ε they spend under
each agreement (the default yearly budget is 20).

Run: ``.venv/bin/python benchmarks/gateway.py [--rows 1000000] [--repeat 21] [--http]
[--utility --trials 30] [--rate [--ledger 20000] [--database-url URL]] [--notebooks]``;
``--rows 360`` is the demo consortium's size.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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
from sandbox.gateway import Gateway, Source, dp  # noqa: E402

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
                "indication": rng.choice(
                    ["ALL", "LBCL", "FL", "MCL", "MM", "CLL"], n, p=[0.3, 0.3, 0.1, 0.1, 0.1, 0.1]
                ),
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


def medians_ms(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median wall time of each run, taken in turns (a, b, c, a, b, c, ...) so that other
    work on the machine slows every contender alike."""
    for run in runs.values():
        run()  # warm the file cache, DuckDB's metadata cache and the gateway's caches
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1000 for name, t in times.items()}


@contextlib.contextmanager
def http_route(tmp: Path, sources: list[Source], threads: int) -> Iterator[Callable[[], None]]:
    """The same query through the hub's HTTP route, on a throwaway consortium: yields a
    function that asks it once."""
    import io
    import socket
    import textwrap
    import threading

    import requests
    from waitress import create_server

    from hub import create_app, schema
    from hub.accounts import services as accounts
    from hub.agreements import services as agreements
    from hub.db import Database
    from hub.ingest.models import DatasetVersion
    from hub.settings import load_settings
    from hub.storage import get_storage

    settings = load_settings(
        {
            "data_dir": str(tmp / "hub"),
            "gateway_rate_per_minute": 100_000,
            # DuckDB as the library run has it: the same threads and memory limit.
            "gateway_threads": threads,
            "gateway_memory_limit": Gateway().memory_limit,
            "embedded_worker": False,
            "log_level": "WARNING",
        },
        environ={},
    )
    database = Database(settings.effective_database_url)
    schema.upgrade(database)
    storage = get_storage(settings)
    slugs = [s.institution.replace("_", "-") for s in sources]
    with database.session() as s:
        for slug in slugs:
            accounts.create_institution(s, slug, slug, "hospital", actor="bench")
            s.flush()
            accounts.create_user(
                s,
                f"{slug}-admin",
                "bench-password-1234",
                "contributor_admin",
                institution=slug,
                actor="bench",
            )
        accounts.create_user(
            s, "rosa", "bench-password-1234", "researcher", institution=slugs[0], actor="bench"
        )
        accounts.create_user(
            s, "sam", "bench-password-1234", "steward", institution=None, actor="bench"
        )
    with database.session() as s:
        for slug, source in zip(slugs, sources, strict=True):
            key = f"pool/episode/institution={slug}/version=1/part-0.parquet"
            with open(source.path, "rb") as fh:
                storage.put(key, io.BytesIO(fh.read()))
            s.add(
                DatasetVersion(
                    institution_id=accounts.get_institution(s, slug).id,
                    cdm_table="episode",
                    version=1,
                    state="released",
                    filename="e.parquet",
                    created_by="bench",
                    pool_key=key,
                )
            )
    parties = "".join(
        f"  - institution: {slug}\n    roles: [contributor, recipient]\n" for slug in slugs
    )
    text = (
        textwrap.dedent("""\
        id: bench
        title: Benchmark
        purpose:
          code: process_comparability
          text: Benchmark the gateway.
        tables:
          episode: all
        researchers: [rosa]
        disclosure:
          epsilon_total: 100
        valid_from: 2026-01-01
        valid_until: 2099-12-31
        parties:
        """)
        + parties
    )
    with database.session() as s:
        stored = agreements.create(s, text, actor="user:sam")
        agreements.transition(s, stored, "submit", actor="user:sam")
        for slug in slugs:
            agreements.sign(
                s, stored, accounts.get_user(s, f"{slug}-admin"), actor=f"user:{slug}-admin"
            )
        token = accounts.create_token(
            s, settings, accounts.get_user(s, "rosa"), "bench", ["sandbox"], actor="bench"
        ).secret

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = create_server(create_app(settings), host="127.0.0.1", port=port, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    session = requests.Session()
    url = f"http://127.0.0.1:{port}/api/v1/sandbox/query"
    headers = {"Authorization": f"Bearer {token}"}
    asked = iter(range(1_000_000))

    def ask() -> None:
        # A new question each time (a slightly different ε), so it is computed and paid
        # (0.01 each: the budget of 100 pays for 10,000 of them).
        body = {"agreement": "bench", "sql": QUERY, "epsilon": 0.01 - next(asked) * 1e-9}
        resp = session.post(url, json=body, headers=headers)
        resp.raise_for_status()

    try:
        yield ask
    finally:
        session.close()  # the keep-alive connection ends before the server does
        server.close()


UTILITY_QUERIES = (  # (query, number of keys)
    ("SELECT indication, COUNT(*) FROM episode GROUP BY indication", 1),
    ("SELECT indication, sex, COUNT(*) FROM episode GROUP BY indication, sex", 2),
    ("SELECT indication, AVG(CLAMP(weight_kg, 30, 150)) FROM episode GROUP BY indication", 1),
    ("SELECT sex, AVG(age) FROM episode GROUP BY sex", 1),
    ("SELECT indication, AVG(CAST(bridging AS INTEGER)) FROM episode GROUP BY indication", 1),
)
"""Counts, means and proportions grouped by public keys; the truth per cell is the same
query on plain DuckDB (with the same clamp), with the cell's patient count beside it."""


def utility(
    gateway: Gateway, views: object, paths: list[str], trials: int
) -> dict[int, tuple[float, int]]:
    """Median relative error of answered cells (at least 50 / 200 patients) over ``trials``
    noisy answers of each utility query, and how many cell answers it rests on."""
    raw = duckdb.connect()
    errors: dict[int, list[float]] = {50: [], 200: []}
    for query, keys in UTILITY_QUERIES:
        exact_sql = (
            query.replace("FROM episode", f"FROM read_parquet({paths!r})")
            .replace("CLAMP(weight_kg, 30, 150)", "LEAST(GREATEST(weight_kg, 30), 150)")
            .replace(" FROM", ", COUNT(*) AS __n FROM", 1)
        )
        truth = {tuple(r[:keys]): (r[keys], r[-1]) for r in raw.execute(exact_sql).fetchall()}
        for _ in range(trials):
            answer = dp.answer(gateway, views, Disclosure(), query)  # type: ignore[arg-type]
            for row in answer.rows:
                found = truth.get(tuple(row[:keys]))
                value = row[keys]
                if found is None or value is None or not found[0]:
                    continue
                exact, patients = found
                for floor, bucket in errors.items():
                    if patients >= floor:
                        bucket.append(abs(value - exact) / abs(exact))
    return {f: (statistics.median(e) if e else float("nan"), len(e)) for f, e in errors.items()}


def notebook_budget() -> dict[str, dict[str, float]]:
    """Seed the demo consortium, serve it, run the three example notebooks as its researcher;
    the budget each agreement's answers spent."""
    import os
    import subprocess

    import nbformat
    import requests
    from nbclient import NotebookClient

    sys.path.insert(0, str(_HERE.parent))
    from tests.serving import cleanroom_command, free_port, healthy, server_env, stop

    notebooks = sorted((_HERE.parent / "sandbox" / "notebooks").glob("*.ipynb"))
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        data.mkdir(mode=0o700)
        port = free_port()
        env = server_env(data, port)
        command = cleanroom_command()
        subprocess.run([*command, "demo", "seed"], env=env, check=True, capture_output=True)  # noqa: S603
        server = subprocess.Popen(  # noqa: S603
            [*command, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while not healthy(url):
                if time.monotonic() > deadline:
                    raise SystemExit("the demo server did not start")
                time.sleep(0.5)
            token = (data / "demo-researcher-token").read_text().strip()
            saved = {k: v for k, v in os.environ.items() if k.startswith("CLEANROOM_")}
            for name in saved:
                del os.environ[name]
            os.environ.update({"CLEANROOM_GATEWAY_URL": url, "CLEANROOM_TOKEN": token})
            try:
                for path in notebooks:
                    notebook = nbformat.read(path, as_version=4)
                    NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
            finally:
                for name in ("CLEANROOM_GATEWAY_URL", "CLEANROOM_TOKEN"):
                    os.environ.pop(name, None)
                os.environ.update(saved)
            spent = {}
            for slug in ("demo-mfp", "demo-v2v"):
                body = requests.get(
                    f"{url}/api/v1/sandbox/budget",
                    params={"agreement": slug},
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=30,
                ).json()
                spent[slug] = {"spent": body["epsilon_spent"], "total": body["epsilon_total"]}
            return spent
        finally:
            stop(server)


def rate_check(tmp: Path, repeat: int, ledger: int, url: str | None) -> dict[str, float]:
    """Median ms of one rate check, new and old, timed in turns (see the module's doc)."""
    from datetime import timedelta

    from sqlalchemy import func, insert, select

    from hub import schema
    from hub.audit.models import AuditEntry
    from hub.audit.services import record
    from hub.db import Database, utcnow
    from hub.gateway.services import check_rate
    from hub.settings import load_settings

    values: dict[str, object] = {"data_dir": str(tmp / "rate"), "log_level": "WARNING"}
    if url:
        values["database_url"] = url
    settings = load_settings({**values, "gateway_rate_per_minute": 10**9}, environ={})
    database = Database(settings.effective_database_url)
    schema.upgrade(database)
    with database.session() as s:
        record(s, actor="bench", action="bench.start", target="bench", detail={})
        at = utcnow().isoformat(timespec="microseconds").replace("+00:00", "Z")
        first = int(s.scalar(select(func.max(AuditEntry.id))) or 0) + 1
        # The ledger's columns as the old check reads them (the chain is not what is timed).
        s.execute(
            insert(AuditEntry),
            [
                {
                    "id": first + n,
                    "at": at,
                    "actor": f"user:r{n % 50}",
                    "action": "sandbox.query",
                    "target": "agreement:bench",
                    "detail": "{}",
                    "prev_hash": "0" * 64,
                    "entry_hash": f"{n:064x}",
                }
                for n in range(ledger)
            ],
        )

    def old() -> None:
        with database.session() as s:
            since = (utcnow() - timedelta(minutes=1)).isoformat(timespec="microseconds")
            s.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(
                    AuditEntry.actor == "user:r7",
                    AuditEntry.action.startswith("sandbox."),
                    AuditEntry.at >= since.replace("+00:00", "Z"),
                )
            )

    def new() -> None:
        with database.session() as s:
            check_rate(s, settings, "user:r7")

    try:
        return medians_ms({"old": old, "new": new}, repeat)
    finally:
        database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--http", action="store_true", help="Also time the hub's HTTP route.")
    parser.add_argument("--utility", action="store_true", help="Also measure the DP error.")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument(
        "--notebooks", action="store_true", help="Also the ε the example notebooks spend."
    )
    parser.add_argument("--rate", action="store_true", help="Also time one rate check.")
    parser.add_argument("--ledger", type=int, default=20_000)
    parser.add_argument("--database-url", default=None, help="For --rate (default: SQLite).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        sources = write_pool(Path(tmp), args.rows)
        paths = [s.path for s in sources]

        raw = duckdb.connect(config={"threads": args.threads})
        raw_sql = QUERY.replace("FROM episode", f"FROM read_parquet({paths!r})")

        gateway = Gateway(threads=args.threads, timeout=60)
        stack.callback(gateway.close)
        disclosure = Disclosure()
        start = time.perf_counter()
        views = gateway.views("bench", {"episode": sources})
        setup = (time.perf_counter() - start) * 1000
        answer = dp.answer(gateway, views, disclosure, QUERY)
        runs: dict[str, Callable[[], object]] = {
            "duckdb": lambda: raw.execute(raw_sql).fetchall(),
            "gateway": lambda: dp.answer(gateway, views, disclosure, QUERY),
        }
        if args.http:
            runs["http"] = stack.enter_context(http_route(Path(tmp), sources, args.threads))
        median = medians_ms(runs, args.repeat)
        errors = utility(gateway, views, paths, args.trials) if args.utility else None
        rate = (
            rate_check(Path(tmp), args.repeat, args.ledger, args.database_url)
            if args.rate
            else None
        )
    baseline, through, over_http = median["duckdb"], median["gateway"], median.get("http")

    print(f"rows: {args.rows:,} in 3 Parquet files; threads: {args.threads}")
    print(f"query: {QUERY}")
    print(f"answer: {len(answer.rows)} cells, {len(answer.suppressed)} withheld")
    print(f"views built once per agreement: {setup:.1f} ms")
    print(f"DuckDB direct (baseline): median {baseline:.1f} ms")
    print(f"gateway (check, domains, bounded statistics, noise, rules): median {through:.1f} ms")
    print(f"ratio: {through / baseline:.2f}x")
    if over_http is not None:
        print(f"hub HTTP route (token, policy, pool, gateway, ledger): median {over_http:.1f} ms")
        print(f"ratio over HTTP: {over_http / baseline:.2f}x (target <= 2.00x)")
    if rate is not None:
        print(
            f"rate check, counted in the ledger ({args.ledger:,} entries; baseline): "
            f"median {rate['old']:.2f} ms"
        )
        print(
            f"rate check, one conditional UPDATE, committed: median {rate['new']:.2f} ms "
            f"({rate['new'] / rate['old']:.2f}x)"
        )
    if args.notebooks:
        for slug, budget in notebook_budget().items():
            print(
                f"example notebooks: ε {budget['spent']:g} of {budget['total']:g} spent "
                f"under {slug}"
            )
    if errors is not None:
        goals = {50: 0.10, 200: 0.03}
        for floor, (error, cells) in errors.items():
            print(
                f"utility: cells of >= {floor} patients: median relative error "
                f"{error:.2%} over {cells:,} answered cells at ε = 1 (goal <= {goals[floor]:.0%})"
            )


if __name__ == "__main__":
    main()
