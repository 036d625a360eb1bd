"""Synthetic CGT process data for demos and tests: seven CDM tables per institution, written
with each site's own names, units, date formats and file types (``cleanroom demo-data``)."""

from hub.demodata.generator import generate
from hub.demodata.simulator import generate_frames
from hub.demodata.site_formats import (
    FORMATS,
    TABLES,
    Institution,
    SiteFormat,
    list_institutions,
    site_format,
    table_of,
    to_site_frame,
)

__all__ = [
    "FORMATS",
    "TABLES",
    "Institution",
    "SiteFormat",
    "generate",
    "generate_frames",
    "list_institutions",
    "site_format",
    "table_of",
    "to_site_frame",
]
