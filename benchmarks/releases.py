"""Page load of a release request for its output checker (issue 15): a reviewer decides a
typical request (three tables and one model) from one page without running anything; the
page should load in under a second on the demo pool.

Seeds the demo consortium into a temporary data directory as ``cleanroom demo seed`` does
(institutions, users, the two active agreements, each institution's files taken through the
real pipeline), names a contributor output checker, and has the demo researcher ask, under
``demo-mfp``, for

- lots per platform with their mean viability (``batch``),
- collections fresh or cryopreserved with their mean CD3 yield (``collection``),
- episodes per indication with their mean prior lines of therapy (``episode``),
- a linear fit of viability on culture days (``batch``).

Then times ``GET /releases/<id>`` as the output checker through the Flask test client
(``--repeat`` times after one warm-up load; median and p95), and, in turns with it, the
baseline: plain DuckDB computing the same four outputs over ``read_parquet`` of the pool's
files, which is what a reviewer would otherwise run. Prints both, their ratio and the page's
median against the 1 s target. ``--profile`` adds where the page's time goes (cProfile).

Run: ``.venv/bin/python benchmarks/releases.py [--patients 120] [--repeat 50] [--profile]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# This folder holds a script named policies.py, which would shadow the `policies` package
# that contracts imports; run from the repository with the folder off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import duckdb  # noqa: E402

AGREEMENT = "demo-mfp"
CHECKER = "aurelia-data"  # any user may be named output checker; a contributor here
OUTPUTS = [
    {
        "sql": "SELECT platform, COUNT(*) AS n, AVG(viability) AS mean_viability "
        "FROM batch GROUP BY platform",
        "purpose": "Table 1: lots per platform",
    },
    {
        "sql": "SELECT fresh_or_cryo, COUNT(*) AS n, AVG(cd3_yield) AS mean_cd3_yield "
        "FROM collection GROUP BY fresh_or_cryo",
        "purpose": "Table 2: collections, fresh or cryopreserved",
    },
    {
        "sql": "SELECT indication, COUNT(*) AS n, AVG(prior_lines) AS mean_prior_lines "
        "FROM episode GROUP BY indication",
        "purpose": "Table 3: episodes per indication",
    },
    {
        "kind": "fit",
        "table": "batch",
        "model": "linear",
        "features": ["culture_days"],
        "target": "viability",
        "purpose": "Table 4: viability by culture days",
    },
]
# What a reviewer would run instead: the same outputs, straight on the pool's files.
BASELINE = [
    "SELECT platform, COUNT(*), AVG(viability) FROM {batch} GROUP BY platform",
    "SELECT fresh_or_cryo, COUNT(*), AVG(cd3_yield) FROM {collection} GROUP BY fresh_or_cryo",
    "SELECT indication, COUNT(*), AVG(prior_lines) FROM {episode} GROUP BY indication",
    "SELECT REGR_INTERCEPT(viability, culture_days), REGR_SLOPE(viability, culture_days), "
    "REGR_R2(viability, culture_days), REGR_COUNT(viability, culture_days) FROM {batch}",
]
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def seed(data_dir: Path, patients: int) -> tuple[object, str, dict[str, str]]:
    """The demo consortium in ``data_dir``, as ``cleanroom demo seed`` makes it: the hub
    context, the researcher's sandbox token and the logins."""
    from hub import demo, schema
    from hub.command import Hub

    hub = Hub()
    hub.override(data_dir=str(data_dir), log_level="WARNING", embedded_worker=False)
    schema.upgrade(hub.database)
    passwords = demo.seed(hub)
    demo.seed_agreement(hub)
    lines = demo.seed_data(hub, patients=patients)
    unreleased = [line for line in lines if " released " not in line]
    if unreleased:
        raise SystemExit("the demo seed left versions unreleased:\n" + "\n".join(unreleased))
    return hub, demo.researcher_token(hub), passwords


def pool_files(data_dir: Path) -> dict[str, str]:
    """Each table's pooled Parquet files, as a DuckDB ``read_parquet`` of a glob."""
    found = {}
    for table in ("batch", "collection", "episode"):
        paths = sorted(str(p) for p in data_dir.rglob(f"pool/{table}/**/*.parquet"))
        if not paths:
            raise SystemExit(f"no pooled {table} files under the data directory")
        found[table] = f"read_parquet({paths!r}, union_by_name = true)"
    return found


