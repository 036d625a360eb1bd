"""Peak RSS of the web process while a large CSV is uploaded through the real HTTP API.

Starts a real ``cleanroom serve`` in a temporary data directory (``db upgrade``, an
institution, a contributor and an upload token made with the CLI first) on a free loopback
port, with ``CLEANROOM_EMBEDDED_WORKER=false`` so that no parsing runs in the web process,
writes a CSV of ``--mb`` MiB to disk (streamed, never whole in memory) and posts it with
``requests.post(..., data=<file object>)`` to ``POST /api/v1/uploads``. A thread reads the
server's VmRSS from ``/proc/<pid>/status`` every 50 ms; VmHWM is reset before the upload
(``/proc/<pid>/clear_refs``) where the kernel allows it and read at the end.

Baselines, in the same process: the idle server's RSS, and the same ``requests.post`` to a
trivial in-process ``http.server`` that discards the body (client and transport cost).
The issue's target is a peak RSS below 300 MB during the upload.
"""

from __future__ import annotations

import argparse
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

# The server helpers are shared with the end-to-end tests (run from the repository).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.serving import cleanroom_command, free_port, server_env, stop  # noqa: E402

MIB = 1 << 20
TARGET_BYTES = 300 * 1000 * 1000  # 300 MB
HEALTH_DEADLINE = 60.0

HEADER = (
    "Lot No.,Patient ID,Source DIN,ISBT Product Code,Manufacturing Site,Mfg Model,"
    "Culture Start,QA Release,Expiry Date,Lot Status,Mfg Outcome,Days in Culture,MOI,"
    "Fold Expansion,Viability (%),CAR+ (%),VCN (copies/cell),CD3+ (%),Final CD4/CD8,"
    "TVC (x10^9),QP Name,Batch Record Rev,Incubator,Media Lot,Vector Lot,Cryobag Type,"
    "QC Analyst,Shift,Deviation Ref,Internal Comments\n"
)


# The CSV -----------------------------------------------------------------------------------


def _tails(count: int, seed: int = 1) -> list[str]:
    """``count`` realistic rows of the ``batch`` table without their lot number."""
    rng = random.Random(seed)
    sites = ["Leiden GMP Unit", "Hopital Saint-Louis CTU", "Charite CAR-T Lab"]
    comments = ["", "", "", '"harvest delayed 2 h, QA informed"', "slow expansion"]
    out = []
    for _ in range(count):
        start = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        release = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        expiry = f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/2025"
        cells = [
            f"COI-{rng.randrange(400_000):06d}",
            f"W1234 24 {rng.randrange(10**6):06d}",
            rng.choice(["S2080V00", "S2081V00"]),
            rng.choice(sites),
            rng.choice(["central", "point_of_care"]),
            start,
            release,
            expiry,
            rng.choice(["available", "applied", "processed"]),
            rng.choice(["conforming", "non_conforming", "failed"]),
            str(rng.randint(7, 14)),
            f"{rng.uniform(1, 5):.1f}",
            f"{rng.uniform(10, 200):.1f}",
            f"{rng.uniform(70, 99.9):.1f}",
            f"{rng.uniform(10, 80):.1f}",
            f"{rng.uniform(0.5, 5):.2f}",
            f"{rng.uniform(85, 99.9):.1f}",
            f"{rng.uniform(0.2, 5):.2f}",
            f"{rng.uniform(0.5, 20):.2f}",
            rng.choice(["A. Jansen", "M. Dubois", "K. Schmidt"]),
            "BR-0012 rev 3",
            f"INC-{rng.randint(1, 12):02d}",
            f"ML2403-{rng.randrange(900):03d}",
            f"VL-23-{rng.randrange(120):04d}",
            rng.choice(["CryoMACS 250", "CellSeal 20 mL"]),
            rng.choice(["AJ", "MD", "KS"]),
            rng.choice(["day", "night"]),
            rng.choice(["", "", "DEV-2024-0117"]),
            rng.choice(comments),
        ]
        out.append(",".join(cells))
    return out


