"""The demo sites' habits: each institution's file type, column names (drawn from the CDM's
synonyms), units, date formats and flags, and the writers of its CSV, XLSX and Parquet
files (:func:`to_site_frame`, :func:`table_of`). The numbers come from
:mod:`hub.demodata.simulator`; :func:`hub.demodata.generator.generate` puts the two together."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from faker import Faker
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell

from contracts.cdm import ColumnType, load_cdm
from hub.demodata.consortium import INSTITUTIONS, USERS

TABLES = load_cdm().table_names
"""The data model's tables, in its order: every institution gets all of them."""

# Canonical-unit decimals per generated column; a value converted into a site's unit keeps
# the same information (decimals shift by log10 of the factor), so the round trip is exact.
_DECIMALS: dict[str, int] = {
    "weight_kg": 1,
    "alc_pre": 2,
    "cd3_pre": 0,
    "platelets_pre": 0,
    "cd4_cd8_ratio_pre": 2,
    "blasts_pre": 1,
    "blood_volume_processed": 1,
    "cd3_yield": 2,
    "tnc_yield": 2,
    "product_volume": 0,
    "temp_min": 1,
    "temp_max": 1,
    "moi": 1,
    "fold_expansion": 1,
    "viability": 1,
    "transduction_efficiency": 1,
    "vcn": 2,
    "cd3_pct": 1,
    "cd4_cd8_ratio": 2,
    "total_viable_cells": 2,
    "value": 3,
    "dose": 1,
    "dose_per_kg": 2,
}


# Institutions and how each keeps its files ------------------------------------------------


@dataclass(frozen=True)
class Institution:
    """A contributing institution (slug as in ``cleanroom demo``)."""

    slug: str
    name: str
    kind: str  # manufacturer | hospital | academic


@dataclass(frozen=True)
class SiteFormat:
    """One site's export habits: file type, names, units, dates, booleans.

    ``columns`` maps table -> CDM column -> the site's header (only the columns the site
    exports, in its order); ``units`` maps table -> CDM column -> the unit label the site
    uses where it is not the canonical one; ``files`` maps table -> file or sheet name.
    """

    key: str  # csv | xlsx | parquet
    locale: str
    files: Mapping[str, str]
    columns: Mapping[str, Mapping[str, str]]
    units: Mapping[str, Mapping[str, str]]
    date_format: str | None  # strftime for dates written as text; None: native dates
    datetime_format: str | None
    true_false: tuple[Any, Any]
    description: str
    workbook: str | None = None
    own_custody_only: bool = False  # a hospital logs its own steps, not the manufacturer's

    def cdm_names(self, table: str) -> dict[str, str]:
        """Site header -> CDM column: the renaming table read backwards."""
        return {site: cdm for cdm, site in self.columns[table].items()}

    def unit(self, table: str, column: str) -> str | None:
        """The unit label the site uses for a column (None: the canonical unit)."""
        return self.units.get(table, {}).get(column)


