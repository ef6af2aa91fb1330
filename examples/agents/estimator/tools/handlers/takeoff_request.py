"""Build the hand-off message that asks the takeoff agent for the quantities an estimate needs."""

from __future__ import annotations

import math
import re

# Element type -> takeoff tool that measures it, and the dimensions that tool needs.
ELEMENTS = {
    "slab": ("compute_concrete_volume", ("length_m", "width_m", "thickness_m")),
    "footing": ("compute_concrete_volume", ("length_m", "width_m", "thickness_m")),
    "wall": ("compute_concrete_volume", ("length_m", "width_m", "thickness_m")),
    "pier": ("compute_concrete_volume", ("diameter_m", "height_m")),
    "rebar": ("compute_rebar_mass", ("bar_size",)),
    "drywall": ("compute_drywall", ()),
}
PROJECT_RE = re.compile(r"^[\w][\w .,'()/-]{0,119}$")
MAX_ELEMENTS = 100


def handle(args: dict) -> dict:
    if not isinstance(args, dict):
        return {"error": "les arguments doivent être un objet"}
    project = str(args.get("project_name", "")).strip()
    if not PROJECT_RE.match(project):
        return {"error": "project_name requis (120 caractères, lettres, chiffres et ponctuation simple)"}
    elements = args.get("elements")
    if not isinstance(elements, list) or not 1 <= len(elements) <= MAX_ELEMENTS:
        return {"error": f"elements doit contenir de 1 à {MAX_ELEMENTS} éléments"}

    items, missing = [], []
    for index, element in enumerate(elements, start=1):
        if not isinstance(element, dict):
            return {"error": f"élément {index} : objet attendu"}
        kind = element.get("type")
        if kind not in ELEMENTS:
            return {"error": f"élément {index} : type inconnu {kind}", "known_types": list(ELEMENTS)}
        tool, required = ELEMENTS[kind]
        dimensions = element.get("dimensions", {})
        if not isinstance(dimensions, dict):
            return {"error": f"élément {index} : dimensions doit être un objet"}
        for key, value in dimensions.items():
            if key.endswith("_m") and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value <= 0
            ):
                return {"error": f"élément {index} : {key} doit être un nombre positif"}
        absent = [key for key in required if key not in dimensions]
        if absent:
            missing.append({"element": index, "type": kind, "missing": absent})
        items.append(
            {
                "ref": f"E{index:02d}",
                "type": kind,
                "description": str(element.get("description", kind))[:200],
                "tool": tool,
                "dimensions": dimensions,
            }
        )

    return {
        "handoff": {
            "target_agent": "takeoff",
            "task_type": "quantity_takeoff",
            "project_name": project,
            "elements": items,
            "return_units": {"concrete": "m3", "rebar": "kg", "drywall": "sheets"},
        },
        "item_count": len(items),
        "ready": not missing,
        "missing": missing,
    }
