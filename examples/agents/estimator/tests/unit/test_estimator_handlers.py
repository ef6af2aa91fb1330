"""Unit tests of the estimator handlers, loaded by file path as the runtime does."""

import importlib.util
from pathlib import Path

import pytest

HANDLERS = Path(__file__).resolve().parents[2] / "tools" / "handlers"


def load(name):
    spec = importlib.util.spec_from_file_location(f"estimator_{name}", HANDLERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handle


line_items, area_cost, taxes, takeoff_request = (
    load(n) for n in ("line_items", "area_cost", "taxes", "takeoff_request")
)

CONCRETE = {"description": "Béton 30 MPa", "quantity": 12.6, "unit": "m3", "unit_price_cad": 245}
REBAR = {"description": "Armature 15M", "quantity": 414.48, "unit": "kg", "unit_price_cad": 2.10}


def test_taxes_added_on_pre_tax_amount():
    result = taxes({"amount_cad": 1000})
    assert (result["tps"], result["tvq"], result["total"]) == (50.0, 99.75, 1149.75)
    assert result["display"]["total"] == "1 149,75 $"


def test_taxes_extracted_from_an_all_in_budget():
    result = taxes({"amount_cad": 500000, "mode": "extract"})
    assert result["pre_tax"] == 434877.15
    assert result["total"] == 500000.0
    assert abs(result["rounding_difference"]) <= 0.02


@pytest.mark.parametrize("args", [{}, {"amount_cad": 0}, {"amount_cad": "1000"}, {"amount_cad": 10, "mode": "x"}])
def test_taxes_reject_bad_input(args):
    assert "error" in taxes(args)


def test_bill_of_quantities_with_contingency_and_taxes():
    result = line_items({"line_items": [CONCRETE, REBAR], "contingency_pct": 10})
    assert [line["amount"] for line in result["lines"]] == [3087.0, 870.41]
    assert result["subtotal"] == 3957.41
    assert result["contingency"] == 395.74
    assert result["pre_tax_total"] == 4353.15
    assert (result["tps"], result["tvq"], result["total"]) == (217.66, 434.23, 5005.04)
    assert result["display"]["total"] == "5 005,04 $"


def test_overhead_applies_after_contingency_and_taxes_can_be_left_out():
    result = line_items(
        {"line_items": [CONCRETE], "contingency_pct": 0, "overhead_profit_pct": 10, "apply_taxes": False}
    )
    assert result["overhead_profit"] == 308.70
    assert result["total"] == result["pre_tax_total"] == 3395.70
    assert result["tps"] == result["tvq"] == 0


@pytest.mark.parametrize(
    "args",
    [
        {"line_items": []},
        {"line_items": [{"description": "", "quantity": 1, "unit_price_cad": 1}]},
        {"line_items": [{"description": "Béton", "quantity": 0, "unit_price_cad": 1}]},
        {"line_items": [{"description": "Béton", "quantity": 1, "unit_price_cad": -5}]},
        {"line_items": [CONCRETE], "contingency_pct": 75},
        {"line_items": [CONCRETE], "apply_taxes": "oui"},
        {"line_items": ["béton"]},
    ],
)
def test_bill_rejects_bad_input(args):
    assert "error" in line_items(args)


def test_area_estimate_for_a_house_in_laval():
    result = area_cost({"building_type": "residential_single_family", "area_m2": 180, "region": "Laval"})
    assert result["rate_per_m2"] == 2987.0
    assert result["construction_cost"] == 537660.0
    assert result["total"] == 679992.04
    assert result["range"] == {"low": 543993.63, "high": 883989.65}
    assert any("habitations neuves" in note for note in result["notes"])


@pytest.mark.parametrize("region", ["Trois-Rivières", "QUÉBEC", "trois rivieres", "Montréal"])
def test_area_estimate_normalises_region_names(region):
    assert "error" not in area_cost({"building_type": "commercial_office", "area_m2": 400, "region": region})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"building_type": "castle", "area_m2": 400, "region": "laval"}, "type de bâtiment"),
        ({"building_type": "commercial_office", "area_m2": 400, "region": "Paris"}, "région"),
        ({"building_type": "commercial_office", "area_m2": 5, "region": "laval"}, "area_m2"),
        ({"building_type": "commercial_office", "area_m2": 400, "region": "laval", "quality": "luxe"}, "qualité"),
    ],
)
def test_area_estimate_rejects_bad_input(args, message):
    assert message in area_cost(args)["error"]


def test_takeoff_request_ready_when_dimensions_are_given():
    slab = {"type": "slab", "dimensions": {"length_m": 10, "width_m": 8, "thickness_m": 0.15}}
    result = takeoff_request({"project_name": "Garage Laval", "elements": [slab]})
    assert result["ready"] is True
    assert result["handoff"]["target_agent"] == "takeoff"
    assert result["handoff"]["elements"][0]["tool"] == "compute_concrete_volume"


def test_takeoff_request_lists_missing_dimensions():
    result = takeoff_request({"project_name": "Galerie", "elements": [{"type": "pier"}]})
    assert result["ready"] is False
    assert result["missing"] == [{"element": 1, "type": "pier", "missing": ["diameter_m", "height_m"]}]


@pytest.mark.parametrize(
    "args",
    [
        {"project_name": "", "elements": [{"type": "slab"}]},
        {"project_name": "X", "elements": []},
        {"project_name": "X", "elements": [{"type": "roof"}]},
        {"project_name": "X", "elements": [{"type": "slab", "dimensions": {"length_m": -3}}]},
        {"project_name": "{{ 7*7 }}", "elements": [{"type": "slab"}]},
    ],
)
def test_takeoff_request_rejects_bad_input(args):
    assert "error" in takeoff_request(args)
