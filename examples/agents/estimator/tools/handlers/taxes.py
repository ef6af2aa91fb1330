"""TPS (5 %) and TVQ (9,975 %) added to a pre-tax amount, or extracted from a taxes-included amount."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

TPS_RATE = Decimal("0.05")  # taxe fédérale sur les produits et services
TVQ_RATE = Decimal("0.09975")  # taxe de vente du Québec, calculée sur le prix avant TPS depuis 2013
MAX_AMOUNT = 1_000_000_000


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def fr(value: Decimal) -> str:
    """French Canadian display: 2 345 678,90 $."""
    whole, frac = f"{cents(value):.2f}".split(".")
    return f"{int(whole):,}".replace(",", " ") + f",{frac} $"


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    amount = args.get("amount_cad")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not math.isfinite(amount):
        return {"error": "amount_cad doit être un nombre"}
    if not 0 < amount <= MAX_AMOUNT:
        return {"error": f"amount_cad doit être entre 0 et {MAX_AMOUNT} $"}
    mode = args.get("mode", "add")
    value = cents(Decimal(str(amount)))
    if mode == "add":
        pre_tax = value
    elif mode == "extract":
        pre_tax = cents(value / (1 + TPS_RATE + TVQ_RATE))
    else:
        return {"error": f"mode inconnu : {mode} (add ou extract)"}
    tps, tvq = cents(pre_tax * TPS_RATE), cents(pre_tax * TVQ_RATE)
    computed_total = pre_tax + tps + tvq
    total = computed_total if mode == "add" else value
    return {
        "mode": mode,
        "pre_tax": float(pre_tax),
        "tps": float(tps),
        "tvq": float(tvq),
        "total": float(total),
        "rounding_difference": float(total - computed_total),
        "rates": {"tps": float(TPS_RATE), "tvq": float(TVQ_RATE)},
        "currency": "CAD",
        "display": {"pre_tax": fr(pre_tax), "tps": fr(tps), "tvq": fr(tvq), "total": fr(total)},
    }