def generate(path: Path, size: int) -> int:
    """Write a CSV of exactly ``size`` bytes (the last row's comment is padded), a block of
    rows at a time; return the number of data rows."""
    tails = _tails(4096)
    written = len(HEADER)
    row = 0
    with open(path, "w", encoding="ascii", newline="") as out:
        out.write(HEADER)
        while True:
            lines = [f"CT24-{row + i:09d},{tails[(row + i) % 4096]}\n" for i in range(10_000)]
            block = "".join(lines)
            if written + len(block) > size - 4096:
                break
            out.write(block)
            written += len(block)
            row += len(lines)
        for line in lines:  # row by row up to the last one
            if written + len(line) > size - 1024:
                break
            out.write(line)
            written += len(line)
            row += 1
        last = f"CT24-{row:09d},{tails[row % 4096].rsplit(',', 1)[0]},"
        out.write(last + "x" * (size - written - len(last) - 1) + "\n")
        row += 1
    assert path.stat().st_size == size
    return row


# Memory of a process -----------------------------------------------------------------------


def status_kib(pid: int | str, field: str) -> int:
    """A ``kB`` field (VmRSS, VmHWM) of ``/proc/<pid>/status``."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_hwm(pid: int | str) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class Sampler:
    """VmRSS of ``pid`` every ``interval`` seconds in a thread: peak and sample count."""

    def __init__(self, pid: int | str, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))
                self.samples += 1
            except (OSError, KeyError):
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def mib(kib: float) -> str:
    return f"{kib / 1024:,.0f} MiB"


# Baseline: a server that discards the body -------------------------------------------------


class Discard(BaseHTTPRequestHandler):
    """Reads the request body in 1 MiB pieces, keeps nothing, answers 200."""

    def do_POST(self) -> None:  # noqa: N802 - the http.server naming
        left = int(self.headers.get("Content-Length", "0"))
        while left > 0:
            chunk = self.rfile.read(min(left, MIB))
            if not chunk:
                break
            left -= len(chunk)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_: Any) -> None:
        pass


def baseline_post(path: Path) -> tuple[float, int]:
    """Time of ``requests.post`` of the file to an in-process discarding server, and this
    process's peak VmRSS meanwhile (KiB)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Discard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/upload"
        with Sampler("self") as sampler, open(path, "rb") as fh:
            start = time.perf_counter()
            resp = requests.post(url, data=fh, timeout=600)
            took = time.perf_counter() - start
        resp.raise_for_status()
        return took, sampler.peak_kib
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# The real server ---------------------------------------------------------------------------


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*cleanroom_command(), *args], env=env, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(f"cleanroom {args[0]} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def setup(env: dict[str, str]) -> tuple[str, str]:
    """Schema, an institution, a contributor and an upload token; returns the token and the
    contributor's password (for the portal form)."""
    run_cli(env, "db", "upgrade")
    run_cli(env, "institution", "add", "bench", "--name", "Bench Site", "--kind", "manufacturer")
    password = secrets.token_urlsafe(18)
    run_cli(
        env, "user", "add", "bench-uploader", "--role", "contributor",
        "--institution", "bench", "--password", password,
    )  # fmt: skip
    out = run_cli(env, "token", "create", "bench-uploader", "--scope", "upload")
    return out.strip().splitlines()[0], password


def _csrf(page: str) -> str:
    import re

    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    if not found:
        raise RuntimeError("no CSRF token in the page")
    return found.group(1)


def portal_upload(url: str, password: str, path: Path) -> requests.Response:
    """The portal's form, as a browser sends it: sign in, then a multipart POST. (requests
    builds the multipart body in this process's memory; the server's is what is measured.)"""
    session = requests.Session()
    token = _csrf(session.get(f"{url}/login", timeout=30).text)
    session.post(
        f"{url}/login",
        data={"username": "bench-uploader", "password": password, "csrf_token": token},
        timeout=30,
    )
    token = _csrf(session.get(f"{url}/datasets", timeout=30).text)
    with open(path, "rb") as fh:
        resp = session.post(
            f"{url}/datasets",
            data={"csrf_token": token, "table": "batch"},
            files={"file": (path.name, fh, "text/csv")},
            allow_redirects=False,
            timeout=1800,
        )
    if resp.status_code == 303 and "/datasets/" in resp.headers.get("Location", ""):
        resp.status_code = 201  # the portal's "created, go and see it"
    return resp


def wait_healthy(url: str, proc: subprocess.Popen[bytes], errors: Path) -> None:
    deadline = time.monotonic() + HEALTH_DEADLINE
    while True:
        try:
            if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"cleanroom serve did not start:\n{errors.read_text()}")
        time.sleep(0.1)


