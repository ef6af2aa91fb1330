"""Due dates of the usual Quebec construction-law delays, from a start date (ISO 8601)."""

from __future__ import annotations

import calendar
import re
from datetime import date, timedelta

# type -> (days, months, starts from, legal basis, what must be done by the due date)
DEADLINES = {
    "hypotheque_publication": (
        30,
        0,
        "fin des travaux",
        "art. 2727 C.c.Q.",
        "inscrire l'avis d'hypothèque légale au registre foncier et le signifier au propriétaire",
    ),
    "hypotheque_extinction": (
        0,
        6,
        "fin des travaux",
        "art. 2727 C.c.Q.",
        "publier une action contre le propriétaire ou inscrire un préavis d'exercice, sinon l'hypothèque s'éteint",
    ),
    "garantie_malfacons": (
        0,
        12,
        "réception de l'ouvrage",
        "art. 2120 C.c.Q.",
        "découvrir et dénoncer les malfaçons couvertes par la garantie d'un an",
    ),
    "garantie_perte_ouvrage": (
        0,
        60,
        "fin des travaux",
        "art. 2118 C.c.Q.",
        "la perte de l'ouvrage doit survenir avant cette date pour être couverte",
    ),
    "prescription_action": (
        0,
        36,
        "connaissance du préjudice",
        "art. 2925 C.c.Q.",
        "intenter l'action en justice",
    ),
    "gcr_denonciation": (
        0,
        6,
        "découverte du vice",
        "RLRQ c. B-1.1, r. 8",
        "dénoncer par écrit le vice à l'entrepreneur et à GCR (délai maximal)",
    ),
}
WEEKDAYS_FR = ["lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"]
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _parse(value: object, name: str) -> date:
    if not isinstance(value, str) or not ISO_DATE.match(value):
        raise ValueError(f"{name} doit être une date AAAA-MM-JJ")
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"date invalide : {value}") from None
    if not 1994 <= parsed.year <= 2100:  # the Civil Code of Quebec took effect on 1994-01-01
        raise ValueError(f"date hors plage : {value}")
    return parsed


def _add_months(start: date, months: int) -> date:
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    kind = args.get("deadline_type")
    if kind not in DEADLINES:
        return {"error": f"type de délai inconnu : {kind}", "known_types": list(DEADLINES)}
    try:
        start = _parse(args.get("start_date"), "start_date")
        as_of = _parse(args["as_of"], "as_of") if args.get("as_of") is not None else None
    except ValueError as exc:
        return {"error": str(exc)}

    days, months, origin, basis, action = DEADLINES[kind]
    due = _add_months(start, months) + timedelta(days=days)
    weekend = due.weekday() >= 5
    result = {
        "deadline_type": kind,
        "start_date": start.isoformat(),
        "starts_from": origin,
        "due_date": due.isoformat(),
        "weekday": WEEKDAYS_FR[due.weekday()],
        "falls_on_weekend": weekend,
        "legal_basis": basis,
        "action": action,
        "note": "Jours fériés non vérifiés ; la date de départ est souvent contestée : agir avant l'échéance.",
    }
    if weekend:
        following = due + timedelta(days=7 - due.weekday())
        result["note"] = (
            f"Échéance un {WEEKDAYS_FR[due.weekday()]} : un report au {following.isoformat()} peut s'appliquer "
            f"(C.p.c., art. 83), mais par prudence agir au plus tard le {due.isoformat()}."
        )
    if as_of is not None:
        result["as_of"] = as_of.isoformat()
        result["days_remaining"] = (due - as_of).days
        result["expired"] = as_of > due
    return result
