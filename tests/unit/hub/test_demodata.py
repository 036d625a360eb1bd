"""The demo-data generator: realistic numbers, consistent identifiers, each site's quirks,
the identifiers real files carry, determinism, and the ``cleanroom demo-data`` command."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from contracts.cdm import ColumnType, load_cdm, normalise_name
from hub.cli import cli
from hub.demodata import FORMATS, TABLES, generate, generate_frames, site_format, table_of

SLUGS = ("northbridge-cell", "st-aurelia", "kelvin-institute")
Frames = dict[str, dict[str, pd.DataFrame]]


@pytest.fixture(scope="module")
def frames() -> Frames:
    """Enough patients for stable statistics (3 x 300 episodes), in CDM names and units."""
    return generate_frames(institutions=3, patients=300, seed=7)


@pytest.fixture(scope="module")
def pooled(frames: Frames) -> dict[str, pd.DataFrame]:
    return {t: pd.concat([frames[s][t] for s in frames], ignore_index=True) for t in TABLES}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo-data")
    generate(out, institutions=3, patients=40, seed=7)
    return out


def _read_site(out: Path, index: int, slug: str) -> dict[str, pd.DataFrame]:
    """Read an institution's files back as the hub would, by table, with site headers."""
    fmt = site_format(index)
    folder = out / slug
    if fmt.key == "csv":
        return {
            t: pd.read_csv(folder / fmt.files[t], sep=";", encoding="utf-8-sig", dtype=str)
            for t in TABLES
        }
    if fmt.key == "xlsx":
        (book,) = folder.glob("*.xlsx")
        sheets = pd.read_excel(book, sheet_name=None)
        return {t: sheets[fmt.files[t]] for t in TABLES}
    return {t: pd.read_parquet(folder / fmt.files[t]) for t in TABLES}


# Files and their quirks -------------------------------------------------------------------


def test_institutions_and_file_types(written: Path) -> None:
    assert sorted(p.name for p in written.iterdir()) == sorted(SLUGS)
    assert len(list((written / "northbridge-cell").glob("*.csv"))) == 7
    assert len(list((written / "st-aurelia").glob("*.xlsx"))) == 1
    assert len(list((written / "kelvin-institute").glob("*.parquet"))) == 7


def test_table_of_names_every_table_once_per_institution(written: Path) -> None:
    for slug in SLUGS:
        found = [pair for path in sorted((written / slug).iterdir()) for pair in table_of(path)]
        assert sorted(table for table, _ in found) == sorted(TABLES), slug
    (book,) = (written / "st-aurelia").glob("*.xlsx")
    assert ("custody_event", "Custody log") in table_of(book)
    assert table_of(written / "kelvin-institute" / "subjects.parquet") == [("episode", None)]
    with pytest.raises(ValueError, match="not a file the demo-data generator writes"):
        table_of(written / "elsewhere.csv")