_CSV = SiteFormat(
    key="csv",
    locale="en_GB",
    description="CSV, `;` delimiter, UTF-8 with BOM, CRLF, dd/mm/yyyy dates, Y/N flags",
    date_format="%d/%m/%Y",
    datetime_format="%d/%m/%Y %H:%M",
    true_false=("Y", "N"),
    files={
        "episode": "patients.csv",
        "collection": "apheresis.csv",
        "custody_event": "chain_of_custody.csv",
        "batch": "batch_record.csv",
        "release_test": "qc_release.csv",
        "deviation": "deviations.csv",
        "administration": "infusions.csv",
    },
    columns={
        "episode": {
            "coi_id": "COI Number",
            "patient_name": "Patient Name",
            "mrn": "Hospital Number",
            "nhs_number": "NHS Number",
            "date_of_birth": "DOB",
            "sex": "Sex",
            "age": "Age (years)",
            "weight_kg": "Weight (kg)",
            "site": "Treating Site",
            "indication": "Diagnosis",
            "product_class": "Product Class",
            "product": "Product",
            "prior_lines": "Prior Lines",
            "bendamustine_exposure": "Bendamustine Exposure",
            "bridging": "Bridging (Y/N)",
            "abo_rh": "ABO/Rh",
            "phone": "Contact Number",
            "email": "Email",
        },
        "collection": {
            "din": "DIN",
            "coi_id": "COI Number",
            "collection_date": "Collection Date",
            "collection_facility": "Collection Site",
            "fresh_or_cryo": "Fresh/Cryo",
            "device": "Apheresis Device",
            "alc_pre": "ALC (cells/µL)",
            "cd3_pre": "CD3 (cells/µL)",
            "platelets_pre": "PLT (x10^9/L)",
            "cd4_cd8_ratio_pre": "CD4:CD8",
            "blasts_pre": "Blasts (%)",
            "blood_volume_processed": "BVP (mL)",
            "cd3_yield": "CD3 Yield (x10^8)",
            "tnc_yield": "TNC (x10^8)",
            "product_volume": "Volume (mL)",
            "anticoagulant": "Anticoagulant",
            "complication": "Complication",
            "collected_by": "Collected By",
            "notes": "Comments",
        },
        "custody_event": {
            "event_id": "Event ID",
            "unit_id": "Unit Number",
            "coi_id": "COI Number",
            "lot_id": "Lot No.",
            "product_code": "Product Code",
            "event": "Event",
            "timestamp": "Date/Time",
            "from_site": "From",
            "to_site": "To",
            "temp_min": "Min Temp (°C)",
            "temp_max": "Max Temp (°C)",
            "excursion": "Excursion",
            "logger_serial": "Logger SN",
            "shipment_id": "AWB",
            "performed_by": "Signed By",
        },
        "batch": {
            "lot_id": "Lot No.",
            "coi_id": "COI Number",
            "din": "Starting Material DIN",
            "product_code": "Product Code",
            "processing_facility": "Manufacturing Site",
            "platform": "Platform",
            "manufacturing_start": "Mfg Start",
            "release_date": "QP Release Date",
            "expiration_date": "Expiry Date",
            "product_status": "Product Status",
            "manufacturing_outcome": "Manufacturing Outcome",
            "culture_days": "Culture Days",
            "moi": "MOI",
            "fold_expansion": "Fold Expansion",
            "viability": "Viability (%)",
            "transduction_efficiency": "CAR+ (%)",
            "vcn": "VCN (copies/cell)",
            "cd3_pct": "CD3+ (%)",
            "cd4_cd8_ratio": "Final CD4/CD8",
            "total_viable_cells": "TVC (x10^9)",
            "released_by": "QP Name",
        },
        "release_test": {
            "lot_id": "Lot No.",
            "test": "Test",
            "value": "Result Value",
            "qualitative_result": "Qualitative Result",
            "unit": "Unit",
            "limit": "Specification",
            "passed": "Conforms",
            "test_date": "Test Date",
        },
        "deviation": {
            "deviation_id": "Deviation No.",
            "coi_id": "COI Number",
            "lot_id": "Lot No.",
            "unit_id": "Unit Number",
            "reported_date": "Date Raised",
            "stage": "Process Stage",
            "category": "Deviation Type",
            "severity": "Severity",
            "disposition": "Disposition",
            "description": "Description",
            "reported_by": "Raised By",
        },
        "administration": {
            "lot_id": "Lot No.",
            "coi_id": "COI Number",
            "infusion_date": "Infusion Date",
            "infusion_site": "Infusion Centre",
            "dose": "Dose (x10^6 cells)",
            "dose_per_kg": "Dose (x10^6/kg)",
            "oos_infused": "OOS Infused",
        },
    },
    units={
        "collection": {
            "alc_pre": "cells/µL",
            "platelets_pre": "x10^9/L",
            "blood_volume_processed": "mL",
            "cd3_yield": "x10^8 cells",
            "tnc_yield": "x10^8 cells",
        },
        "batch": {"total_viable_cells": "x10^9 cells"},
        "administration": {"dose": "x10^6 cells", "dose_per_kg": "x10^6/kg"},
    },
)

