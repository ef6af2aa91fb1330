"""Cost of a bill of quantities: line items, contingency, overhead and profit, TPS and TVQ (CAD)."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

TPS_RATE = Decimal("0.05")
TVQ_RATE = Decimal("0.09975")
MAX_ITEMS = 200


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def fr(value: Decimal) -> str:
    whole, frac = f"{cents(value):.2f}".split(".")
    return f"{int(whole):,}".replace(",", " ") + f",{frac} $"


def _number(value: object, low: float, high: float) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and low <= value <= high
    )


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    items = args.get("line_items")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        return {"error": f"line_items doit contenir de 1 à {MAX_ITEMS} postes"}
    contingency_pct = args.get("contingency_pct", 10)
    overhead_pct = args.get("overhead_profit_pct", 0)
    if not _number(contingency_pct, 0, 50):
        return {"error": "contingency_pct doit être entre 0 et 50"}
    if not _number(overhead_pct, 0, 40):
        return {"error": "overhead_profit_pct doit être entre 0 et 40"}
    apply_taxes = args.get("apply_taxes", True)
    if not isinstance(apply_taxes, bool):
        return {"error": "apply_taxes doit être true ou false"}

    lines, subtotal = [], Decimal(0)
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            return {"error": f"poste {index} : objet attendu"}
        description = str(item.get("description", "")).strip()
        quantity, price = item.get("quantity"), item.get("unit_price_cad")
        if not description:
            return {"error": f"poste {index} : description requise"}
        if not _number(quantity, 0, 10_000_000) or quantity == 0:
            return {"error": f"poste {index} ({description}) : quantité invalide"}
        if not _number(price, 0, 10_000_000):
            return {"error": f"poste {index} ({description}) : prix unitaire invalide"}
        amount = cents(Decimal(str(quantity)) * Decimal(str(price)))
        subtotal += amount
        lines.append(
            {
                "description": description,
                "quantity": quantity,
                "unit": str(item.get("unit", "u")),
                "unit_price_cad": price,
                "amount": float(amount),
                "amount_display": fr(amount),
            }
        )

    contingency = cents(subtotal * Decimal(str(contingency_pct)) / 100)
    overhead = cents((subtotal + contingency) * Decimal(str(overhead_pct)) / 100)
    pre_tax = subtotal + contingency + overhead
    tps = cents(pre_tax * TPS_RATE) if apply_taxes else Decimal(0)
    tvq = cents(pre_tax * TVQ_RATE) if apply_taxes else Decimal(0)
    total = pre_tax + tps + tvq
    return {
        "lines": lines,
        "subtotal": float(subtotal),
        "contingency_pct": contingency_pct,
        "contingency": float(contingency),
        "overhead_profit_pct": overhead_pct,
        "overhead_profit": float(overhead),
        "pre_tax_total": float(pre_tax),
        "taxes_applied": apply_taxes,
        "tps": float(tps),
        "tvq": float(tvq),
        "total": float(total),
        "currency": "CAD",
        "display": {
            "subtotal": fr(subtotal),
            "contingency": fr(contingency),
            "overhead_profit": fr(overhead),
            "pre_tax_total": fr(pre_tax),
            "tps": fr(tps),
            "tvq": fr(tvq),
            "total": fr(total),
        },
    }
