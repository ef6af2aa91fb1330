"""Unit tests of the takeoff handlers, loaded by file path as the runtime does."""

import importlib.util
import math
from pathlib import Path

import pytest

HANDLERS = Path(__file__).resolve().parents[2] / "tools" / "handlers"


def load(name):
    spec = importlib.util.spec_from_file_location(f"takeoff_{name}", HANDLERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handle


concrete, rebar, drywall, units = (load(n) for n in ("concrete", "rebar", "drywall", "units"))


def test_slab_volume_with_waste_and_order():
    result = concrete({"length_m": 10, "width_m": 8, "thickness_m": 0.15})
    assert result["volume_net_m3"] == 12.0
    assert result["volume_m3"] == 12.6
    assert result["order_m3"] == 13.0
    assert result["unit"] == "m3"


def test_round_piers_multiply_by_quantity():
    result = concrete({"shape": "cylindrical", "diameter_m": 0.3, "height_m": 1.2, "quantity": 12})
    assert result["volume_net_m3"] == pytest.approx(12 * math.pi * 0.15**2 * 1.2, abs=0.01)
    assert result["order_m3"] == 1.5


def test_order_is_rounded_up_to_half_cubic_metre():
    result = concrete({"length_m": 4, "width_m": 4, "thickness_m": 0.1, "waste_pct": 0})
    assert result["volume_m3"] == 1.6
    assert result["order_m3"] == 2.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"length_m": 10, "width_m": 8}, "thickness_m"),
        ({"length_m": -1, "width_m": 8, "thickness_m": 0.2}, "supérieur à 0"),
        ({"length_m": 10, "width_m": 8, "thickness_m": 4}, "limite"),
        ({"length_m": "10", "width_m": 8, "thickness_m": 0.2}, "nombre"),
        ({"shape": "triangle"}, "forme inconnue"),
        ({"length_m": 1, "width_m": 1, "thickness_m": 1, "waste_pct": 40}, "waste_pct"),
        ({"length_m": 1, "width_m": 1, "thickness_m": 1, "quantity": 0}, "quantity"),
    ],
)
def test_concrete_rejects_bad_input(args, message):
    assert message in concrete(args)["error"]


def test_rebar_mass_from_count_and_length():
    result = rebar({"bar_size": "15M", "count": 40, "length_m": 6})
    assert result["length_m"] == 264.0
    assert result["mass_kg"] == 414.48
    assert result["stock_bars"] == 22


@pytest.mark.parametrize(("size", "kg_per_m"), [("10m", 0.785), ("25M", 3.925), ("55M", 19.625)])
def test_rebar_mass_from_total_length(size, kg_per_m):
    result = rebar({"bar_size": size, "total_length_m": 100, "lap_waste_pct": 0})
    assert result["mass_kg"] == pytest.approx(100 * kg_per_m)


@pytest.mark.parametrize(
    "args",
    [
        {"bar_size": "12M", "count": 1, "length_m": 6},
        {"bar_size": "15M"},
        {"bar_size": "15M", "count": 2, "length_m": 25},
        {"bar_size": "15M", "total_length_m": 10, "stock_length_m": 9},
        {"bar_size": "15M", "total_length_m": 10, "lap_waste_pct": 80},
    ],
)
def test_rebar_rejects_bad_input(args):
    assert "error" in rebar(args)


def test_drywall_two_faces_minus_openings():
    result = drywall({"walls": [{"length_m": 12, "height_m": 2.44, "count": 4}], "faces": 2, "openings_m2": 8})
    assert result["gross_area_m2"] == 234.24
    assert result["net_area_m2"] == 226.24
    assert result["sheets"] == 84


def test_drywall_ceiling_only_with_large_sheets():
    result = drywall({"ceiling_m2": 44.6, "sheet_size": "4x12", "waste_pct": 0})
    assert result["sheets"] == 11


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"walls": [{"length_m": 3}]},
        {"walls": [{"length_m": 3, "height_m": 2.4}], "faces": 3},
        {"walls": [{"length_m": 3, "height_m": 2.4}], "openings_m2": 50},
        {"walls": [{"length_m": 3, "height_m": 2.4}], "sheet_size": "5x5"},
        {"walls": "north wall"},
    ],
)
def test_drywall_rejects_bad_input(args):
    assert "error" in drywall(args)


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (1200, "ft2", "m2", 111.4836),
        (1, "yd3", "m3", 0.7646),
        (10, "ft", "m", 3.048),
        (2204.62262, "lb", "t", 1.0),
    ],
)
def test_unit_conversions(value, source, target, expected):
    assert units({"value": value, "from_unit": source, "to_unit": target})["result"] == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"value": 50, "from_unit": "ft2", "to_unit": "kg"}, "conversion impossible"),
        ({"value": 5, "from_unit": "furlong", "to_unit": "m"}, "unité inconnue"),
        ({"value": -5, "from_unit": "ft", "to_unit": "m"}, "négatif"),
        ({"value": float("nan"), "from_unit": "ft", "to_unit": "m"}, "fini"),
    ],
)
def test_units_reject_bad_input(args, message):
    assert message in units(args)["error"]
