"""Mass of deformed reinforcing bars, metric sizes of CSA G30.18."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

# Nominal mass in kg/m (CSA G30.18, table 1).
KG_PER_M = {
    "10M": Decimal("0.785"),
    "15M": Decimal("1.570"),
    "20M": Decimal("2.355"),
    "25M": Decimal("3.925"),
    "30M": Decimal("5.495"),
    "35M": Decimal("7.850"),
    "45M": Decimal("11.775"),
    "55M": Decimal("19.625"),
}
STOCK_LENGTHS_M = (6, 12, 18)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _round(value: Decimal, places: str) -> float:
    return float(value.quantize(Decimal(places), rounding=ROUND_HALF_UP))


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    size = str(args.get("bar_size", "")).strip().upper()
    if size not in KG_PER_M:
        return {
            "error": f"grosseur de barre inconnue : {size or '(vide)'}",
            "valid_sizes": list(KG_PER_M),
            "standard": "CSA G30.18",
        }

    if "total_length_m" in args:
        total = args["total_length_m"]
        if not _is_number(total) or not 0 < total <= 1_000_000:
            return {"error": "total_length_m doit être un nombre entre 0 et 1 000 000"}
        net_length = Decimal(str(total))
    else:
        count, length = args.get("count"), args.get("length_m")
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
            return {"error": "count doit être un entier entre 1 et 100 000 (ou fournir total_length_m)"}
        if not _is_number(length) or not 0 < length <= 18:
            return {"error": "length_m doit être entre 0 et 18 m (longueur commerciale maximale)"}
        net_length = Decimal(count) * Decimal(str(length))

    lap = args.get("lap_waste_pct", 10)
    if not _is_number(lap) or not 0 <= lap <= 50:
        return {"error": "lap_waste_pct doit être entre 0 et 50"}
    stock = args.get("stock_length_m", 12)
    if stock not in STOCK_LENGTHS_M:
        return {"error": f"stock_length_m doit être l'une de {list(STOCK_LENGTHS_M)}"}

    length_with_laps = net_length * (1 + Decimal(str(lap)) / 100)
    mass = length_with_laps * KG_PER_M[size]
    return {
        "bar_size": size,
        "kg_per_m": float(KG_PER_M[size]),
        "length_net_m": _round(net_length, "0.01"),
        "lap_waste_pct": float(lap),
        "length_m": _round(length_with_laps, "0.01"),
        "mass_kg": _round(mass, "0.01"),
        "mass_t": _round(mass / 1000, "0.001"),
        "stock_length_m": stock,
        "stock_bars": math.ceil(length_with_laps / Decimal(stock)),
        "standard": "CSA G30.18",
    }
