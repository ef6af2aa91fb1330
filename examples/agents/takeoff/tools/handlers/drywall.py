"""Gypsum board (drywall) area and sheet count for walls and ceilings."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

FT2_TO_M2 = Decimal("0.09290304")
SHEETS_FT2 = {"4x8": 32, "4x10": 40, "4x12": 48}
MAX_WALLS = 500


def _number(value: object, low: float, high: float) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and low <= value <= high
    )


def _round(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    walls = args.get("walls", [])
    ceiling = args.get("ceiling_m2", 0)
    if not isinstance(walls, list) or len(walls) > MAX_WALLS:
        return {"error": f"walls doit être une liste d'au plus {MAX_WALLS} murs"}
    if not _number(ceiling, 0, 100_000):
        return {"error": "ceiling_m2 doit être entre 0 et 100 000"}
    if not walls and not ceiling:
        return {"error": "aucun mur ni plafond : fournir walls ou ceiling_m2"}

    faces = args.get("faces", 1)
    if faces not in (1, 2):
        return {"error": "faces doit valoir 1 ou 2"}
    wall_area = Decimal(0)
    for index, wall in enumerate(walls, start=1):
        if not isinstance(wall, dict):
            return {"error": f"mur {index} : objet attendu"}
        length, height, count = wall.get("length_m"), wall.get("height_m"), wall.get("count", 1)
        if not _number(length, 0.01, 500) or not _number(height, 0.01, 20):
            return {"error": f"mur {index} : length_m (0-500 m) et height_m (0-20 m) requis"}
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
            return {"error": f"mur {index} : count doit être un entier entre 1 et 1000"}
        wall_area += Decimal(str(length)) * Decimal(str(height)) * count

    gross = wall_area * faces + Decimal(str(ceiling))
    openings = args.get("openings_m2", 0)
    if not _number(openings, 0, 100_000):
        return {"error": "openings_m2 doit être entre 0 et 100 000"}
    net = gross - Decimal(str(openings))
    if net <= 0:
        return {"error": "la surface des ouvertures dépasse la surface brute"}

    waste = args.get("waste_pct", 10)
    if not _number(waste, 0, 30):
        return {"error": "waste_pct doit être entre 0 et 30"}
    sheet = args.get("sheet_size", "4x8")
    if sheet not in SHEETS_FT2:
        return {"error": f"sheet_size inconnu : {sheet} ({', '.join(SHEETS_FT2)})"}
    sheet_area = SHEETS_FT2[sheet] * FT2_TO_M2
    with_waste = net * (1 + Decimal(str(waste)) / 100)
    return {
        "gross_area_m2": _round(gross),
        "openings_m2": float(openings),
        "net_area_m2": _round(net),
        "waste_pct": float(waste),
        "sheet_size": sheet,
        "sheet_area_m2": float(sheet_area.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)),
        "sheets": math.ceil(with_waste / sheet_area),
    }