_XLSX = SiteFormat(
    key="xlsx",
    locale="en_GB",
    description=(
        "one XLSX workbook, a sheet per table and a Notes sheet, Excel dates, ISO 8601 text "
        "timestamps, fractions for percentages, yes/no flags, custody steps seen on site"
    ),
    workbook="cell_therapy_register.xlsx",
    own_custody_only=True,
    date_format=None,
    datetime_format="%Y-%m-%dT%H:%M:%S",
    true_false=("yes", "no"),
    files={
        "episode": "Patients",
        "collection": "Apheresis",
        "custody_event": "Custody log",
        "batch": "Manufacturing",
        "release_test": "QC results",
        "deviation": "Deviations",
        "administration": "Infusions",
    },
    columns={
        "episode": {
            "mrn": "Hosp No",
            "patient_name": "Name",
            "date_of_birth": "D.O.B.",
            "nhs_number": "NHS No",
            "address": "Address",
            "phone": "Telephone",
            "coi_id": "Chain of Identity ID",
            "sex": "Gender",
            "age": "Age",
            "weight_kg": "Weight kg",
            "indication": "Dx",
            "product": "Therapy",
            "product_class": "Therapy Type",
            "prior_lines": "Lines of Therapy",
            "bendamustine_exposure": "Prior Bendamustine",
            "bridging": "Bridging Therapy",
            "site": "Hospital",
            "abo_rh": "Blood Group",
        },
        "collection": {
            "din": "Donation ID",
            "coi_id": "Chain of Identity ID",
            "collection_date": "Apheresis Date",
            "collection_facility": "Apheresis Centre",
            "fresh_or_cryo": "Starting Material",
            "device": "Cell Separator",
            "alc_pre": "ALC (10^9/L)",
            "cd3_pre": "CD3 (10^9/L)",
            "platelets_pre": "Platelets (G/L)",
            "cd4_cd8_ratio_pre": "CD4/CD8 Ratio",
            "blasts_pre": "Blasts (fraction)",
            "blood_volume_processed": "BVP (L)",
            "cd3_yield": "CD3 yield (10^9 cells)",
            "tnc_yield": "TNC (10^9 cells)",
            "product_volume": "Volume (L)",
            "anticoagulant": "AC",
            "complication": "Complications",
            "collected_by": "Apheresis Nurse",
            "notes": "Notes",
        },
        "custody_event": {
            "event_id": "Log ID",
            "unit_id": "Bag ID",
            "coi_id": "Chain of Identity ID",
            "lot_id": "Batch ID",
            "event": "Activity",
            "timestamp": "Timestamp",
            "from_site": "Shipped From",
            "to_site": "Shipped To",
            "temp_min": "Temp min (degC)",
            "temp_max": "Temp max (degC)",
            "excursion": "Temperature Excursion",
            "logger_serial": "Data Logger",
            "shipment_id": "Tracking Number",
            "performed_by": "Scanned By",
        },
        "batch": {
            "lot_id": "Batch ID",
            "coi_id": "Chain of Identity ID",
            "din": "Source DIN",
            "processing_facility": "Manufacturer Site",
            "platform": "Manufacturing Model",
            "manufacturing_start": "Culture Start",
            "release_date": "Date Released",
            "expiration_date": "Exp Date",
            "product_status": "Bag Status",
            "manufacturing_outcome": "Lot Outcome",
            "culture_days": "Days in Culture",
            "fold_expansion": "Expansion",
            "viability": "Viability (fraction)",
            "transduction_efficiency": "Transduction (fraction)",
            "vcn": "VCN/cell",
            "cd3_pct": "CD3+ (fraction)",
            "total_viable_cells": "TVC (x10^8)",
        },
        "release_test": {
            "lot_id": "Batch ID",
            "test": "Assay",
            "value": "Result Value",
            "qualitative_result": "Interpretation",
            "unit": "UoM",
            "limit": "Acceptance Criteria",
            "passed": "Meets Spec",
            "test_date": "Result Date",
        },
        "deviation": {
            "deviation_id": "NCR No.",
            "coi_id": "Chain of Identity ID",
            "lot_id": "Batch ID",
            "unit_id": "Bag ID",
            "reported_date": "Date Reported",
            "stage": "Phase",
            "category": "Classification",
            "disposition": "Decision",
            "description": "Details",
            "reported_by": "Originator",
        },
        "administration": {
            "lot_id": "Batch ID",
            "coi_id": "Chain of Identity ID",
            "infusion_date": "Date of Infusion",
            "infusion_site": "Infusion Site",
            "dose": "Dose (x10^8 cells)",
            "dose_per_kg": "Dose per kg",
            "oos_infused": "Exceptional Release",
            "administered_by": "Infused By",
        },
    },
    units={
        "collection": {
            "cd3_pre": "10^9/L",
            "platelets_pre": "G/L",
            "blasts_pre": "fraction",
            "product_volume": "L",
        },
        "batch": {
            "viability": "fraction",
            "transduction_efficiency": "fraction",
            "cd3_pct": "fraction",
            "total_viable_cells": "x10^8 cells",
        },
        "administration": {"dose": "x10^8 cells"},
    },
)

