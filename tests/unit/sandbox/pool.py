"""A small pooled dataset for gateway tests: four CDM-shaped tables from three institutions
(plus a fourth that never signed), written as Parquet, one file per table and institution.

``SECRET`` describes a singled-out record: the only episode with indication ``SCD``, aged 97,
at ``inst_c``; attacks try to learn its weight."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sandbox.gateway import Source

INSTITUTIONS = ("inst_a", "inst_b", "inst_c")
SECRET = {"coi_id": "c_inst_c_0", "age": 97, "indication": "SCD", "weight_kg": 123.456}


def _episode(rng: np.random.Generator, inst: str, n: int) -> pa.Table:
    ids = [f"c_{inst}_{j}" for j in range(n)]
    indication = rng.choice(["ALL", "LBCL", "MM"], n).tolist()
    age = rng.integers(20, 80, n).tolist()
    weight = np.round(rng.normal(75, 12, n), 3).tolist()
    if inst == "inst_c":
        indication[0], age[0], weight[0] = SECRET["indication"], SECRET["age"], SECRET["weight_kg"]
    return pa.table(
        {
            "coi_id": ids,
            "site": [f"{inst}_site_{j % 2}" for j in range(n)],
            "indication": indication,
            "age": age,
            "sex": rng.choice(["female", "male"], n).tolist(),
            "weight_kg": weight,
            "prior_lines": rng.integers(0, 6, n).tolist(),
            "bridging": (rng.random(n) < 0.4).tolist(),
        }
    )


def make_pool(root: Path, rows: int = 150, seed: int = 7) -> dict[str, list[Source]]:
    """Write the pool under ``root``; return the signing institutions' sources per table."""
    rng = np.random.default_rng(seed)
    sources: dict[str, list[Source]] = {
        "episode": [],
        "collection": [],
        "batch": [],
        "custody_event": [],
    }
    for inst in (*INSTITUTIONS, "inst_unsigned"):
        episode = _episode(rng, inst, rows)
        ids = episode.column("coi_id").to_pylist()
        dins = [f"D{i}" for i in ids]
        collection = pa.table(
            {
                "din": dins,
                "coi_id": ids,
                "cd3_yield": np.round(rng.gamma(4, 2, rows), 3).tolist(),
                "fresh_or_cryo": rng.choice(["fresh", "cryopreserved"], rows).tolist(),
                "complication": (rng.random(rows) < 0.1).tolist(),
            }
        )
        batch = pa.table(
            {
                "lot_id": [f"L{i}" for i in ids],
                "coi_id": ids,
                "din": dins,
                "viability": np.round(rng.normal(88, 5, rows), 2).tolist(),
                "culture_days": rng.integers(10, 30, rows).tolist(),
            }
        )
        custody = pa.table(
            {
                "event_id": [f"E{i}_{e}" for i in ids for e in range(3)],
                "unit_id": [d for d in dins for _ in range(3)],
                "coi_id": [i for i in ids for _ in range(3)],
                "temp_min": np.round(rng.normal(4, 1, rows * 3), 2).tolist(),
                "event": ["collected", "shipped", "received"] * rows,
            }
        )
        for name, table in (
            ("episode", episode),
            ("collection", collection),
            ("batch", batch),
            ("custody_event", custody),
        ):
            folder = root / name / inst
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / "v1.parquet"
            pq.write_table(table, path)
            if inst != "inst_unsigned":
                sources[name].append(Source(str(path), inst))
    return sources
