"""Order-of-magnitude (class D) cost of a building from its floor area, type, quality and region."""

from __future__ import annotations

import math
import unicodedata
from decimal import ROUND_HALF_UP, Decimal

TPS_RATE = Decimal("0.05")
TVQ_RATE = Decimal("0.09975")

# Indicative hard costs in CAD per m² of gross floor area, Quebec 2026, before contingency and taxes.
# Calibrated on the firm's closed projects; refreshed every quarter (see docs/README.md).
RATES_PER_M2 = {
    "residential_single_family": {"economy": 2300, "standard": 2900, "premium": 4200},
    "residential_multi_unit": {"economy": 2600, "standard": 3200, "premium": 4300},
    "commercial_office": {"economy": 2800, "standard": 3500, "premium": 5000},
    "commercial_retail": {"economy": 2400, "standard": 3000, "premium": 4100},
    "industrial_warehouse": {"economy": 1500, "standard": 1900, "premium": 2600},
}
REGION_FACTORS = {
    "montreal": Decimal("1.05"),
    "laval": Decimal("1.03"),
    "longueuil": Decimal("1.03"),
    "quebec": Decimal("1.00"),
    "gatineau": Decimal("1.02"),
    "sherbrooke": Decimal("0.96"),
    "trois_rivieres": Decimal("0.95"),
    "saguenay": Decimal("0.97"),
    "rimouski": Decimal("0.99"),
    "abitibi": Decimal("1.08"),
}
RANGE_LOW, RANGE_HIGH = Decimal("0.80"), Decimal("1.30")  # class D: -20 % / +30 %


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def fr(value: Decimal) -> str:
    whole, frac = f"{cents(value):.2f}".split(".")
    return f"{int(whole):,}".replace(",", " ") + f",{frac} $"


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    building = args.get("building_type")
    if building not in RATES_PER_M2:
        return {"error": f"type de bâtiment inconnu : {building}", "known_types": list(RATES_PER_M2)}
    quality = args.get("quality", "standard")
    if quality not in RATES_PER_M2[building]:
        return {"error": f"qualité inconnue : {quality} (economy, standard, premium)"}
    region = unicodedata.normalize("NFKD", str(args.get("region", ""))).encode("ascii", "ignore").decode()
    region = region.strip().lower().replace("-", "_").replace(" ", "_")
    if region not in REGION_FACTORS:
        return {
            "error": f"région non prise en charge : {args.get('region')}",
            "known_regions": list(REGION_FACTORS),
        }
    area = args.get("area_m2")
    if isinstance(area, bool) or not isinstance(area, (int, float)) or not math.isfinite(area):
        return {"error": "area_m2 doit être un nombre"}
    if not 10 <= area <= 200_000:
        return {"error": "area_m2 doit être entre 10 et 200 000 m²"}
    contingency_pct = args.get("contingency_pct", 10)
    if isinstance(contingency_pct, bool) or not isinstance(contingency_pct, (int, float)):
        return {"error": "contingency_pct doit être un nombre"}
    if not 0 <= contingency_pct <= 50:
        return {"error": "contingency_pct doit être entre 0 et 50"}

    rate = Decimal(RATES_PER_M2[building][quality]) * REGION_FACTORS[region]
    construction = cents(rate * Decimal(str(area)))
    contingency = cents(construction * Decimal(str(contingency_pct)) / 100)
    pre_tax = construction + contingency
    tps, tvq = cents(pre_tax * TPS_RATE), cents(pre_tax * TVQ_RATE)
    total = pre_tax + tps + tvq
    low, high = cents(total * RANGE_LOW), cents(total * RANGE_HIGH)
    notes = ["Estimation de classe D (ordre de grandeur), précision -20 % / +30 %."]
    if building.startswith("residential"):
        notes.append("Remboursements de TPS/TVQ pour habitations neuves possibles, non déduits.")
    return {
        "building_type": building,
        "quality": quality,
        "region": region,
        "area_m2": area,
        "rate_per_m2": float(cents(rate)),
        "construction_cost": float(construction),
        "contingency_pct": contingency_pct,
        "contingency": float(contingency),
        "pre_tax_total": float(pre_tax),
        "tps": float(tps),
        "tvq": float(tvq),
        "total": float(total),
        "range": {"low": float(low), "high": float(high)},
        "estimate_class": "D",
        "currency": "CAD",
        "notes": notes,
        "display": {
            "rate_per_m2": fr(rate),
            "construction_cost": fr(construction),
            "contingency": fr(contingency),
            "pre_tax_total": fr(pre_tax),
            "tps": fr(tps),
            "tvq": fr(tvq),
            "total": fr(total),
            "low": fr(low),
            "high": fr(high),
        },
    }