_PARQUET = SiteFormat(
    key="parquet",
    locale="en_US",
    description=(
        "Parquet per table, snake_case names with units in some headers (and in field "
        "metadata), mm/dd/yyyy text dates, native timestamps and booleans, US units"
    ),
    date_format="%m/%d/%Y",
    datetime_format=None,
    true_false=(True, False),
    files={
        "episode": "subjects.parquet",
        "collection": "leukapheresis.parquet",
        "custody_event": "custody_log.parquet",
        "batch": "manufacturing_runs.parquet",
        "release_test": "qc_results.parquet",
        "deviation": "quality_events.parquet",
        "administration": "infusions.parquet",
    },
    columns={
        "episode": {
            "coi_id": "chain_of_identity",
            "patient_name": "patient_full_name",
            "mrn": "medical_record_number",
            "nhs_number": "SSN",
            "date_of_birth": "birth_date",
            "email": "e_mail",
            "phone": "Phone Number",
            "address": "address",
            "site": "treating_site",
            "product_class": "product_category",
            "product": "product_name",
            "indication": "diagnosis_code",
            "age": "age_at_collection",
            "sex": "sex",
            "weight_kg": "Weight (lbs)",
            "prior_lines": "n_prior_lines",
            "bendamustine_exposure": "bendamustine_washout",
            "bridging": "bridging_therapy",
            "abo_rh": "blood_group",
        },
        "collection": {
            "din": "donation_id",
            "coi_id": "chain_of_identity",
            "collection_date": "apheresis_date",
            "collection_facility": "apheresis_centre_name",
            "fresh_or_cryo": "starting_material_state",
            "device": "device",
            "alc_pre": "ALC (cells/uL)",
            "cd3_pre": "CD3+ pre (/uL)",
            "platelets_pre": "PLT (10^3/uL)",
            "cd4_cd8_ratio_pre": "cd4cd8_ratio_pre",
            "blasts_pre": "blast_pct",
            "blood_volume_processed": "bvp_l",
            "cd3_yield": "Total CD3 (cells)",
            "tnc_yield": "TNC (cells)",
            "product_volume": "vol_ml",
            "complication": "collection_complication",
        },
        "custody_event": {
            "event_id": "event_no",
            "unit_id": "unit_din",
            "coi_id": "chain_of_identity",
            "lot_id": "lot_number",
            "product_code": "product_code_isbt",
            "event": "event_type",
            "timestamp": "event_datetime",
            "from_site": "origin_site",
            "to_site": "destination_site",
            "temp_min": "temp_min_c",
            "temp_max": "temp_max_c",
            "excursion": "temp_excursion",
            "logger_serial": "logger_sn",
            "shipment_id": "tracking_no",
        },
        "batch": {
            "lot_id": "lot_number",
            "coi_id": "chain_of_identity",
            "din": "source_din",
            "product_code": "product_code_isbt",
            "processing_facility": "mfg_site",
            "platform": "platform",
            "manufacturing_start": "manufacturing_start_date",
            "release_date": "released_on",
            "expiration_date": "expiration_date",
            "product_status": "product_state",
            "manufacturing_outcome": "mfg_result",
            "culture_days": "culture_len",
            "moi": "moi_used",
            "fold_expansion": "fold_exp",
            "viability": "Viab %",
            "transduction_efficiency": "car_pos_pct",
            "vcn": "vector_copies",
            "cd3_pct": "cd3_purity",
            "cd4_cd8_ratio": "cd4_cd8_final",
            "total_viable_cells": "TVC (cells)",
            "released_by": "QP",
        },
        "release_test": {
            "lot_id": "lot_number",
            "test": "test_name",
            "value": "result_num",
            "qualitative_result": "result_text",
            "unit": "result_unit",
            "limit": "spec_limit",
            "passed": "pass_fail",
            "test_date": "tested_on",
        },
        "deviation": {
            "deviation_id": "dev_number",
            "coi_id": "chain_of_identity",
            "lot_id": "lot_number",
            "unit_id": "unit_din",
            "reported_date": "raised_on",
            "stage": "stage_name",
            "category": "deviation_category",
            "severity": "severity",
            "disposition": "final_disposition",
            "description": "Narrative",
            "reported_by": "Owner",
        },
        "administration": {
            "lot_id": "lot_number",
            "coi_id": "chain_of_identity",
            "infusion_date": "infusion_dt",
            "infusion_site": "infusion_location",
            "dose": "dose_total",
            "dose_per_kg": "dose_kg",
            "oos_infused": "oos_flag",
            "administered_by": "Physician",
        },
    },
    units={
        "episode": {"weight_kg": "lbs"},
        "collection": {
            "alc_pre": "cells/uL",
            "cd3_pre": "/uL",
            "platelets_pre": "10^3/uL",
            "cd3_yield": "cells",
            "tnc_yield": "cells",
        },
        "batch": {"total_viable_cells": "cells"},
    },
)

