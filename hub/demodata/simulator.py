"""The demo consortium's process data in the data model's own terms: patients, collections,
manufacturing, release tests, custody and infusion with realistic distributions and
correlations (:func:`generate_frames`). The sites' habits are :mod:`hub.demodata.site_formats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from faker import Faker

from contracts.cdm import ColumnType, Table, load_cdm
from hub.demodata.site_formats import (
    TABLES,
    Institution,
    SiteFormat,
    list_institutions,
    site_format,
)

# Products: what the numbers depend on -----------------------------------------------------


@dataclass(frozen=True)
class _Product:
    culture_days: float
    vein_to_vein: float  # median days from first collection to infusion
    fresh_share: float
    car_limit: float  # CAR+ % release limit
    beads: bool
    code: str  # ISBT 128-like product code of the final product


_PRODUCTS: dict[str, _Product] = {
    "axi-cel": _Product(7, 30, 0.95, 15, False, "S2041A00"),
    "brexu-cel": _Product(7, 32, 0.95, 15, True, "S2047A00"),
    "liso-cel": _Product(9, 36, 0.9, 15, True, "S2052A00"),
    "tisa-cel": _Product(9, 48, 0.0, 10, True, "S2036A00"),
    "ide-cel": _Product(10, 40, 0.9, 15, True, "S2063A00"),
    "cilta-cel": _Product(10, 45, 0.9, 15, True, "S2066A00"),
    "academic": _Product(9, 24, 0.85, 10, True, "S2090A00"),
}
_STARTING_MATERIAL_CODE = "S1180A00"
_INDICATIONS = ("LBCL", "MM", "ALL", "FL", "MCL", "CLL")
_INDICATION_P = (0.48, 0.16, 0.1, 0.09, 0.1, 0.07)
_PRODUCT_BY_INDICATION: dict[str, tuple[tuple[str, ...], tuple[float, ...]]] = {
    "LBCL": (("axi-cel", "liso-cel", "tisa-cel"), (0.45, 0.32, 0.23)),
    "FL": (("axi-cel", "tisa-cel", "liso-cel"), (0.5, 0.3, 0.2)),
    "MCL": (("brexu-cel", "liso-cel"), (0.75, 0.25)),
    "CLL": (("liso-cel",), (1.0,)),
    "MM": (("ide-cel", "cilta-cel"), (0.45, 0.55)),
    "ALL": (("tisa-cel", "brexu-cel"), (0.6, 0.4)),
}
_BENDA = ("none", "ge_24_months", "3_to_24_months", "lt_3_months")
_BENDA_P = (0.62, 0.14, 0.14, 0.10)
_BENDA_OR = {"none": 1.0, "ge_24_months": 1.4, "3_to_24_months": 3.0, "lt_3_months": 5.5}
_BENDA_FITNESS = {"none": 0.0, "ge_24_months": -0.15, "3_to_24_months": -0.45, "lt_3_months": -0.7}
_ABO = ("O+", "A+", "B+", "AB+", "O-", "A-", "B-", "AB-")
_ABO_P = (0.37, 0.36, 0.08, 0.03, 0.07, 0.06, 0.02, 0.01)
_HOSPITALS = (
    "St Aurelia University Hospital",
    "Royal Harbour Infirmary",
    "Westgate General Hospital",
    "Northfield Cancer Centre",
)
_COMMERCIAL_FACILITIES = {
    "axi-cel": "Meridian Biologics, Amsterdam",
    "brexu-cel": "Meridian Biologics, Amsterdam",
    "liso-cel": "Crestline Cell Works, Leiden",
    "tisa-cel": "Alpenrose Therapeutics, Stein",
    "ide-cel": "Crestline Cell Works, Leiden",
    "cilta-cel": "Halcyon Cell Therapy, Ghent",
}
_TESTS = (
    ("sterility", None, "negative"),
    ("mycoplasma", None, "negative"),
    ("endotoxin", "EU/mL", "<= 0.5"),
    ("rcl", None, "not detected"),
    ("vcn", "copies/cell", "<= 5"),
    ("viability", "%", ">= {viability}"),
    ("car_positive", "%", ">= {car}"),
    ("cd3_positive", "%", ">= 80"),
    ("potency_ifng", "pg/mL", ">= 500"),
    ("residual_beads", "beads/3x10^6 cells", "< 100"),
)


# The simulation ---------------------------------------------------------------------------


@dataclass
class _Episode:
    coi_id: str
    site: str
    product: str
    indication: str
    platform: str
    weight_kg: float
    fitness: float
    benda: str
    patient_name: str
    title: str
    mrn: str
    phone: str
    email: str
    first_day: date


class _Simulator:
    """Generates one institution's tables in CDM names and canonical units."""

    def __init__(self, index: int, inst: Institution, fmt: SiteFormat, seed: int) -> None:
        self.index, self.inst, self.fmt = index, inst, fmt
        self.rng = np.random.default_rng([seed, index])
        self.fake = Faker(fmt.locale)
        self.fake.seed_instance(seed * 7919 + index)
        self.uk = fmt.locale == "en_GB"
        self.prefix = "".join(part[0] for part in inst.slug.split("-")[:2]).upper()
        self.staff = [self._person() for _ in range(12)]
        self.doctors = [self._person() for _ in range(6)]
        self.qps = [self._person() for _ in range(3)]
        self.fins: dict[str, str] = {}
        self.counters: dict[str, int] = {}
        self.tables: dict[str, list[dict[str, Any]]] = {t: [] for t in TABLES}

    # small helpers

    def _person(self) -> str:
        return f"{self.fake.first_name()} {self.fake.last_name()}"

    def _pick(self, items: tuple[str, ...] | list[str], p: tuple[float, ...] | None = None) -> str:
        """One item, uniformly or with weights ``p`` (cheaper than ``Generator.choice``)."""
        if p is None:
            return items[int(self.rng.integers(len(items)))]
        r, acc = self.rng.random(), 0.0
        for item, weight in zip(items, p, strict=True):
            acc += weight
            if r < acc:
                return item
        return items[-1]

    def _next(self, key: str) -> int:
        self.counters[key] = self.counters.get(key, 0) + 1
        return self.counters[key]

    def _u(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))

    def _fin(self, facility: str) -> str:
        """ISBT 128 facility identification number of a collection site."""
        if facility not in self.fins:
            letter = "ABCDEFGHJKLMNPQRSTUVW"[int(self.rng.integers(0, 21))]
            self.fins[facility] = f"{letter}{int(self.rng.integers(1000, 9999)):04d}"
        return self.fins[facility]

    def _coi(self, site: str, day: date) -> str:
        fin, yy, seq = self._fin(site), day.strftime("%y"), self._next("coi")
        return {
            "csv": f"COI-{fin}-{yy}-{seq:06d}",
            "xlsx": f"{fin}{yy}C{seq:06d}",
        }.get(self.fmt.key, f"{fin}-{yy}{seq:06d}-C")

    def _din(self, facility: str, day: date) -> str:
        fin, yy = self._fin(facility), day.strftime("%y")
        seq = self._next(f"din-{fin}-{yy}") + 100 * (self.index + 1)
        return f"{fin}{yy}{seq:06d}" if self.fmt.key == "xlsx" else f"{fin} {yy} {seq:06d}"

    def _lot(self, day: date) -> str:
        yy, seq = day.strftime("%y"), self._next("lot")
        return {
            "csv": f"{self.prefix}{yy}-{seq:05d}",
            "xlsx": f"LOT{yy}{seq:06d}",
        }.get(self.fmt.key, f"{self.prefix}-CAR-{yy}-{seq:04d}")

    def _deviation_id(self, day: date) -> str:
        seq = self._next("dev")
        return {
            "csv": f"DEV-{day.year}-{seq:04d}",
            "xlsx": f"NCR-{seq:05d}",
        }.get(self.fmt.key, f"{self.prefix}-QE-{day.strftime('%y')}-{seq:03d}")

    def _phone(self) -> str:
        if self.uk:
            return f"07700 900{int(self.rng.integers(0, 1000)):03d}"
        return f"({int(self.rng.integers(201, 990))}) 555-01{int(self.rng.integers(0, 100)):02d}"

    def _email(self, name: str) -> str:
        first, last = name.lower().replace("'", "").split(" ", 1)
        domain = self._pick(("example.com", "example.org", "example.net"))
        return f"{first}.{last.replace(' ', '')}@{domain}"

    def _national_number(self) -> str:
        if not self.uk:
            return (
                f"9{int(self.rng.integers(0, 100)):02d}-{int(self.rng.integers(1, 100)):02d}-"
                f"{int(self.rng.integers(1, 10000)):04d}"
            )
        while True:  # NHS number from the 999 test range with a valid modulus-11 check digit
            digits = [9, 9, 9, *(int(d) for d in self.rng.integers(0, 10, 6))]
            check = 11 - sum(d * (10 - i) for i, d in enumerate(digits)) % 11
            check = 0 if check == 11 else check
            if check != 10:
                text = "".join(map(str, digits)) + str(check)
                return f"{text[:3]} {text[3:6]} {text[6:]}"

    def _mrn(self) -> str:
        number = int(self.rng.integers(100000, 9999999))
        return {"csv": f"H{number:07d}", "xlsx": f"{number:08d}"}.get(
            self.fmt.key, f"MRN-{number // 10000:04d}-{number % 10000:04d}"
        )

    @staticmethod
    def _at(day: date, hours: float) -> datetime:
        return datetime(day.year, day.month, day.day) + timedelta(minutes=round(hours * 60))

    # the story of one institution

    def run(self, patients: int) -> dict[str, pd.DataFrame]:
        start = date(2021, 1, 4)
        offsets = np.sort(self.rng.integers(0, 1260, patients))
        for offset in offsets:
            self._episode(start + timedelta(days=int(offset)))
        frames = {t: pd.DataFrame(rows) for t, rows in self.tables.items()}
        custody = frames["custody_event"].sort_values(["timestamp", "unit_id"], kind="stable")
        if self.fmt.own_custody_only:
            external = set(_COMMERCIAL_FACILITIES.values())
            theirs = (custody["to_site"].isin(external) & (custody["event"] == "received")) | (
                custody["from_site"].isin(external) & (custody["event"] != "shipped")
            )
            custody = custody[~theirs]
        custody["event_id"] = [self._event_id(i + 1) for i in range(len(custody))]
        frames["custody_event"] = custody.reset_index(drop=True)
        return frames

    def _event_id(self, seq: int) -> str:
        return {"csv": f"CE{seq:07d}", "xlsx": f"{100000 + seq}"}.get(
            self.fmt.key, f"evt_{seq:06d}"
        )

    def _episode(self, day0: date) -> None:
        rng = self.rng
        indication = self._pick(_INDICATIONS, _INDICATION_P)
        names, weights = _PRODUCT_BY_INDICATION[indication]
        product = self._pick(names, weights)
        if self.inst.kind == "academic" and rng.random() < 0.4:
            product = "academic"
        platform = "point_of_care" if product == "academic" else "central"
        if self.inst.kind == "manufacturer":
            site = self._pick(_HOSPITALS)
        else:
            site = self.inst.name
        if indication == "ALL" and rng.random() < 0.55:
            age = int(rng.integers(3, 26))
        elif indication == "ALL":
            age = int(np.clip(rng.normal(44, 13), 18, 80))
        else:
            age = int(np.clip(rng.normal(62, 10.5), 19, 93))
        sex = "male" if rng.random() < 0.6 else "female"
        if age < 18:
            weight = float(np.clip(2.4 * age + 8 + rng.normal(0, 4), 12, 95))
        else:
            weight = float(np.clip(rng.normal(83 if sex == "male" else 70, 14), 40, 170))
        benda = (
            self._pick(_BENDA, _BENDA_P) if indication in ("LBCL", "FL", "MCL", "CLL") else "none"
        )
        lines = int(np.clip(1 + rng.poisson(2.6 if indication == "MM" else 1.6), 1, 8))
        fitness = float(rng.normal() + _BENDA_FITNESS[benda] - 0.12 * (lines - 2))
        first = self.fake.first_name_male() if sex == "male" else self.fake.first_name_female()
        name = f"{first} {self.fake.last_name()}"
        title = ("Mr" if sex == "male" else self._pick(("Mrs", "Ms", "Miss"))) if age >= 18 else ""
        dob = day0 - timedelta(days=int(age * 365.25 + rng.integers(1, 364)))
        exact_age = day0.year - dob.year - ((day0.month, day0.day) < (dob.month, dob.day))
        ep = _Episode(
            coi_id=self._coi(site, day0),
            site=site,
            product=product,
            indication=indication,
            platform=platform,
            weight_kg=round(weight, 1),
            fitness=fitness,
            benda=benda,
            patient_name=name,
            title=title,
            mrn=self._mrn(),
            phone=self._phone(),
            email=self._email(name),
            first_day=day0,
        )
        self.tables["episode"].append(
            {
                "coi_id": ep.coi_id,
                "site": site,
                "product_class": "autologous_car_t",
                "product": product,
                "indication": indication,
                "age": exact_age,
                "sex": sex,
                "weight_kg": ep.weight_kg,
                "prior_lines": lines,
                "bendamustine_exposure": benda,
                "bridging": bool(rng.random() < 0.62),
                "abo_rh": self._pick(_ABO, _ABO_P),
                "patient_name": name,
                "mrn": ep.mrn,
                "date_of_birth": pd.Timestamp(dob),
                "nhs_number": self._national_number(),
                "phone": ep.phone,
                "email": ep.email,
                "address": self.fake.address().replace("\n", ", "),
            }
        )

        collection = self._collect(ep, day0)
        outcome, mode = self._outcome(ep, collection, first=True)
        lot = self._manufacture(ep, collection, outcome, mode)
        if outcome == "failed" and rng.random() < 0.55:
            retained = collection["fresh_or_cryo"] == "cryopreserved" and rng.random() < 0.5
            lot["_disposition"] = "remanufactured" if retained else "recollected"
            self._deviation_for_lot(ep, lot)
            if retained:
                retry = collection
            else:
                retry = self._collect(
                    ep, lot["_decided"] + timedelta(days=int(rng.integers(5, 15)))
                )
            outcome, mode = self._outcome(ep, retry, first=False)
            lot = self._manufacture(ep, retry, outcome, mode, after=None if not retained else lot)
        self._finish(ep, lot)

    def _collect(self, ep: _Episode, day: date) -> dict[str, Any]:
        rng = self.rng
        f = ep.fitness + 0.3 * rng.normal()
        alc = math.exp(math.log(1.3) + 0.5 * f + 0.25 * rng.normal())
        cd3_fraction = float(np.clip(rng.normal(0.73, 0.07), 0.35, 0.92))
        if ep.indication == "CLL":
            alc *= math.exp(rng.normal(math.log(12), 0.6))
            cd3_fraction = self._u(0.04, 0.15)
        alc = float(np.clip(alc, 0.05, 400))
        cd3 = alc * cd3_fraction * 1000
        platelets = float(
            np.clip(math.exp(math.log(175) + 0.25 * f + 0.35 * rng.normal()), 12, 650)
        )
        ratio = math.exp(math.log(0.6) + 0.25 * f + 0.5 * rng.normal())
        if ep.benda in ("3_to_24_months", "lt_3_months"):
            ratio *= 0.75
        blasts = (
            float(np.clip(math.exp(rng.normal(math.log(5), 1.1)), 0, 95))
            if ep.indication == "ALL"
            else math.nan
        )
        bvp = float(np.clip(rng.normal(12.3, 2.6) - 1.2 * math.log(cd3 / 700), 3, 19))
        efficiency = float(np.clip(math.exp(rng.normal(math.log(0.9), 0.38)), 0.25, 1.0))
        cd3_yield = float(np.clip(cd3 * bvp * efficiency / 1000, 0.05, 120))
        fresh = rng.random() < _PRODUCTS[ep.product].fresh_share
        facility = f"{ep.site.split(',')[0]} Apheresis Unit"
        complication = bool(rng.random() < 0.15)
        nurse = self._pick(self.staff)
        row = {
            "din": self._din(facility, day),
            "coi_id": ep.coi_id,
            "collection_date": pd.Timestamp(day),
            "collection_facility": facility,
            "fresh_or_cryo": "fresh" if fresh else "cryopreserved",
            "device": self._pick(("Spectra Optia", "Amicus"), (0.8, 0.2)),
            "alc_pre": round(alc, 2),
            "cd3_pre": round(cd3),
            "platelets_pre": round(platelets),
            "cd4_cd8_ratio_pre": round(ratio, 2),
            "blasts_pre": round(blasts, 1),
            "blood_volume_processed": round(bvp, 1),
            "cd3_yield": round(cd3_yield, 2),
            "tnc_yield": round(cd3_yield / self._u(0.45, 0.7), 2),
            "product_volume": round(float(np.clip(rng.normal(210, 55), 60, 450))),
            "anticoagulant": "ACD-A" if rng.random() < 0.9 else "ACD-A+heparin",
            "complication": complication,
            "collected_by": nurse,
            "notes": self._collection_note(ep, nurse, bvp) if complication else None,
        }
        self.tables["collection"].append(row)
        hour = self._u(8, 13)
        end = self._at(day, hour + self._u(3, 5))
        self._custody(ep, row["din"], "collected", end, facility, None, fresh=True)
        row["_end"] = end
        row["_facility"] = facility
        return row

    def _collection_note(self, ep: _Episode, nurse: str, bvp: float) -> str:
        who = f"{ep.title} {ep.patient_name}".strip()
        return self._pick(
            (
                f"Citrate tingling at {bvp * 0.6:.0f} L; calcium given by {nurse}. "
                f"{who} tolerated the rest well.",
                f"Line clotted, restarted by {nurse}. Called {who}'s ward to push the slot by 1 h.",
                f"Low venous access flow; {nurse} paged Dr {self._pick(self.doctors)} "
                f"(bleep via {ep.phone}).",
            )
        )

    def _outcome(self, ep: _Episode, collection: dict[str, Any], first: bool) -> tuple[str, str]:
        """Manufacturing outcome: failure risk from bendamustine, platelets, CD4:CD8, yield."""
        rng = self.rng
        logit = -3.95 + math.log(_BENDA_OR[ep.benda])
        logit += math.log(2.2) * (collection["platelets_pre"] < 100)
        logit += math.log(3.3) * (collection["cd4_cd8_ratio_pre"] < 1 / 3)
        logit += math.log(4.0) * (collection["cd3_yield"] < 1.0)
        logit += 0.35 * (ep.platform == "point_of_care")
        if not first:
            logit -= 0.7
        if rng.random() < 1 / (1 + math.exp(-logit)):
            mode = self._pick(
                ("expansion", "viability", "contamination", "vcn"), (0.55, 0.25, 0.1, 0.1)
            )
            return "failed", mode
        p_nonconforming = 0.015 + 0.02 * (collection["cd4_cd8_ratio_pre"] < 1 / 3)
        if rng.random() < p_nonconforming:
            return "non_conforming", self._pick(("viability", "car", "dose"), (0.6, 0.25, 0.15))
        return "conforming", ""

    def _manufacture(
        self,
        ep: _Episode,
        col: dict[str, Any],
        outcome: str,
        mode: str,
        after: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One lot from a collection (``after``: a failed lot whose retained starting
        material is used again, so nothing is shipped)."""
        rng = self.rng
        spec = _PRODUCTS[ep.product]
        poc = ep.platform == "point_of_care"
        if poc:
            facility = f"{self.inst.name} GMP Unit"
        elif self.inst.kind == "manufacturer":
            facility = self._pick(
                ("Northbridge Cell Therapies, Harwell", "Northbridge Cell Therapies, Leiden")
            )
        else:
            facility = _COMMERCIAL_FACILITIES[ep.product]
        # Starting material to the manufacturing site.
        end: datetime = col["_end"]
        if after is None:
            fresh = col["fresh_or_cryo"] == "fresh"
            t = end
            if not fresh:
                t = t + timedelta(hours=self._u(2, 5))
                self._custody(
                    ep, col["din"], "cryopreserved", t, col["_facility"], None, fresh=False
                )
                t = t + timedelta(days=int(rng.integers(3, 13)), hours=self._u(0, 3))
            t = t + timedelta(hours=self._u(0.5, 2))
            self._custody(ep, col["din"], "packed", t, col["_facility"], None, fresh=fresh)
            if poc:  # an internal hand-over from the apheresis unit to the GMP unit
                received = t + timedelta(hours=self._u(0.3, 1.5))
                self._custody(
                    ep, col["din"], "received", received, col["_facility"], facility, fresh=fresh
                )
            else:
                t = t + timedelta(hours=self._u(0.5, 3))
                ship = self._shipment()
                self._custody(
                    ep,
                    col["din"],
                    "shipped",
                    t,
                    col["_facility"],
                    facility,
                    fresh=fresh,
                    shipment=ship,
                )
                received = t + timedelta(hours=self._u(16, 30))
                self._custody(
                    ep,
                    col["din"],
                    "received",
                    received,
                    col["_facility"],
                    facility,
                    fresh=fresh,
                    shipment=ship,
                    receipt=True,
                )
            start = received.date() + timedelta(days=int(received.hour >= 15))
        else:  # remanufacture from retained cryopreserved starting material
            start = after["_decided"] + timedelta(days=int(rng.integers(2, 6)))
        culture = int(np.clip(round(rng.normal(spec.culture_days, 1.0)), 7, 13))
        harvest = start + timedelta(days=culture)
        qc_days = float(
            np.clip(rng.normal(3.2, 0.7), 2, 5) if poc else np.clip(rng.normal(5.2, 1.0), 4, 9)
        )
        if outcome == "non_conforming":
            qc_days += float(rng.integers(2, 6))  # the out-of-specification investigation
        decided = harvest + timedelta(days=round(qc_days))

        viability_limit = 70 if poc else 80
        viability = float(np.clip(rng.normal(90.5, 3.5), viability_limit + 0.5, 99.2))
        car = float(np.clip(math.exp(rng.normal(math.log(28), 0.3)), spec.car_limit + 1, 75))
        fold = float(np.clip(math.exp(rng.normal(math.log(30), 0.45)), 6, 100))
        vcn = float(np.clip(rng.normal(1.9, 0.35), 0.8, 4.6))
        sterile = True
        if mode == "viability":
            viability = viability_limit - self._u(1, 6 if outcome == "non_conforming" else 25)
        elif mode == "car":
            car = spec.car_limit - self._u(0.5, 4)
        elif mode == "expansion":
            fold = self._u(1.2, 5)
        elif mode == "contamination":
            sterile = False
        elif mode == "vcn":
            vcn = self._u(5.2, 8)
        seed_cells = self._u(0.1, 0.2) if mode != "dose" else self._u(0.03, 0.05)
        tvc = seed_cells * fold
        lot_id = self._lot(start)
        released = outcome != "failed"
        row = {
            "lot_id": lot_id,
            "coi_id": ep.coi_id,
            "din": col["din"],
            "product_code": spec.code,
            "processing_facility": facility,
            "platform": ep.platform,
            "manufacturing_start": pd.Timestamp(start),
            "release_date": pd.Timestamp(decided) if released else pd.NaT,
            "expiration_date": pd.Timestamp(harvest + timedelta(days=180 if poc else 270))
            if released
            else pd.NaT,
            "product_status": "available" if released else "discarded",
            "manufacturing_outcome": outcome,
            "culture_days": culture,
            "moi": round(self._u(5, 10), 1),
            "fold_expansion": round(fold, 1),
            "viability": round(viability, 1),
            "transduction_efficiency": round(car, 1),
            "vcn": round(vcn, 2),
            "cd3_pct": round(float(np.clip(rng.normal(97.6, 1.2), 88, 99.9)), 1),
            "cd4_cd8_ratio": round(self._product_ratio(col["cd4_cd8_ratio_pre"]), 2),
            "total_viable_cells": round(tvc, 2),
            "released_by": self._pick(self.qps) if released else None,
        }
        self.tables["batch"].append(row)
        self._release_tests(row, spec, viability_limit, sterile, harvest, decided)
        # Internal bookkeeping the tables do not carry.
        row["_harvest"] = harvest
        row["_decided"] = decided
        row["_mode"] = mode
        row["_facility"] = facility
        row["_col"] = col
        if released:
            frozen = self._at(harvest, self._u(14, 19))
            self._custody(
                ep,
                col["din"],
                "cryopreserved",
                frozen,
                facility,
                None,
                fresh=False,
                lot=lot_id,
                code=spec.code,
            )
            row["_released_at"] = self._at(decided, self._u(9, 17))
            self._custody(
                ep,
                col["din"],
                "qa_released",
                row["_released_at"],
                facility,
                None,
                fresh=False,
                lot=lot_id,
                code=spec.code,
            )
        return row

    def _release_tests(
        self,
        lot: dict[str, Any],
        spec: _Product,
        viability_limit: float,
        sterile: bool,
        harvest: date,
        decided: date,
    ) -> None:
        rng = self.rng
        values: dict[str, float] = {
            "endotoxin": round(
                float(np.clip(math.exp(rng.normal(math.log(0.08), 0.6)), 0.01, 0.45)), 3
            ),
            "vcn": lot["vcn"],
            "viability": lot["viability"],
            "car_positive": lot["transduction_efficiency"],
            "cd3_positive": lot["cd3_pct"],
            "potency_ifng": self._potency(lot["transduction_efficiency"], spec.car_limit),
            "residual_beads": float(rng.poisson(12)),
        }
        for test, unit, limit in _TESTS:
            if test == "residual_beads" and not spec.beads:
                continue
            limit = limit.format(viability=viability_limit, car=spec.car_limit)
            value = values.get(test, math.nan)
            qualitative = None
            if test == "sterility":
                qualitative = "negative" if sterile else "positive"
            elif test == "mycoplasma":
                qualitative = "negative"
            elif test == "rcl":
                qualitative = "not_detected"
            passed = _meets(limit, value, qualitative)
            span = max((decided - harvest).days, 1)
            self.tables["release_test"].append(
                {
                    "lot_id": lot["lot_id"],
                    "test": test,
                    "value": value,
                    "qualitative_result": qualitative,
                    "unit": unit,
                    "limit": limit,
                    "passed": passed,
                    "test_date": pd.Timestamp(
                        harvest + timedelta(days=int(rng.integers(1, span + 1)))
                    ),
                }
            )

    def _potency(self, car: float, car_limit: float) -> float:
        """IFN-gamma release (pg/mL) scales with the CAR+ share; a lot whose CAR+ share
        meets its limit also meets the potency limit (500 pg/mL)."""
        value = math.exp(self.rng.normal(math.log(2200), 0.35)) * car / 28
        if car >= car_limit:
            value = max(value, self._u(520, 700))
        return float(round(value))

    def _finish(self, ep: _Episode, lot: dict[str, Any]) -> None:
        """Deliver and infuse the final lot (or not), with the deviations on the way."""
        rng = self.rng
        spec = _PRODUCTS[ep.product]
        poc = ep.platform == "point_of_care"
        outcome = lot["manufacturing_outcome"]
        col = lot["_col"]
        if outcome == "failed":
            lot["_disposition"] = "not_infused"
            self._deviation_for_lot(ep, lot)
            return
        infused = rng.random() > 0.06  # progression or death before infusion
        if outcome == "non_conforming":
            infused = infused and rng.random() < 0.85
            lot["_disposition"] = "oos_infused" if infused else "not_infused"
            self._deviation_for_lot(ep, lot)
        decided: date = lot["_decided"]
        gap = (decided - ep.first_day).days + (3 if poc else 5)
        target = round(math.exp(rng.normal(math.log(spec.vein_to_vein), 0.16)))
        infusion_day = ep.first_day + timedelta(days=max(target, gap))
        if rng.random() < 0.01:  # a delay deviation
            extra = int(rng.integers(2, 7))
            infusion_day += timedelta(days=extra)
            self._deviation(
                ep,
                lot,
                "delay",
                "transport" if not poc else "administration",
                "released",
                infusion_day - timedelta(days=extra),
                extra=extra,
            )
        elif rng.random() < 0.005:
            self._deviation(ep, lot, "label_coi_mismatch", "release", "released", decided)
        facility = lot["_facility"]
        din, lot_id, code = col["din"], lot["lot_id"], spec.code
        shipped_day = decided + timedelta(days=int(rng.integers(0, 2)))
        if not poc:
            t = max(
                self._at(shipped_day, self._u(8, 10)),
                lot["_released_at"] + timedelta(minutes=int(rng.integers(20, 90))),
            )
            self._custody(ep, din, "packed", t, facility, None, fresh=False, lot=lot_id, code=code)
            ship = self._shipment()
            t = t + timedelta(hours=self._u(1, 4))
            self._custody(
                ep,
                din,
                "shipped",
                t,
                facility,
                ep.site,
                fresh=False,
                lot=lot_id,
                code=code,
                shipment=ship,
            )
            t = t + timedelta(hours=self._u(18, 40))
            self._custody(
                ep,
                din,
                "received",
                t,
                facility,
                ep.site,
                fresh=False,
                lot=lot_id,
                code=code,
                shipment=ship,
                receipt=True,
            )
        if not infused:
            return
        lot["product_status"] = "applied"
        t = self._at(infusion_day, self._u(8, 10.5))
        self._custody(ep, din, "dispensed", t, ep.site, None, fresh=False, lot=lot_id, code=code)
        t = t + timedelta(minutes=int(rng.integers(20, 45)))
        self._custody(
            ep, din, "thawed", t, ep.site, None, fresh=False, lot=lot_id, code=code, thaw=True
        )
        t = t + timedelta(minutes=int(rng.integers(10, 30)))
        self._custody(
            ep, din, "infused", t, ep.site, None, fresh=False, lot=lot_id, code=code, infusion=True
        )
        dose, per_kg = self._dose(ep, lot, outcome)
        self.tables["administration"].append(
            {
                "lot_id": lot_id,
                "coi_id": ep.coi_id,
                "infusion_date": pd.Timestamp(infusion_day),
                "infusion_site": ep.site,
                "dose": dose,
                "dose_per_kg": per_kg,
                "oos_infused": outcome == "non_conforming",
                "administered_by": f"Dr {self._pick(self.doctors)}",
            }
        )

    def _dose(self, ep: _Episode, lot: dict[str, Any], outcome: str) -> tuple[float, float]:
        """Viable CAR+ cells infused (10^6): label dose, capped by what the lot holds."""
        kg, product = ep.weight_kg, ep.product
        if ep.indication == "ALL" and kg <= 50:
            dose = kg * self._u(0.2, 5.0)
        elif product in ("axi-cel", "brexu-cel"):
            dose = min(2.0 * kg, 200.0) * self._u(0.9, 1.0)
        elif product == "liso-cel":
            dose = self._u(90, 110)
        elif product == "ide-cel":
            dose = self._u(300, 460)
        elif product == "cilta-cel":
            dose = kg * self._u(0.5, 1.0)
        elif product == "tisa-cel":
            dose = self._u(60, 600)
        else:
            dose = kg * self._u(0.5, 2.0)
        available = lot["total_viable_cells"] * lot["transduction_efficiency"] / 100 * 1000
        if outcome == "non_conforming" and lot["_mode"] == "dose":
            dose = min(dose, available * 0.9, dose * self._u(0.4, 0.8))
        dose = min(dose, available * 0.95)
        return round(dose, 1), round(dose / kg, 2)

    def _product_ratio(self, pre_ratio: float) -> float:
        """Final product CD4:CD8 tracks the patient's ratio, shifted by culture towards CD4."""
        shifted = math.log(max(pre_ratio, 0.02)) + 0.6 + 0.3 * self.rng.normal()
        return float(np.clip(math.exp(shifted), 0.05, 20))

    def _shipment(self) -> tuple[str, str]:
        awb = f"{int(self.rng.integers(100, 999))}-{int(self.rng.integers(10**7, 10**8))}"
        logger = f"TL{int(self.rng.integers(10**7, 10**8))}"
        return awb, logger

    def _custody(
        self,
        ep: _Episode,
        unit: str,
        event: str,
        when: datetime,
        where: str,
        to: str | None,
        *,
        fresh: bool,
        lot: str | None = None,
        code: str | None = None,
        shipment: tuple[str, str] | None = None,
        receipt: bool = False,
        thaw: bool = False,
        infusion: bool = False,
    ) -> None:
        rng = self.rng
        excursion = False
        if thaw:
            low, high = round(self._u(36.0, 36.8), 1), round(self._u(37.0, 37.6), 1)
        elif infusion:
            low = high = math.nan
        elif fresh:
            low, high = round(self._u(2.5, 4.5), 1), round(self._u(5.0, 7.8), 1)
            if event == "shipped" and rng.random() < 0.012:
                high, excursion = round(self._u(8.6, 13.5), 1), True
        else:
            low, high = round(self._u(-196, -185), 1), round(self._u(-178, -150), 1)
            if event == "shipped" and rng.random() < 0.006:
                high, excursion = round(self._u(-118, -95), 1), True
        if receipt:  # the receiving scan reads the logger that travelled with the unit
            shipped = next(
                r
                for r in reversed(self.tables["custody_event"])
                if r["unit_id"] == unit and r["event"] == "shipped"
            )
            low, high, excursion = shipped["temp_min"], shipped["temp_max"], shipped["excursion"]
        when = when.replace(second=0, microsecond=0)  # scanners log minutes
        row = {
            "event_id": None,
            "unit_id": unit,
            "coi_id": ep.coi_id,
            "lot_id": lot,
            "product_code": code or _STARTING_MATERIAL_CODE,
            "event": event,
            "timestamp": pd.Timestamp(when),
            "from_site": where,
            "to_site": to,
            "temp_min": low,
            "temp_max": high,
            "excursion": excursion,
            "logger_serial": shipment[1] if shipment else None,
            "shipment_id": shipment[0] if shipment else None,
            "performed_by": self._pick(self.staff),
        }
        self.tables["custody_event"].append(row)
        if excursion and not receipt:
            stage = "transport"
            self._deviation(
                ep,
                {"lot_id": lot, "_col": {"din": unit}},
                "temperature_excursion",
                stage,
                "released",
                when.date(),
                temp=high,
                row=row,
            )

    def _deviation_for_lot(self, ep: _Episode, lot: dict[str, Any]) -> None:
        mode, outcome = lot["_mode"], lot["manufacturing_outcome"]
        category = {
            "viability": "oos_viability",
            "car": "oos_dose",
            "dose": "oos_dose",
            "expansion": "oos_dose",
            "contamination": "contamination",
            "vcn": "other",
        }[mode]
        stage = "release" if outcome == "non_conforming" else "manufacturing"
        self._deviation(ep, lot, category, stage, lot["_disposition"], lot["_decided"])

    def _deviation(
        self,
        ep: _Episode,
        lot: dict[str, Any],
        category: str,
        stage: str,
        disposition: str,
        day: date,
        **context: Any,
    ) -> None:
        severity = {
            "contamination": "critical",
            "label_coi_mismatch": "major",
            "oos_viability": "major",
            "oos_dose": "major",
            "other": "major",
            "delay": "minor",
            "temperature_excursion": "minor",
        }[category]
        self.tables["deviation"].append(
            {
                "deviation_id": self._deviation_id(day),
                "coi_id": ep.coi_id,
                "lot_id": lot.get("lot_id"),
                "unit_id": lot["_col"]["din"],
                "reported_date": pd.Timestamp(day),
                "stage": stage,
                "category": category,
                "severity": severity,
                "disposition": disposition,
                "description": self._narrative(ep, lot, category, disposition, context),
                "reported_by": self._pick(self.staff),
            }
        )

    def _narrative(
        self,
        ep: _Episode,
        lot: dict[str, Any],
        category: str,
        disposition: str,
        context: dict[str, Any],
    ) -> str:
        """Investigator's notes as people write them: with names, numbers and times."""
        rng = self.rng
        staff, staff2 = self._pick(self.staff), self._pick(self.staff)
        doctor = self._pick(self.doctors)
        patient = f"{ep.title} {ep.patient_name}".strip()
        clock = f"{int(rng.integers(6, 20)):02d}:{int(rng.integers(0, 12)) * 5:02d}"
        outcome_text = {
            "released": "unit released after QA assessment",
            "oos_infused": "infused under exceptional release after the patient consented",
            "remanufactured": "remanufacture from retained starting material agreed",
            "recollected": "re-collection booked",
            "not_infused": "product will not be infused",
        }[disposition]
        if category == "temperature_excursion":
            row = context["row"]
            return self._pick(
                (
                    f"Logger {row['logger_serial']} showed {context['temp']:.1f} °C for "
                    f"{int(rng.integers(8, 95))} min in transit ({row['from_site']} to "
                    f"{row['to_site']}). {staff} reviewed the trace with QA; {outcome_text}.",
                    f"Temperature excursion on AWB {row['shipment_id']}. Called {patient}'s "
                    f"ward at {clock} to warn Dr {doctor}; {staff} documented, {outcome_text}.",
                )
            )
        if category == "delay":
            return self._pick(
                (
                    f"Courier held {int(rng.integers(4, 30))} h at customs. {staff} phoned "
                    f"{patient}'s ward at {clock} to move lymphodepletion by "
                    f"{context['extra']} days.",
                    f"Called {patient}'s ward at {clock}: patient febrile, infusion postponed "
                    f"{context['extra']} days by Dr {doctor}. Family contact {ep.phone}.",
                )
            )
        if category == "label_coi_mismatch":
            return (
                f"COI on bag label did not match the shipping manifest for {patient} "
                f"(MRN {ep.mrn}). {staff} quarantined unit {lot['_col']['din']}; relabelled "
                f"and second-checked by {staff2}, {outcome_text}."
            )
        value = lot.get("viability")
        if category == "oos_viability":
            return (
                f"Final product viability {value:.1f} % below specification. Dr {doctor} "
                f"informed; {patient} (MRN {ep.mrn}): {outcome_text}. Raised by {staff}."
            )
        if category == "oos_dose":
            finding = {
                "car": f"CAR+ {lot['transduction_efficiency']:.1f} % below the release limit",
                "dose": f"Viable CAR+ cells below the target dose (TVC "
                f"{lot['total_viable_cells']:.2f} x10^9)",
            }.get(lot["_mode"], f"Insufficient expansion (fold {lot['fold_expansion']:.1f})")
            return (
                f"{finding}. Discussed with Dr {doctor} at {clock}; {staff} to e-mail "
                f"{ep.email} and call {patient} on {ep.phone}: {outcome_text}."
            )
        if category == "contamination":
            return (
                f"Sterility positive (coagulase-negative staphylococci) on day "
                f"{int(rng.integers(3, 8))}. Lot rejected by {staff2}. {patient}'s "
                f"consultant Dr {doctor} notified by phone; {outcome_text}."
            )
        return (
            f"VCN {lot['vcn']:.2f} copies/cell above the limit; investigation opened by "
            f"{staff}. Dr {doctor} to inform {patient}; {outcome_text}."
        )


def _meets(limit: str, value: float, qualitative: str | None) -> bool:
    """Whether a release result meets its written specification."""
    if qualitative is not None:
        return qualitative in ("negative", "not_detected")
    op, number = limit.split(" ", 1)
    bound = float(number)
    return {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]


# From CDM frames to site files ------------------------------------------------------------


def generate_frames(
    institutions: int = 3, patients: int = 200, seed: int = 7
) -> dict[str, dict[str, pd.DataFrame]]:
    """institution slug -> CDM table -> frame, in CDM names and canonical units, with the
    columns each site exports (before its renaming, unit and format habits)."""
    cdm = load_cdm()
    frames: dict[str, dict[str, pd.DataFrame]] = {}
    for index, inst in enumerate(list_institutions(institutions)):
        fmt = site_format(index)
        raw = _Simulator(index, inst, fmt, seed).run(patients)
        frames[inst.slug] = {
            table: _typed(raw[table].reindex(columns=list(fmt.columns[table])), cdm.table(table))
            for table in TABLES
        }
    return frames


def _typed(frame: pd.DataFrame, table: Table) -> pd.DataFrame:
    """CDM dtypes: nullable integers and booleans, plain strings, datetimes."""
    columns: dict[str, pd.Series] = {}
    for name in frame.columns:
        ctype, values = table.column(name).type, frame[name].reset_index(drop=True)
        if ctype is ColumnType.INTEGER:
            columns[name] = values.astype("Int64")
        elif ctype is ColumnType.BOOLEAN:
            columns[name] = values.astype("boolean")
        elif ctype in (ColumnType.DATE, ColumnType.DATETIME):
            columns[name] = pd.to_datetime(values)
        elif ctype is ColumnType.NUMBER:
            columns[name] = values.astype("float64")
        else:
            columns[name] = values.astype(object).where(values.notna(), None)
    return pd.DataFrame(columns, columns=list(frame.columns))
