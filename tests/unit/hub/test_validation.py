"""hub.ingest.validation: parsing raw strings to CDM types, unit conversion, every rule,
row numbers as the contributor sees them, masked examples and a formula-safe report."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pandas as pd
import pytest

from contracts.cdm import Column, ColumnType, IdentifierClass, Table, load_cdm
from hub.ingest.mapping import apply_mapping, propose_mapping
from hub.ingest.validation import (
    Rule,
    ValidationResult,
    csv_safe,
    iter_report_csv,
    mask_value,
    parse_date_strings,
    parse_number_strings,
    report_csv,
    validate,
)

STR, INT, NUM, BOOL, DATE, DATETIME, CAT = (
    ColumnType.STRING,
    ColumnType.INTEGER,
    ColumnType.NUMBER,
    ColumnType.BOOLEAN,
    ColumnType.DATE,
    ColumnType.DATETIME,
    ColumnType.CATEGORY,
)
SAFE, LINK, DIRECT = IdentifierClass.SAFE, IdentifierClass.LINKABLE, IdentifierClass.DIRECT


def col(name: str, kind: ColumnType, required: bool = False, ident=SAFE, **kw) -> Column:
    return Column(name, kind, f"{name} for tests", required, ident, **kw)


def table(*columns: Column, key: tuple[str, ...] = ("id",)) -> Table:
    return Table("thing", "test table", "one row per thing", key, columns)


ID = col("id", STR, required=True, ident=LINK)


def raw(**columns: list[str | None]) -> pd.DataFrame:
    return pd.DataFrame(columns, dtype=object)


def ids(n: int) -> list[str]:
    return [f"ID{i:04d}" for i in range(n)]


@pytest.fixture(scope="module")
def cdm():
    return load_cdm()


# Parsing --------------------------------------------------------------------------------


def test_numbers_with_thousands_spaces_and_percent_signs():
    t = table(ID, col("x", NUM))
    frame = raw(id=ids(7), x=["1,340", "1.34", " 12 ", "87%", "1 340", "", "-0.5"])
    result = validate(frame, t)
    assert result.frame["x"].tolist()[:5] == [1340.0, 1.34, 12.0, 87.0, 1340.0]
    assert np.isnan(result.frame["x"].iloc[5])
    assert result.frame["x"].iloc[6] == -0.5
    assert result.valid_mask.all()
    assert result.report("x").empty == 1
    assert result.report("x").warnings == []


def test_decimal_commas_are_detected_per_column():
    numbers, note = parse_number_strings(pd.Series(["1,34", "0,87", "1.340", "1.340,5"]))
    assert numbers.tolist() == [1.34, 0.87, 1340.0, 1340.5]
    assert note is not None and "decimal separator" in note
    t = table(ID, col("x", NUM))
    result = validate(raw(id=ids(2), x=["1,34", "0,47"]), t)
    assert result.frame["x"].tolist() == [1.34, 0.47]
    assert any("decimal separator" in w for w in result.report("x").warnings)


def test_one_odd_value_does_not_flip_the_separator():
    numbers, note = parse_number_strings(pd.Series(["1,340", "2,100", "1,2,3"]))
    assert numbers.tolist()[:2] == [1340.0, 2100.0]
    assert np.isnan(numbers.iloc[2])
    assert note is None


def test_integers_booleans_and_categories():
    t = table(
        ID,
        col("n", INT),
        col("flag", BOOL),
        col("state", CAT, allowed=("fresh", "cryopreserved", "ACD-A+heparin")),
    )
    frame = raw(
        id=ids(6),
        n=["3", "3.0", "1,000", "2.5", "x", None],
        flag=["yes", "N", "true", "0", "ja", "maybe"],
        state=["FRESH", " Cryopreserved ", "acd-a + heparin", "fresh", "frozen", None],
    )
    result = validate(frame, t)
    assert str(result.frame["n"].dtype) == "Int64"
    assert result.frame["n"].tolist()[:3] == [3, 3, 1000]
    assert result.frame["flag"].tolist()[:5] == [True, False, True, False, True]
    assert result.frame["state"].tolist()[:4] == [
        "fresh",
        "cryopreserved",
        "ACD-A+heparin",
        "fresh",
    ]
    assert result.report("n").by_rule[Rule.TYPE].rows == [5, 6]
    assert result.report("flag").by_rule[Rule.TYPE].rows == [7]
    allowed = result.report("state").by_rule[Rule.ALLOWED]
    assert (allowed.count, allowed.rows, allowed.examples) == (1, [6], ["frozen"])
    assert result.valid_mask.tolist() == [True, True, True, False, False, False]


def test_dates_in_every_shape_sites_send():
    stamps, _ = parse_date_strings(
        pd.Series(
            [
                "2024-03-05",
                "2024-03-05T10:20:00",
                "2024-03-05 10:20:00",  # Excel's datetimes as text
                "2024-03-05T10:20:00+01:00",  # converted to UTC
                "05.03.2024",
                "5/3/24",
                "45356",  # an Excel serial day
                "2024-02-30",
                "not a date",
            ]
        )
    )
    got = [None if pd.isna(s) else s.isoformat() for s in stamps]
    assert got == [
        "2024-03-05T00:00:00",
        "2024-03-05T10:20:00",
        "2024-03-05T10:20:00",
        "2024-03-05T09:20:00",
        "2024-03-05T00:00:00",
        "2024-03-05T00:00:00",
        "2024-03-05T00:00:00",
        None,
        None,
    ]


def test_day_first_when_a_first_field_is_above_12():
    t = table(ID, col("d", DATE))
    result = validate(raw(id=ids(2), d=["05/03/2024", "13/03/2024"]), t)
    assert result.frame["d"].dt.strftime("%Y-%m-%d").tolist() == ["2024-03-05", "2024-03-13"]
    assert result.report("d").warnings == []


def test_month_first_when_a_second_field_is_above_12():
    t = table(ID, col("d", DATE))
    result = validate(raw(id=ids(2), d=["03/05/2024", "03/15/2024"]), t)
    assert result.frame["d"].dt.strftime("%Y-%m-%d").tolist() == ["2024-03-05", "2024-03-15"]
    assert result.valid_mask.all()


def test_ambiguous_dates_read_day_first_with_a_warning():
    t = table(ID, col("d", DATE))
    result = validate(raw(id=ids(2), d=["05/03/2024", "01/02/2024"]), t)
    assert result.frame["d"].dt.strftime("%Y-%m-%d").tolist() == ["2024-03-05", "2024-02-01"]
    (warning,) = result.report("d").warnings
    assert "ambiguous" in warning and "day-first" in warning
    assert "warning" in report_csv(result)


def test_ambiguous_dates_follow_the_files_other_date_column():
    t = table(ID, col("collected", DATE), col("infused", DATE))
    frame = raw(id=ids(2), collected=["03/05/2024", "03/15/2024"], infused=["04/02/2024", None])
    result = validate(frame, t)
    assert result.frame["infused"].iloc[0] == pd.Timestamp("2024-04-02")
    (warning,) = result.report("infused").warnings
    assert "month-first like `collected`" in warning


def test_conflicting_date_orders_fail_the_minority():
    t = table(ID, col("d", DATE))
    result = validate(raw(id=ids(3), d=["13/01/2024", "14/01/2024", "01/13/2024"]), t)
    assert result.report("d").by_rule[Rule.TYPE].rows == [4]
    assert "both day-first" in result.report("d").warnings[0]


def test_datetime_keeps_time_and_date_drops_it():
    t = table(ID, col("when", DATETIME), col("day", DATE))
    frame = raw(id=ids(1), when=["2024-03-05T10:20:00"], day=["2024-03-05T10:20:00"])
    result = validate(frame, t)
    assert result.frame["when"].iloc[0] == pd.Timestamp("2024-03-05 10:20:00")
    assert result.frame["day"].iloc[0] == pd.Timestamp("2024-03-05")


# Units and ranges -------------------------------------------------------------------------


def test_factor_converts_before_the_range_check():
    t = table(ID, col("alc", NUM, unit="10^9/L", minimum=0, maximum=500))
    frame = raw(id=ids(3), alc=["1,340", "470", "900000"])
    result = validate(frame, t, factors={"alc": 0.001})
    assert result.frame["alc"].tolist()[:2] == pytest.approx([1.34, 0.47])
    error = result.report("alc").by_rule[Rule.MAXIMUM]
    assert error.rows == [4]
    assert "above 500 10^9/L" in error.message


def test_range_message_names_rows_and_suggests_the_unit():
    t = table(ID, col("viability", NUM, unit="%", minimum=0, maximum=100))
    values = ["87", "187", "91", "250", "300", "101", "120", "130", "85"]
    result = validate(raw(id=ids(9), viability=values), t)
    error = result.report("viability").by_rule[Rule.MAXIMUM]
    assert error.count == 6
    assert error.rows == [3, 5, 6, 7, 8]  # the first five, as file rows
    assert error.message.startswith("column `viability`: 6 values above 100 %")
    assert "rows 3, 5, 6, 7, 8 …; check the unit" in error.message
    assert result.summary["by_rule"] == {"maximum": 6}


def test_factors_default_to_what_apply_mapping_stored(cdm):
    t = cdm.table("batch")
    upload = raw(**{"Lot No.": ["L1"], "Viability": ["0.87"]})
    mapped = apply_mapping(upload, propose_mapping(upload, t), t)
    result = validate(mapped, t)
    assert result.frame["viability"].iloc[0] == pytest.approx(87.0)
    assert result.report("viability").factor == 100.0
    assert result.report("viability").source == "Viability"


def test_bad_factor_is_refused():
    with pytest.raises(ValueError, match="unit factor"):
        validate(raw(id=["a"]), table(ID), factors={"id": 0})


# Required, keys and references ------------------------------------------------------------


def test_required_values_and_columns():
    t = table(ID, col("site", STR, required=True), col("note", STR))
    result = validate(raw(id=["a", "  ", "c"], note=["x", "y", "z"]), t)
    assert result.valid_mask.sum() == 0
    id_error = result.report("id").by_rule[Rule.REQUIRED]
    assert (id_error.count, id_error.rows) == (1, [3])
    site = result.report("site")
    assert not site.present
    assert site.by_rule[Rule.REQUIRED].count == 3
    assert "no source column is mapped" in site.by_rule[Rule.REQUIRED].message
    assert result.frame["site"].isna().all()
    assert list(result.frame.columns) == ["id", "site", "note"]


def test_an_empty_optional_column_added_by_the_mapping_is_not_present(cdm):
    t = cdm.table("collection")
    upload = raw(DIN=["A9999 24 000001"])
    mapped = apply_mapping(upload, propose_mapping(upload, t), t)
    result = validate(mapped, t)
    assert result.report("din").present and result.report("din").source == "DIN"
    assert not result.report("device").present
    assert result.report("device").errors == []


def test_duplicate_keys_make_every_involved_row_invalid():
    t = table(ID, col("x", NUM))
    frame = raw(id=["A9999 24 000001", "B2", "A9999 24 000001 ", "C3", "B2"], x=["1"] * 5)
    result = validate(frame, t)
    assert result.valid_mask.tolist() == [False, False, False, True, False]
    error = result.report("id").by_rule[Rule.DUPLICATE_KEY]
    assert error.count == 4
    assert error.rows == [2, 3, 4, 6]
    assert "2 repeated values" in error.message
    assert set(result.row_errors["rule"]) == {"duplicate_key"}


def test_composite_keys(cdm):
    t = cdm.table("release_test")
    frame = raw(
        lot_id=["LOT-001", "LOT-001", "LOT-001", "LOT-002"],
        test=["sterility", "Sterility", "endotoxin", "sterility"],
        passed=["yes", "yes", "no", "yes"],
    )
    result = validate(frame, t)
    assert result.valid_mask.tolist() == [False, False, True, True]
    errors = result.row_errors
    assert set(errors["column"]) == {"lot_id, test"}
    assert errors["value"].tolist() == ["L…1 / sterility", "L…1 / Sterility"]  # lot masked
    assert (
        result.report("lot_id")
        .by_rule[Rule.DUPLICATE_KEY]
        .message.startswith("key (`lot_id`, `test`): 2 rows share 1 repeated value")
    )


def test_references_checked_against_known_keys():
    t = table(ID, col("coi", STR, required=True, ident=LINK, references="episode.coi_id"))
    frame = raw(id=ids(3), coi=["COI-1", "COI-2", "COI-9"])
    result = validate(frame, t, known_keys={"episode.coi_id": {"COI-1", "COI-2"}})
    report = result.report("coi")
    assert report.reference == "checked"
    error = report.by_rule[Rule.REFERENCE]
    assert (error.count, error.rows) == (1, [4])
    assert "not found in `episode.coi_id`" in error.message
    assert "upload the `episode` table first" in error.message
    assert result.valid_mask.tolist() == [True, True, False]


def test_references_without_known_keys_are_reported_not_checked():
    t = table(ID, col("coi", STR, ident=LINK, references="episode.coi_id"))
    result = validate(raw(id=ids(2), coi=["COI-1", "COI-9"]), t, known_keys={})
    report = result.report("coi")
    assert report.reference == "not checked"
    assert "not checked" in report.warnings[0]
    assert result.valid_mask.all()


def test_references_use_a_key_sets_own_isin():
    """Known keys may be pseudonyms: the hub passes a set-like with its own isin()."""

    class Pseudonyms(set[str]):
        def isin(self, values: pd.Series) -> pd.Series:
            return values.str.lower().isin({"coi-1"})

    t = table(ID, col("coi", STR, ident=LINK, references="episode.coi_id"))
    result = validate(
        raw(id=ids(2), coi=["COI-1", "COI-2"]), t, known_keys={"episode.coi_id": Pseudonyms()}
    )
    assert result.valid_mask.tolist() == [True, False]


# What the contributor sees ----------------------------------------------------------------


def test_row_numbers_are_file_rows():
    t = table(ID, col("x", NUM))
    result = validate(raw(id=ids(3), x=["bad", "1", "2"]), t)
    assert result.report("x").by_rule[Rule.TYPE].rows == [2]  # header is row 1
    assert result.row_errors["row"].tolist() == [2]
    chunk = validate(raw(id=ids(3), x=["1", "2", "bad"]), t, first_row=1002)
    assert chunk.row_errors["row"].tolist() == [1004]


def test_invalid_rows_are_kept_and_named():
    t = table(ID, col("x", NUM, minimum=0))
    frame = raw(id=ids(4), x=["1", "-1", "x", "2"])
    result = validate(frame, t)
    assert len(result.frame) == 4
    assert result.frame["id"].tolist() == ids(4)
    assert result.summary == {
        "rows": 4,
        "valid_rows": 2,
        "invalid_rows": 2,
        "by_rule": {"type": 1, "minimum": 1},
        "ignored_columns": [],
    }
    assert sorted(result.row_errors["row"]) == [3, 4]


def test_identifier_examples_are_masked_everywhere():
    t = table(ID, col("mrn", STR, ident=DIRECT), col("x", NUM, minimum=0))
    frame = raw(
        id=["A9999 24 000001", "A9999 24 000001", "B7"],
        mrn=["MRN123456", "MRN654321", "MRN777777"],
        x=["1", "2", "3"],
    )
    result = validate(frame, t)
    error = result.report("id").by_rule[Rule.DUPLICATE_KEY]
    assert error.examples == ["A…1"]
    assert mask_value("MRN123456") == "M…6"
    text = json.dumps(result.to_dict()) + report_csv(result) + result.row_errors.to_csv()
    assert "A9999 24 000001" not in text and "24 000001" not in text
    assert "A…1" in text


def test_formula_looking_values_are_data_but_neutralised_in_the_report():
    t = table(ID, col("note", STR), col("x", NUM))
    frame = raw(id=['=HYPERLINK("http://x")', "b"], note=["=1+1", "@SUM(A1)"], x=["+1", "-x"])
    result = validate(frame, t)
    assert result.frame["note"].tolist() == ["=1+1", "@SUM(A1)"]  # kept as data
    assert result.frame["x"].iloc[0] == 1.0
    report = report_csv(result)
    rows = list(csv.reader(io.StringIO(report)))
    assert rows[0] == ["row", "column", "source_column", "rule", "value", "message"]
    cells = [cell for row in rows for cell in row]
    assert "'-x" in cells
    assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in cells)


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ("=1+1", "'=1+1"),
        ("+41 79", "'+41 79"),
        ("-5", "-5"),  # a plain negative number runs nothing
        ("-5-1", "'-5-1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("plain", "plain"),
        (None, ""),
        (3, "3"),
    ],
)
def test_csv_safe(value, safe):
    assert csv_safe(value) == safe


def test_report_streams_in_chunks_and_lists_every_invalid_row():
    t = table(ID, col("x", NUM))
    result = validate(raw(id=ids(10), x=["bad"] * 10), t)
    chunks = list(iter_report_csv(result, chunk_rows=3))
    assert len(chunks) == 2 + 4  # header, problems, then 10 rows in 3-row chunks
    lines = list(csv.DictReader(io.StringIO("".join(chunks))))
    per_row = [r for r in lines if r["row"]]
    assert [int(r["row"]) for r in per_row] == list(range(2, 12))
    assert lines[-11]["rule"] == "summary"
    assert "0 of 10 rows passed" in lines[-11]["message"]


def test_to_dict_is_json_safe_and_holds_no_frames():
    t = table(ID, col("x", NUM, maximum=1))
    result = validate(raw(id=ids(3), x=["2", "0.5", "abc"]), t)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["summary"]["invalid_rows"] == 2
    assert [e["rule"] for e in data["columns"][1]["errors"]] == ["type", "maximum"]
    assert len(data["messages"]) == 2
    assert "frame" not in data and "row_errors" not in data


def test_extra_columns_are_ignored_and_said_so():
    result = validate(raw(id=["a"], stray=["b"]), table(ID))
    assert list(result.frame.columns) == ["id"]
    assert result.summary["ignored_columns"] == ["stray"]
    assert "`stray`" in result.warnings[0]


# End to end on the real CDM ---------------------------------------------------------------


def test_a_site_file_end_to_end(cdm):
    t = cdm.table("collection")
    upload = raw(
        **{
            "Entnahme-Nr.": ["A9999 24 000001", "A9999 24 000002", "A9999 24 000003"],
            "Patient ID": ["COI-1", "COI-2", "COI-3"],
            "Entnahmedatum": ["03/15/2024", "04/01/2024", "2024-04-02"],
            "Fresh/Cryo": ["Fresh", "cryopreserved", "fresh"],
            "ALC (cells/µL)": ["1,340", "470", "910000"],
            "Blasts": ["0.046", "0.176", "0.05"],
        }
    )
    proposal = propose_mapping(upload, t)
    mapped = apply_mapping(upload, proposal, t)
    result = validate(
        mapped,
        t,
        factors=proposal.factors(),
        known_keys={"episode.coi_id": {"COI-1", "COI-2", "COI-3"}},
    )
    assert result.frame["collection_date"].dt.strftime("%Y-%m-%d").tolist() == [
        "2024-03-15",
        "2024-04-01",
        "2024-04-02",
    ]
    assert result.frame["alc_pre"].tolist()[:2] == pytest.approx([1.34, 0.47])
    assert result.frame["blasts_pre"].tolist() == pytest.approx([4.6, 17.6, 5.0])
    assert result.valid_mask.tolist() == [True, True, False]
    error = result.report("alc_pre").by_rule[Rule.MAXIMUM]
    assert error.rows == [4]
    assert "×0.001" in error.message
    assert result.report("alc_pre").source == "ALC (cells/µL)"


def test_two_hundred_thousand_rows_map_and_validate():
    """A vectorisation sanity run (no time asserted): every value is checked, the invalid
    ones are found at the right file rows."""
    t = load_cdm().table("collection")
    n = 200_000
    rng = np.random.default_rng(7)
    days = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    upload = pd.DataFrame(
        {
            "DIN": np.char.add("A9999 24 ", np.char.zfill(np.arange(n).astype(str), 6)),
            "COI": np.char.add("COI-", (np.arange(n) // 2).astype(str)),
            "Collection Date": days.strftime("%d/%m/%Y"),
            "Fresh/Cryo": rng.choice(["Fresh", "cryopreserved"], n),
            "ALC (cells/µL)": rng.integers(100, 4000, n).astype(str),
            "PLT (G/L)": np.char.mod("%.1f", rng.uniform(50, 400, n)),
            "Blasts %": np.char.mod("%.1f", rng.uniform(0, 30, n)),
            "Complication": rng.choice(["yes", "no"], n),
        }
    ).astype(object)
    upload.iloc[[10, 5000, 199_999], 4] = "n.d."
    upload.iloc[77, 0] = upload.iloc[78, 0]
    proposal = propose_mapping(upload, t)
    assert proposal.missing_required == []
    result = validate(apply_mapping(upload, proposal, t), t, factors=proposal.factors())
    assert isinstance(result, ValidationResult)
    assert result.summary["rows"] == n
    assert result.report("alc_pre").by_rule[Rule.TYPE].rows == [12, 5002, 200_001]
    assert result.report("din").by_rule[Rule.DUPLICATE_KEY].rows == [79, 80]
    assert result.summary["invalid_rows"] == 5
    assert result.frame["alc_pre"].between(0.1, 4.0).sum() == n - 3


# ISBT 128 check characters ------------------------------------------------------------------


def test_din_with_a_wrong_check_character_is_a_warning_not_an_error(cdm):
    from anonymisation.isbt128 import ALPHABET, din_check_character

    t = cdm.table("collection")
    expected = din_check_character("A999924000004")
    wrong = ALPHABET[(ALPHABET.index(expected) + 1) % 36]  # certainly not the right one
    upload = raw(
        DIN=[
            f"A9999 24 000001 00 {din_check_character('A999924000001')}",
            "A9999 24 000002",  # no check character: not judged
            f"A9999 24 000003 00 {din_check_character('A999924000003')}",
            f"A9999 24 000004 00 {wrong}",
        ],
        **{"Patient ID": ["COI-1", "COI-2", "COI-3", "COI-4"]},
    )
    mapped = apply_mapping(upload, propose_mapping(upload, t), t)

    result = validate(mapped, t, mask_identifiers=False)
    warnings = [w for w in result.report("din").warnings if "check character" in w]
    assert len(warnings) == 1
    assert warnings[0].startswith("1 DIN with a check character that does not match (row 5)")
    assert (
        f"DIN A9999 24 000004 has check character {wrong}; ISBT 128 says it should be "
        f"{expected}: a typing error?" in warnings[0]
    )
    assert "{" not in warnings[0] and "Din(" not in warnings[0]
    # a warning, not a rule: no row is held back for it
    assert Rule.TYPE not in result.report("din").by_rule
    assert result.report("din").errors == []

    masked = validate(mapped, t)
    shown = [w for w in masked.report("din").warnings if "check character" in w][0]
    assert "A9999 24 000004" not in shown and "DIN A…4 has check character" in shown


def test_dins_with_right_or_no_check_characters_raise_no_warning(cdm):
    from anonymisation.isbt128 import din_check_character

    t = cdm.table("collection")
    dins = [f"A999924{n:06d}" for n in range(1, 40)]
    upload = raw(
        DIN=[d + din_check_character(d) for d in dins] + ["A9999 24 000777"],
        **{"Patient ID": [f"COI-{i}" for i in range(40)]},
    )
    mapped = apply_mapping(upload, propose_mapping(upload, t), t)
    result = validate(mapped, t)
    assert not [w for w in result.report("din").warnings if "check character" in w]
