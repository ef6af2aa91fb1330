"""Concrete volume of rectangular elements (slabs, footings, walls) and round piers (sonotubes)."""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

ORDER_INCREMENT_M3 = Decimal("0.5")  # ready-mix plants in Quebec deliver by half cubic metre
MAX_WASTE_PCT = Decimal("25")
MAX_QUANTITY = 10000


def _number(args: dict, key: str, limit: str, default: object = None) -> Decimal:
    value = args.get(key, default)
    if value is None:
        raise ValueError(f"{key} est requis")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} doit être un nombre")
    number = Decimal(str(value))
    if not number.is_finite() or number <= 0:
        raise ValueError(f"{key} doit être supérieur à 0")
    if number > Decimal(limit):
        raise ValueError(f"{key} dépasse la limite de {limit}")
    return number


def _round(value: Decimal, places: str = "0.01") -> float:
    return float(value.quantize(Decimal(places), rounding=ROUND_HALF_UP))


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    shape = args.get("shape", "rectangular")
    quantity = args.get("quantity", 1)
    if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= MAX_QUANTITY:
        return {"error": f"quantity doit être un entier entre 1 et {MAX_QUANTITY}"}
    waste = args.get("waste_pct", 5)
    if isinstance(waste, bool) or not isinstance(waste, (int, float)) or not 0 <= waste <= MAX_WASTE_PCT:
        return {"error": f"waste_pct doit être entre 0 et {MAX_WASTE_PCT}"}
    waste_pct = Decimal(str(waste))
    try:
        if shape == "rectangular":
            length = _number(args, "length_m", "500")
            width = _number(args, "width_m", "500")
            thickness = _number(args, "thickness_m", "3")
            unit_volume = length * width * thickness
        elif shape == "cylindrical":
            diameter = _number(args, "diameter_m", "5")
            height = _number(args, "height_m", "60")
            unit_volume = Decimal(str(math.pi)) * (diameter / 2) ** 2 * height
        else:
            return {"error": f"forme inconnue : {shape} (rectangular ou cylindrical)"}
    except ValueError as exc:
        return {"error": str(exc)}

    net = unit_volume * quantity
    gross = net * (1 + waste_pct / 100)
    order = (gross / ORDER_INCREMENT_M3).to_integral_value(rounding=ROUND_CEILING) * ORDER_INCREMENT_M3
    return {
        "shape": shape,
        "quantity": quantity,
        "unit_volume_m3": _round(unit_volume, "0.001"),
        "volume_net_m3": _round(net),
        "waste_pct": float(waste_pct),
        "volume_m3": _round(gross),
        "order_m3": float(order),
        "unit": "m3",
    }
