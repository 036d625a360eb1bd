"""LocalStorage.put against a plain copy-and-hash of the same bytes.

Prints the time of each and the ratio. The baseline is what any upload must at least do:
read the stream in chunks, hash it and write it to disk.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

from hub.storage import LocalStorage


class Source(io.RawIOBase):
    """A stream of ``size`` pseudo-random bytes that is never whole in memory."""

    def __init__(self, size: int):
        self.remaining = size
        self.block = os.urandom(1 << 20)

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buf), self.remaining, len(self.block))
        buf[:n] = self.block[:n]
        self.remaining -= n
        return n


def baseline(size: int, folder: Path) -> float:
    start = time.perf_counter()
    digest = hashlib.sha256()
    src = io.BufferedReader(Source(size), buffer_size=1 << 20)
    with open(folder / "baseline.bin", "wb") as out:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return time.perf_counter() - start


def storage_put(size: int, folder: Path) -> tuple[float, float]:
    store = LocalStorage(folder / "objects")
    start = time.perf_counter()
    store.put("quarantine/bench/upload.bin", io.BufferedReader(Source(size), 1 << 20))
    put = time.perf_counter() - start
    start = time.perf_counter()
    total = sum(len(c) for c in store.iter_chunks("quarantine/bench/upload.bin"))
    read = time.perf_counter() - start
    assert total == size
    return put, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.mib << 20
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = min(baseline(size, folder) for _ in range(args.repeat))
        puts, reads = zip(*(storage_put(size, folder) for _ in range(args.repeat)), strict=True)
        shutil.rmtree(folder / "objects", ignore_errors=True)
    put, read = min(puts), min(reads)
    print(f"payload: {args.mib} MiB, best of {args.repeat}")
    print(f"baseline copy+sha256+fsync: {base:.3f} s ({args.mib / base:.0f} MiB/s)")
    print(f"LocalStorage.put:           {put:.3f} s ({args.mib / put:.0f} MiB/s)")
    print(f"LocalStorage.iter_chunks:   {read:.3f} s ({args.mib / read:.0f} MiB/s)")
    print(f"ratio put/baseline: {put / base:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