FORMATS: tuple[SiteFormat, ...] = (_CSV, _XLSX, _PARQUET)
_KINDS = ("manufacturer", "hospital", "academic")
_EXTRA_NAMES = (
    ("Harbourview", "Cell Therapy Centre"),
    ("Lindqvist", "Biologics"),
    ("Marlowe", "Cancer Institute"),
    ("Ostberg", "University Clinic"),
    ("Quayside", "Cell Manufacturing"),
    ("Ravensmoor", "Children's Hospital"),
    ("Selkirk", "Translational Research Centre"),
    ("Tamsin Bay", "General Hospital"),
    ("Vantor", "Advanced Therapies"),
    ("Wyndham", "Haematology Centre"),
)


def site_format(index: int) -> SiteFormat:
    """The export habits of the institution at ``index`` (they repeat every three)."""
    return FORMATS[index % len(FORMATS)]


def list_institutions(count: int) -> list[Institution]:
    """The demo consortium's contributors (:mod:`hub.demodata.consortium`), then generated
    ones."""
    found = [Institution(slug, name, kind) for slug, name, kind in _demo_institutions()]
    for index in range(len(found), count):
        place, suffix = _EXTRA_NAMES[(index - 3) % len(_EXTRA_NAMES)]
        round_ = (index - 3) // len(_EXTRA_NAMES)
        name = f"{place} {suffix}" + (f" {round_ + 1}" if round_ else "")
        slug = "-".join(name.lower().replace("'", "").split())
        found.append(Institution(slug, name, _KINDS[index % len(_KINDS)]))
    return found[:count]


def _demo_institutions() -> list[tuple[str, str, str]]:
    # The consortium `cleanroom demo` seeds, minus the steward's office (no data of its own).
    return [row for row in INSTITUTIONS if row[2] != "steward"]


def data_manager(inst: Institution, fmt: SiteFormat, seed: int) -> str:
    """Who exported the files: the institution's demo data user, or an invented one."""
    for _username, display, role, slug in USERS:
        if slug == inst.slug and role == "contributor":
            return display
    fake = Faker(fmt.locale)
    fake.seed_instance(seed)
    return f"{fake.first_name()} {fake.last_name()}"


def to_site_frame(frame: pd.DataFrame, table: str, fmt: SiteFormat) -> pd.DataFrame:
    """A CDM frame as the site writes it: its units, its headers, its dates and flags."""
    cdm_table = load_cdm().table(table)
    out: dict[str, pd.Series] = {}
    true, false = fmt.true_false
    for name in frame.columns:
        column = cdm_table.column(name)
        values = frame[name]
        unit = fmt.unit(table, name)
        if unit is not None:
            factor = column.alternate_units[unit]
            decimals = max(0, _DECIMALS.get(name, 2) + round(math.log10(factor)))
            values = (values / factor).round(decimals)
        else:
            decimals = _DECIMALS.get(name, -1)
        if decimals == 0 and column.type is ColumnType.NUMBER:
            values = values.round().astype("Int64")  # counts are written without ".0"
        if column.type is ColumnType.BOOLEAN and fmt.key != "parquet":
            values = values.map(lambda v: None if pd.isna(v) else (true if v else false))
        elif column.type is ColumnType.DATE and fmt.date_format:
            values = values.dt.strftime(fmt.date_format).where(values.notna(), None)
        elif column.type is ColumnType.DATETIME and fmt.datetime_format:
            values = values.dt.strftime(fmt.datetime_format).where(values.notna(), None)
        elif column.type is ColumnType.DATETIME:
            values = values.astype("datetime64[ms]")
        out[fmt.columns[table][name]] = values
    return pd.DataFrame(out, index=frame.index)


