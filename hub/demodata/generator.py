"""Synthetic CGT process data, written the way real sites keep it.

Each institution gets the seven CDM tables with realistic distributions and correlations
(after the project's CGT process-data reference: failure risk rising with bendamustine,
low platelets and a low CD4:CD8 ratio; CD3 yield tracking the pre-collection CD3 count;
vein-to-vein medians per product; custody temperatures with occasional excursions;
deviations with free text that names people) and then its own habits: column names drawn
from the CDM synonyms, units, date formats, file type, and the direct identifiers real
exports carry. The mapper, the validators and de-identification are exercised against
these files, so the quirks are the point; every quirk is one the CDM declares (a synonym,
an alternate unit) so it can be undone.

Output is deterministic for a seed: numpy's Generator and Faker are both seeded per
institution. Identifiers that must never be real use reserved ranges: NHS numbers from the
999 test range, US SSNs from the never-issued 9xx area, UK phone numbers from Ofcom's drama
range (07700 900xxx), US ones from 555-01xx, e-mail addresses at example.* domains.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from hub.demodata.simulator import generate_frames
from hub.demodata.site_formats import (
    TABLES,
    Institution,
    SiteFormat,
    data_manager,
    list_institutions,
    site_format,
    to_site_frame,
    write_csv,
    write_parquet,
    write_xlsx,
)


def generate(
    out: Path,
    institutions: int = 3,
    patients: int = 200,
    seed: int = 7,
    progress: Callable[[Institution, SiteFormat, dict[str, pd.DataFrame], list[Path]], None]
    | None = None,
) -> list[Path]:
    """Write every institution's files under ``out/<slug>/`` and return their paths."""
    out = Path(out)
    frames = generate_frames(institutions, patients, seed)
    written: list[Path] = []
    for index, inst in enumerate(list_institutions(institutions)):
        fmt = site_format(index)
        folder = out / inst.slug
        folder.mkdir(parents=True, exist_ok=True)
        tables = frames[inst.slug]
        site = {t: to_site_frame(tables[t], t, fmt) for t in TABLES}
        if fmt.key == "csv":
            paths = [write_csv(site[t], folder / fmt.files[t]) for t in TABLES]
        elif fmt.key == "xlsx":
            manager = data_manager(inst, fmt, seed)
            path = folder / f"{inst.slug}_{fmt.workbook}"
            paths = [write_xlsx(site, inst, fmt, tables, manager, path)]
        else:
            paths = [write_parquet(site[t], t, fmt, folder / fmt.files[t]) for t in TABLES]
        written += paths
        if progress is not None:
            progress(inst, fmt, tables, paths)
    return written