def test_csv_has_bom_semicolons_and_day_first_dates(written: Path) -> None:
    raw = (written / "northbridge-cell" / "apheresis.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    header = raw[3:].split(b"\r\n", 1)[0].decode()
    assert header.count(";") >= 10 and "," not in header
    frame = pd.read_csv(
        written / "northbridge-cell" / "apheresis.csv", sep=";", encoding="utf-8-sig", dtype=str
    )
    days = frame["Collection Date"].str.extract(r"^(\d\d)/(\d\d)/(\d{4})$").astype(float)
    assert days.notna().all().all(), "dates are dd/mm/yyyy"
    assert (days[0] > 12).any() and (days[1] <= 12).all(), "an unambiguous day-first date"
    assert set(frame["Complication"]) <= {"Y", "N"}


def test_xlsx_has_a_sheet_per_table_and_excel_dates(written: Path) -> None:
    (path,) = (written / "st-aurelia").glob("*.xlsx")
    book = openpyxl.load_workbook(path, read_only=True)
    fmt = site_format(1)
    assert book.sheetnames == ["Notes", *(fmt.files[t] for t in TABLES)]
    notes = " ".join(str(r[0]) for r in book["Notes"].iter_rows(values_only=True))
    assert "fraction" in notes and "Tom Achterberg" in notes
    apheresis = list(book["Apheresis"].iter_rows(values_only=True))
    column = apheresis[0].index("Apheresis Date")
    assert all(
        isinstance(row[column], pd.Timestamp | np.datetime64) or hasattr(row[column], "year")
        for row in apheresis[1:]
    )
    custody = list(book["Custody log"].iter_rows(values_only=True))
    stamp = custody[0].index("Timestamp")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", custody[1][stamp])
    viability = pd.read_excel(path, sheet_name="Manufacturing")["Viability (fraction)"]
    assert viability.between(0, 1).all() and viability.median() > 0.8
    book.close()


def test_parquet_has_native_types_units_and_month_first_dates(written: Path) -> None:
    folder = written / "kelvin-institute"
    collection = pq.read_table(folder / "leukapheresis.parquet")
    field = collection.schema.field("ALC (cells/uL)")
    assert field.metadata == {b"unit": b"cells/uL"}
    dates = (
        collection.column("apheresis_date")
        .to_pandas()
        .str.extract(r"^(\d\d)/(\d\d)/(\d{4})$")
        .astype(float)
    )
    assert (dates[1] > 12).any() and (dates[0] <= 12).all(), "an unambiguous month-first date"
    custody = pq.read_table(folder / "custody_log.parquet").schema
    assert str(custody.field("event_datetime").type).startswith("timestamp")
    assert str(custody.field("temp_excursion").type) == "bool"


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = generate(tmp_path / "a", institutions=3, patients=10, seed=11)
    second = generate(tmp_path / "b", institutions=3, patients=10, seed=11)
    other = generate(tmp_path / "c", institutions=3, patients=10, seed=12)
    assert [p.relative_to(tmp_path / "a") for p in first] == [
        p.relative_to(tmp_path / "b") for p in second
    ]
    for a, b, c in zip(first, second, other, strict=True):
        if a.suffix in (".csv", ".parquet"):
            assert a.read_bytes() == b.read_bytes(), a.name
            assert a.read_bytes() != c.read_bytes(), a.name
        else:
            sheets_a = pd.read_excel(a, sheet_name=None)
            sheets_b = pd.read_excel(b, sheet_name=None)
            for name, frame in sheets_a.items():
                pd.testing.assert_frame_equal(frame, sheets_b[name])


# Names, units and the way back to the CDM -------------------------------------------------


def test_column_names_differ_between_institutions() -> None:
    for table in TABLES:
        headers = [set(fmt.columns[table].values()) for fmt in FORMATS]
        assert headers[0] != headers[1] != headers[2] != headers[0], table
        coi = {fmt.columns[table].get("coi_id") for fmt in FORMATS} - {None}
        assert len(coi) in (0, 3), f"{table}: every site names the COI its own way"


def test_site_names_are_cdm_synonyms_and_units_are_declared() -> None:
    cdm = load_cdm()
    for fmt in FORMATS:
        for table, names in fmt.columns.items():
            spec = cdm.table(table)
            for column, header in names.items():
                known = {normalise_name(n) for n in (column, *spec.column(column).synonyms)}
                assert normalise_name(header) in known, f"{fmt.key}: {table}.{header}"
            for column, unit in fmt.units.get(table, {}).items():
                assert unit in spec.column(column).alternate_units, f"{fmt.key}: {column} {unit}"


def test_files_map_back_to_the_frames(written: Path) -> None:
    """Renaming back and converting units recovers every required column and value."""
    cdm = load_cdm()
    frames = generate_frames(institutions=3, patients=40, seed=7)
    for index, slug in enumerate(SLUGS):
        fmt = site_format(index)
        for table, site in _read_site(written, index, slug).items():
            mapped = site.rename(columns=fmt.cdm_names(table))
            spec = cdm.table(table)
            required = {c.name for c in spec.columns if c.required}
            assert required <= set(mapped.columns), f"{slug}.{table}"
            expected = frames[slug][table]
            assert len(mapped) == len(expected), f"{slug}.{table}"
            for column in expected.columns:
                if spec.column(column).type is not ColumnType.NUMBER:
                    continue
                unit = fmt.unit(table, column)
                factor = spec.column(column).alternate_units[unit] if unit else 1.0
                got = pd.to_numeric(mapped[column]) * factor
                assert np.allclose(got, expected[column], rtol=1e-9, atol=0.05, equal_nan=True), (
                    f"{slug}.{table}.{column}"
                )


# Realistic numbers ------------------------------------------------------------------------


def test_values_respect_the_cdm(frames: Frames) -> None:
    cdm = load_cdm()
    for slug, tables in frames.items():
        for table, frame in tables.items():
            spec = cdm.table(table)
            assert not frame.duplicated(list(spec.primary_key)).any(), f"{slug}.{table}"
            for name in frame.columns:
                column, values = spec.column(name), frame[name].dropna()
                where = f"{slug}.{table}.{name}"
                if column.required:
                    assert frame[name].notna().all(), where
                if column.allowed:
                    assert set(values) <= set(column.allowed), where
                if column.minimum is not None:
                    assert (values >= column.minimum).all(), where
                if column.maximum is not None:
                    assert (values <= column.maximum).all(), where


def test_referential_integrity(frames: Frames) -> None:
    relationships = load_cdm().relationships
    for slug, tables in frames.items():
        for rel in relationships:
            if rel.column not in tables[rel.table]:
                continue
            children = set(tables[rel.table][rel.column].dropna())
            parents = set(tables[rel.ref_table][rel.ref_column])
            assert children and children <= parents, f"{slug}: {rel}"
        batch = tables["batch"].merge(tables["collection"], on="din", suffixes=("", "_col"))
        assert (batch["coi_id"] == batch["coi_id_col"]).all(), "a lot's DIN is its patient's"


def test_identifier_formats_look_real(frames: Frames) -> None:
    din = re.compile(r"^[A-Z]\d{4} ?\d\d ?\d{6}$")
    for tables in frames.values():
        assert tables["collection"]["din"].str.match(din).all()
        assert tables["episode"]["coi_id"].is_unique


def test_manufacturing_failure_rate_and_risk_factors(pooled: dict[str, pd.DataFrame]) -> None:
    batch = pooled["batch"].sort_values("manufacturing_start")
    first = batch.groupby("coi_id").head(1).merge(pooled["episode"], on="coi_id")
    failed = first["manufacturing_outcome"] == "failed"
    assert 0.03 <= failed.mean() <= 0.10
    by_benda = failed.groupby(first["bendamustine_exposure"]).mean()
    assert by_benda["lt_3_months"] > 2 * by_benda["none"]
    lots = first.merge(pooled["collection"], on="din")
    low_ratio = lots["cd4_cd8_ratio_pre"] < 1 / 3
    fails = lots["manufacturing_outcome"] == "failed"
    assert fails[low_ratio].mean() > 1.5 * fails[~low_ratio].mean()


def test_cd3_count_predicts_cd3_yield(pooled: dict[str, pd.DataFrame]) -> None:
    collection = pooled["collection"]
    r = np.corrcoef(collection["cd3_pre"], collection["cd3_yield"])[0, 1]
    assert 0.7 <= r <= 0.95
    assert 6 <= collection["cd3_yield"].median() <= 11
    assert 10 <= collection["blood_volume_processed"].median() <= 14.5


def test_vein_to_vein_and_release_times(pooled: dict[str, pd.DataFrame]) -> None:
    first_collection = pooled["collection"].groupby("coi_id")["collection_date"].min()
    infusions = pooled["administration"].merge(pooled["episode"][["coi_id", "product"]])
    days = (infusions["infusion_date"] - infusions["coi_id"].map(first_collection)).dt.days
    medians = days.groupby(infusions["product"]).median()
    assert 26 <= medians["axi-cel"] <= 35
    assert 31 <= medians["liso-cel"] <= 41
    assert 42 <= medians["tisa-cel"] <= 55
    batch = pooled["batch"].merge(pooled["collection"][["din", "collection_date"]], on="din")
    to_release = (batch["release_date"] - batch["collection_date"]).dt.days
    assert 13 <= to_release.median() <= 17


def test_viability_and_release_tests_agree(pooled: dict[str, pd.DataFrame]) -> None:
    batch = pooled["batch"]
    spec = np.where(batch["platform"] == "central", 80, 70)
    below = batch["viability"] < spec
    assert 0.005 <= below.mean() <= 0.08, "a few lots out of specification"
    assert not below[batch["manufacturing_outcome"] == "conforming"].any()
    tests = pooled["release_test"]
    quantitative = tests[tests["value"].notna()]
    parts = quantitative["limit"].str.extract(r"^(<=|>=|<) (\S+)$")
    bound = parts[1].astype(float)
    expected = np.select(
        [parts[0] == "<=", parts[0] == ">="],
        [quantitative["value"] <= bound, quantitative["value"] >= bound],
        quantitative["value"] < bound,
    )
    assert (quantitative["passed"].to_numpy() == expected).all()
    conforming = set(batch.loc[batch["manufacturing_outcome"] == "conforming", "lot_id"])
    assert tests.loc[tests["lot_id"].isin(conforming), "passed"].all()
    viability = tests[tests["test"] == "viability"].merge(batch, on="lot_id")
    assert (viability["value"] == viability["viability"]).all()


def test_custody_order_and_temperatures(pooled: dict[str, pd.DataFrame]) -> None:
    custody = pooled["custody_event"].sort_values(["unit_id", "timestamp"], kind="stable")
    for _unit, events in custody.groupby("unit_id"):
        names = list(events["event"])
        assert names[0] == "collected"
        if "infused" in names:
            assert names[-3:] == ["dispensed", "thawed", "infused"]
        if "qa_released" in names and "shipped" in names[names.index("qa_released") :]:
            assert names.index("cryopreserved") < names.index("qa_released")
    calm = custody[~custody["excursion"].astype(bool)]
    cold = calm[calm["lot_id"].notna() & calm["event"].isin(["shipped", "received", "dispensed"])]
    assert (cold["temp_max"] <= -120).all()
    fresh_units = pooled["collection"].loc[pooled["collection"]["fresh_or_cryo"] == "fresh", "din"]
    fresh = calm[
        calm["unit_id"].isin(fresh_units) & (calm["event"] == "shipped") & calm["lot_id"].isna()
    ]
    assert fresh["temp_min"].between(2, 8).all() and fresh["temp_max"].between(2, 8).all()
    shipped = custody[custody["event"] == "shipped"]
    assert 0.002 <= shipped["excursion"].astype(bool).mean() <= 0.05
    excursion_units = set(shipped.loc[shipped["excursion"].astype(bool), "unit_id"])
    deviations = pooled["deviation"]
    logged = set(deviations.loc[deviations["category"] == "temperature_excursion", "unit_id"])
    assert excursion_units and excursion_units <= logged


def test_deviation_rate(pooled: dict[str, pd.DataFrame]) -> None:
    batch, deviation = pooled["batch"], pooled["deviation"]
    share = batch["lot_id"].isin(deviation["lot_id"]).mean()
    assert 0.05 <= share <= 0.15
    assert {"oos_viability", "temperature_excursion", "contamination"} <= set(deviation["category"])
    infused = pooled["administration"]
    oos = set(infused.loc[infused["oos_infused"].astype(bool), "lot_id"])
    assert oos and oos <= set(deviation.loc[deviation["disposition"] == "oos_infused", "lot_id"])


# The identifiers real files carry ---------------------------------------------------------


def test_direct_identifiers_are_present(written: Path) -> None:
    for index, slug in enumerate(SLUGS):
        fmt = site_format(index)
        files = _read_site(written, index, slug)
        episode = files["episode"].rename(columns=fmt.cdm_names("episode"))
        assert episode["patient_name"].str.fullmatch(r"[A-Z][\w'-]+ [A-Z][\w' -]+").all()
        assert episode["mrn"].astype(str).str.contains(r"\d{4}").all()  # Excel: may be numbers
        assert episode["nhs_number"].str.fullmatch(r"999 \d{3} \d{4}|9\d\d-\d\d-\d{4}").all()
        assert episode["phone"].str.contains(r"07700 900\d{3}|555-01\d\d").all()
        assert pd.to_datetime(episode["date_of_birth"], dayfirst=index == 0).notna().all()
        if "email" in episode:
            assert episode["email"].str.fullmatch(r"[\w.'-]+@example\.(com|org|net)").all()
        staff = files["collection"].rename(columns=fmt.cdm_names("collection")).get("collected_by")
        if staff is not None:
            assert staff.str.fullmatch(r"[A-Z]\w+ [A-Z][\w' -]+").all()


def test_free_text_names_patients_and_staff(frames: Frames) -> None:
    for slug, tables in frames.items():
        notes = tables["deviation"].merge(tables["episode"], on="coi_id")
        named = [n in d for n, d in zip(notes["patient_name"], notes["description"], strict=True)]
        assert np.mean(named) > 0.5, slug
        assert notes["description"].str.contains(r"\bDr [A-Z]\w+ [A-Z]").any(), slug
        assert notes["description"].str.contains(r"07700 900|555-01|@example\.").any(), slug


# The command ------------------------------------------------------------------------------


def test_cli_writes_files_and_prints_a_summary(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(
        cli,
        ["demo-data", "--institutions", "4", "--patients", "12", "--seed", "3", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    folders = sorted(p.name for p in out.iterdir())
    assert len(folders) == 4 and set(SLUGS) < set(folders)
    (extra,) = set(folders) - set(SLUGS)
    assert len(list((out / extra).glob("*.csv"))) == 7, "the fourth site repeats the CSV habits"
    assert "northbridge-cell (manufacturer): 7 csv file(s)" in result.output
    assert "episode 12" in result.output
    assert re.search(r"wrote 22 file\(s\) for 4 institution\(s\) x 12 patients", result.output)


def test_cli_refuses_nonsense(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo-data", "--institutions", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--institutions" in result.output