def table_of(path: Path) -> list[tuple[str, str | None]]:
    """The CDM table(s) a generated file holds, with the sheet name for a workbook (None for
    CSV and Parquet), so a caller can upload each to the right table."""
    path = Path(path)
    for fmt in FORMATS:
        if fmt.workbook and path.name.endswith(fmt.workbook):
            return [(table, fmt.files[table]) for table in TABLES]
        if fmt.workbook is None:
            for table in TABLES:
                if fmt.files[table] == path.name:
                    return [(table, None)]
    raise ValueError(f"{path.name} is not a file the demo-data generator writes")


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, sep=";", index=False, encoding="utf-8-sig", lineterminator="\r\n")
    return path


def write_xlsx(
    site: dict[str, pd.DataFrame],
    inst: Institution,
    fmt: SiteFormat,
    tables: dict[str, pd.DataFrame],
    manager: str,
    path: Path,
) -> Path:
    exported = max(tables["custody_event"]["timestamp"]).date() + timedelta(days=3)
    notes = [
        f"{inst.name}: cell therapy register export",
        f"Exported {exported:%d/%m/%Y} by the cell therapy data manager, {manager} "
        f"({manager.lower().replace(' ', '.')}@example.org).",
        "One sheet per register: Patients, Apheresis, Custody log, Manufacturing, QC results, "
        "Deviations, Infusions.",
        "Units: CD3 counts in 10^9/L; blasts, viability, transduction and CD3+ as fractions "
        "(0-1); TVC in 10^8 cells; infused dose in 10^8 CAR+ viable cells.",
        "Dates are Excel dates; custody timestamps are ISO 8601 local time (text).",
        "Do not circulate outside the cell therapy service: contains patient identifiers.",
    ]
    # openpyxl's write-only mode streams rows; the pandas writer is several times slower.
    book = Workbook(write_only=True)
    book.properties.creator = inst.name
    book.properties.created = book.properties.modified = datetime(
        exported.year, exported.month, exported.day, 17, 30
    )
    sheet = book.create_sheet("Notes")
    sheet.column_dimensions["A"].width = 110
    for line in notes:
        sheet.append([line])
    for table in TABLES:
        frame = site[table]
        sheet = book.create_sheet(fmt.files[table])
        sheet.freeze_panes = "A2"
        sheet.append(list(frame.columns))
        dates = [
            i for i, dtype in enumerate(frame.dtypes) if pd.api.types.is_datetime64_dtype(dtype)
        ]
        for values in frame.astype(object).where(frame.notna(), None).itertuples(index=False):
            row: list[Any] = list(values)
            for i in dates:
                if row[i] is not None:
                    cell = WriteOnlyCell(sheet, value=row[i].to_pydatetime())
                    cell.number_format = "DD/MM/YYYY"
                    row[i] = cell
            sheet.append(row)
    book.save(path)
    return path


def write_parquet(frame: pd.DataFrame, table: str, fmt: SiteFormat, path: Path) -> Path:
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    cdm_table = load_cdm().table(table)
    fields = []
    for cdm_name, header in fmt.columns[table].items():
        f = arrow.schema.field(header)
        unit = fmt.unit(table, cdm_name) or cdm_table.column(cdm_name).unit
        fields.append(f.with_metadata({"unit": unit}) if unit else f)
    arrow = pa.Table.from_arrays(
        arrow.columns, schema=pa.schema(fields, metadata=arrow.schema.metadata)
    )
    pq.write_table(arrow, path, compression="snappy")
    return path