def login(client: object, username: str, password: str) -> None:
    page = client.get("/login").get_data(as_text=True)  # type: ignore[attr-defined]
    token = CSRF_RE.search(page)
    assert token, "no sign-in form"
    resp = client.post(  # type: ignore[attr-defined]
        "/login", data={"username": username, "password": password, "csrf_token": token[1]}
    )
    if resp.status_code != 302 or "/login" in resp.headers.get("Location", ""):
        raise SystemExit(f"{username} could not sign in ({resp.status_code})")


def timed(runs: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Wall times (ms) of each run, taken in turns so other work on the machine slows each
    alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=120, help="Per institution (demo: 120).")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--profile", action="store_true", help="Where the page's time goes.")
    args = parser.parse_args()
    for name in [k for k in os.environ if k.startswith("CLEANROOM_")]:
        del os.environ[name]  # the throwaway data directory's settings only

    from hub import create_app
    from hub.accounts import services as accounts

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        data_dir.mkdir(mode=0o700)
        start = time.perf_counter()
        hub, token, passwords = seed(data_dir, args.patients)
        seeded = time.perf_counter() - start
        with hub.database.session() as s:  # type: ignore[attr-defined]
            accounts.get_user(s, CHECKER).is_output_checker = True
        app = create_app(hub.settings)  # type: ignore[attr-defined]
        app.config["TESTING"] = True

        researcher = app.test_client()
        asked = researcher.post(
            "/api/v1/releases",
            json={"agreement": AGREEMENT, "title": "Paper 1", "outputs": OUTPUTS},
            headers={"Authorization": f"Bearer {token}"},
        )
        if asked.status_code != 201:
            raise SystemExit(f"the request was refused: {asked.get_json()}")
        request = asked.get_json()
        refused = [o for o in request["outputs"] if not o["computed"]]
        if refused:
            raise SystemExit(f"outputs not computed: {refused}")
        page = f"/releases/{request['id']}"

        checker = app.test_client()
        login(checker, CHECKER, passwords[CHECKER])

        def load() -> None:
            resp = checker.get(page)
            if resp.status_code != 200:
                raise SystemExit(f"{page}: {resp.status_code}")
            resp.get_data()

        files = pool_files(data_dir)
        raw = duckdb.connect()
        queries = [q.format(**files) for q in BASELINE]

        def baseline() -> None:
            for sql in queries:
                raw.execute(sql).fetchall()

        start = time.perf_counter()
        load()
        cold = (time.perf_counter() - start) * 1000
        body = checker.get(page).get_data(as_text=True)
        # The checker sees each output's numbers: a table of rows or of coefficients.
        if body.count("<table") < 4 or "Not computed" in body:
            raise SystemExit("the page does not show the four outputs' numbers")
        baseline()  # warm DuckDB's metadata and the file cache
        times = timed({"baseline": baseline, "page": load}, args.repeat)

        profile = None
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(args.repeat):
                load()
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out).sort_stats("cumulative")
            stats.print_stats(30)
            profile = out.getvalue()

        app.extensions["cleanroom.policy"].close()
        app.extensions["cleanroom.db"].dispose()
        hub.database.dispose()  # type: ignore[attr-defined]

    page_ms, base_ms = statistics.median(times["page"]), statistics.median(times["baseline"])
    print(f"demo pool: {args.patients} patients per institution, seeded in {seeded:.0f} s")
    print(f"request {request['id']} under {AGREEMENT}: 3 tables and 1 linear fit")
    print(f"GET {page} as output checker {CHECKER}: {len(body):,} bytes")
    print(f"first load (cold): {cold:.1f} ms")
    print(f"page ({args.repeat} loads): median {page_ms:.1f} ms, p95 {p95(times['page']):.1f} ms")
    print(
        f"DuckDB computing the same four outputs on the pool files (baseline): median "
        f"{base_ms:.1f} ms, p95 {p95(times['baseline']):.1f} ms"
    )
    print(f"ratio page / baseline: {page_ms / base_ms:.2f}x")
    print(
        f"page median against the 1 s target: {page_ms / 1000:.3f}x "
        f"({'met' if p95(times['page']) < 1000 else 'NOT met'} at p95)"
    )
    if profile:
        print(profile)


if __name__ == "__main__":
    main()
