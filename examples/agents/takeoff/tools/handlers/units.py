"""Exact conversions between the imperial units of older plans and the metric units of takeoffs."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

# Factor to the base unit of each dimension (m, m2, m3, kg); imperial factors are exact by definition.
UNITS = {
    "length": {"m": "1", "mm": "0.001", "cm": "0.01", "ft": "0.3048", "in": "0.0254", "yd": "0.9144"},
    "area": {"m2": "1", "ft2": "0.09290304", "yd2": "0.83612736"},
    "volume": {"m3": "1", "ft3": "0.028316846592", "yd3": "0.764554857984", "l": "0.001"},
    "mass": {"kg": "1", "lb": "0.45359237", "t": "1000"},
}


def _dimension(unit: str) -> str | None:
    for dimension, factors in UNITS.items():
        if unit in factors:
            return dimension
    return None


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    value = args.get("value")
    source = str(args.get("from_unit", "")).strip().lower()
    target = str(args.get("to_unit", "")).strip().lower()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return {"error": "value doit être un nombre fini"}
    if value < 0:
        return {"error": "value ne peut pas être négatif"}
    dim_from, dim_to = _dimension(source), _dimension(target)
    if dim_from is None or dim_to is None:
        known = sorted(unit for factors in UNITS.values() for unit in factors)
        return {"error": f"unité inconnue : {source if dim_from is None else target}", "known_units": known}
    if dim_from != dim_to:
        return {"error": f"conversion impossible : {source} ({dim_from}) vers {target} ({dim_to})"}
    precision = args.get("precision", 4)
    if isinstance(precision, bool) or not isinstance(precision, int) or not 0 <= precision <= 8:
        return {"error": "precision doit être un entier entre 0 et 8"}
    factors = UNITS[dim_from]
    result = Decimal(str(value)) * Decimal(factors[source]) / Decimal(factors[target])
    quantum = Decimal(1).scaleb(-precision)
    return {
        "value": value,
        "from_unit": source,
        "to_unit": target,
        "dimension": dim_from,
        "result": float(result.quantize(quantum, rounding=ROUND_HALF_UP)),
    }