def upload(url: str, token: str, path: Path) -> requests.Response:
    with open(path, "rb") as fh:
        return requests.post(
            f"{url}/api/v1/uploads",
            params={"table": "batch", "filename": path.name},
            data=fh,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/octet-stream",
            },
            timeout=1800,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mb", type=int, default=1024, help="size of the CSV in MiB")
    parser.add_argument("--interval", type=float, default=0.05, help="RSS sampling period (s)")
    parser.add_argument(
        "--portal",
        action="store_true",
        help="upload through the portal's form instead of the JSON API",
    )
    args = parser.parse_args()
    size = args.mb * MIB
    tmp = Path(tempfile.mkdtemp(prefix="cleanroom-upload-bench-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        csv_path = tmp / "batch.csv"
        start = time.perf_counter()
        rows = generate(csv_path, size)
        made = time.perf_counter() - start
        print(f"file: {args.mb:,} MiB ({size:,} bytes), {rows:,} rows x 30 columns")
        print(f"(generated in {made:.1f} s, not timed)")

        took, client_peak = baseline_post(csv_path)
        print(
            f"baseline requests.post to a discarding http.server (same process): {took:.2f} s "
            f"({args.mb / took:,.0f} MiB/s), peak RSS of this process {mib(client_peak)}"
        )

        data_dir = tmp / "data"
        data_dir.mkdir(mode=0o700)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = server_env(
            data_dir, port, embedded_worker="false", max_upload_mb=max(2048, 2 * args.mb)
        )
        token, password = setup(env)
        errors = tmp / "serve.err"
        with open(tmp / "serve.out", "wb") as out, open(errors, "wb") as err:
            proc = subprocess.Popen(
                [*cleanroom_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        wait_healthy(url, proc, errors)
        pid = proc.pid
        started = status_kib(pid, "VmRSS")
        small = tmp / "warmup.csv"
        generate(small, 64 * 1024)
        warm = upload(url, token, small)
        assert warm.status_code == 201, warm.text
        time.sleep(1.0)
        idle = status_kib(pid, "VmRSS")
        print(
            f"idle server RSS: {mib(idle)} after a 64 KiB warm-up upload "
            f"({mib(started)} just after start)"
        )

        reset = reset_hwm(pid)
        error = ""
        with Sampler(pid, args.interval) as sampler:
            start = time.perf_counter()
            try:
                resp: requests.Response | None = (
                    portal_upload(url, password, csv_path)
                    if args.portal
                    else upload(url, token, csv_path)
                )
            except requests.RequestException as exc:
                resp, error = None, f"{type(exc).__name__}: {exc}"
            took = time.perf_counter() - start
        hwm = status_kib(pid, "VmHWM")
        peak = max(sampler.peak_kib, hwm if reset else 0)
        if resp is not None and resp.status_code == 201 and args.portal:
            print(
                f"upload through the portal form: accepted in {took:.2f} s "
                f"({args.mb / took:,.0f} MiB/s), now at {resp.headers['Location']}"
            )
        elif resp is not None and resp.status_code == 201:
            body = resp.json()
            print(
                f"upload: HTTP 201 in {took:.2f} s ({args.mb / took:,.0f} MiB/s); stored "
                f"{body.get('size', '?'):,} bytes as dataset version {body.get('id', '?')}"
            )
        else:
            what = error or f"HTTP {resp.status_code if resp is not None else '?'}"
            text = " ".join(resp.text.split())[:300] if resp is not None else ""
            print(f"upload FAILED after {took:.2f} s: {what}: {text}")
        print(
            f"server peak RSS during upload: {mib(peak)} ({peak * 1024 / 1e6:,.0f} MB; "
            f"{sampler.samples} samples every {args.interval * 1000:.0f} ms, sampled peak "
            f"{mib(sampler.peak_kib)}, VmHWM {mib(hwm)}"
            + (" since reset" if reset else " over the process's life")
            + ")"
        )
        print(f"ratio peak/idle: {peak / idle:.2f}x (peak - idle = {mib(peak - idle)})")
        if resp is None or resp.status_code != 201:
            verdict = "not met (the upload was refused, so nothing was measured)"
        else:
            verdict = "met" if peak * 1024 < TARGET_BYTES else "not met"
        print(f"target: peak RSS < 300 MB during a {args.mb:,} MiB upload: {verdict}")
    finally:
        if proc is not None:
            stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
