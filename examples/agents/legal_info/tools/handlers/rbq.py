"""Format check of an RBQ licence number (10 digits, XXXX-XXXX-XX); the registry is not queried."""

from __future__ import annotations

import re

REGISTRY = "Registre des détenteurs de licence de la RBQ (www.rbq.gouv.qc.ca)"
SEPARATORS = re.compile(r"[\s.-]")


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    raw = args.get("licence_number")
    if not isinstance(raw, str) or not raw.strip():
        return {"error": "licence_number est requis"}
    if len(raw) > 32:
        return {"error": "licence_number trop long (32 caractères au plus)"}
    digits = SEPARATORS.sub("", raw.strip())
    result = {"licence_number": raw.strip(), "verify_at": REGISTRY}
    if not digits.isdigit() or not digits.isascii():
        return {**result, "valid_format": False, "reason": "le numéro ne doit contenir que des chiffres"}
    if len(digits) != 10:
        return {
            **result,
            "valid_format": False,
            "reason": f"{len(digits)} chiffres au lieu de 10 chiffres (format XXXX-XXXX-XX)",
        }
    return {
        **result,
        "valid_format": True,
        "normalized": f"{digits[:4]}-{digits[4:8]}-{digits[8:]}",
        "reason": "format conforme ; le statut (en vigueur, suspendue, annulée) se vérifie au registre",
    }
