"""Data frames as Parquet objects in the store: how the pool, its staged versions and the
synthetic zone hold tables."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hub.storage.base import Storage


def put_frame(storage: Storage, key: str, frame: pd.DataFrame) -> None:
    """Write ``frame`` (without its index) as zstd Parquet under ``key``, through a
    temporary file so that a large frame is not held twice in memory."""
    with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
        pq.write_table(
            pa.Table.from_pandas(frame, preserve_index=False), tmp.name, compression="zstd"
        )
        with open(tmp.name, "rb") as fh:
            storage.put(key, fh)


def read_frames(storage: Storage, keys: Sequence[str]) -> pd.DataFrame:
    """The Parquet objects under ``keys`` as one frame (empty without keys)."""
    frames = []
    for key in keys:
        with storage.open(key) as fh:
            frames.append(pq.read_table(pa.BufferReader(fh.read())).to_pandas())
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
