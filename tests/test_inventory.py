"""assets.yaml parsing: the shipped file loads, and every kind of bad input is named by path."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from der_actors.inventory import FieldError, InventoryError, load_inventory, parse_inventory
from der_actors.model import AssetType

ASSETS_YAML = Path(__file__).resolve().parent.parent / "assets.yaml"

SITE_A = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
SITE_B = "39177186-ddbe-4574-80ef-a2055fea0232"
BESS_ID = "c85e9759-8fac-40b8-ae8e-e9f6c796f8bb"
PV_ID = "c4a3b185-95b5-46cd-a458-5f6ebc4dc32d"

_BASE: dict[str, Any] = {
    "sites": [
        {"id": SITE_A, "name": "Battery park", "location": "Essex"},
        {"id": SITE_B, "name": "Solar farm"},
    ],
    "assets": [
        {
            "id": BESS_ID,
            "name": "BESS 1",
            "site_id": SITE_A,
            "type": "bess",
            "capacity_mwhr": 4.0,
            "max_mw": 2.0,
            "min_mw": -2.0,
            "ramp_rate_mw_per_min": 1.0,
            "efficiency": 0.92,
        },
        {"id": PV_ID, "name": "PV 1", "site_id": SITE_B, "type": "pv", "max_mw": 3.0, "min_mw": 0.0},
    ],
}


def doc() -> dict[str, Any]:
    return copy.deepcopy(_BASE)


def errors_of(data: object) -> tuple[FieldError, ...]:
    with pytest.raises(InventoryError) as info:
        parse_inventory(data)
    return info.value.errors


def put(section: str, index: int, **fields: object) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[section][index].update(fields)


def drop(section: str, index: int, key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[section][index].pop(key)


# ---------------------------------------------------------------------------- the shipped file


def test_shipped_assets_yaml_loads() -> None:
    inv = load_inventory(ASSETS_YAML)
    assert len(inv.sites) == 3
    counts = sorted(len(inv.assets_of(s.id)) for s in inv.sites)
    assert counts[-1] >= 12 and all(2 <= n <= 4 for n in counts[:-1])
    assert {a.type for a in inv.assets} == set(AssetType)
    big = max(inv.sites, key=lambda s: len(inv.assets_of(s.id)))
    assert {a.type for a in inv.assets_of(big.id)} == set(AssetType)
    for a in inv.assets:
        assert a.min_mw <= 0 <= a.max_mw
        assert inv.asset(a.id) is a and inv.site(a.site_id) is not None
    # a site's assets: in file order, each in exactly one site; an unknown site has none
    for s in inv.sites:
        assert inv.assets_of(s.id) == tuple(a for a in inv.assets if a.site_id == s.id)
    assert sum(len(inv.assets_of(s.id)) for s in inv.sites) == len(inv.assets)
    assert inv.assets_of("no-such-site") == ()


# ---------------------------------------------------------------------------- valid input


def test_base_document_parses() -> None:
    inv = parse_inventory(doc())
    assert [s.id for s in inv.sites] == [SITE_A, SITE_B]
    assert [a.id for a in inv.assets] == [BESS_ID, PV_ID]
    assert inv.asset(BESS_ID).type is AssetType.BESS  # type: ignore[union-attr]
    assert inv.asset(PV_ID).type is AssetType.PV  # type: ignore[union-attr]


def test_defaults_applied() -> None:
    d = doc()
    d["assets"] = [
        {"id": BESS_ID, "name": "B", "site_id": SITE_A, "capacity_mwhr": 4.0, "max_mw": 1.0, "min_mw": -1.0},
        {"id": PV_ID, "name": "P", "site_id": SITE_B, "type": "pv", "max_mw": 3.0, "min_mw": 0.0,
         "location": None},
    ]
    inv = parse_inventory(d)
    bess, pv = inv.assets
    assert bess.type is AssetType.BESS  # type defaults to bess
    assert (bess.ramp_rate_mw_per_min, bess.efficiency, bess.location) == (1.0, 1.0, None)
    assert pv.capacity_mwhr is None and pv.location is None
    assert inv.site(SITE_B).location is None  # type: ignore[union-attr]


def test_ints_become_floats() -> None:
    d = doc()
    d["assets"][0].update(capacity_mwhr=4, max_mw=2, min_mw=-2, ramp_rate_mw_per_min=1, efficiency=1)
    bess = parse_inventory(d).assets[0]
    for value in (bess.capacity_mwhr, bess.max_mw, bess.min_mw, bess.ramp_rate_mw_per_min, bess.efficiency):
        assert type(value) is float
    assert (bess.max_mw, bess.min_mw) == (2.0, -2.0)


def test_uuids_are_normalised() -> None:
    d = doc()
    d["sites"][0]["id"] = SITE_A.upper()
    d["assets"][0]["id"] = "{" + BESS_ID.upper() + "}"
    inv = parse_inventory(d)
    assert inv.sites[0].id == SITE_A
    assert inv.assets[0].id == BESS_ID and inv.assets[0].site_id == SITE_A


# ---------------------------------------------------------------------------- one problem each

CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    # the document's shape
    ("missing sites", lambda d: d.pop("sites"), "sites", "required"),
    ("missing assets", lambda d: d.pop("assets"), "assets", "required"),
    ("sites not a list", lambda d: d.update(sites={"id": SITE_A}), "sites", "must be a list, got mapping"),
    ("assets null", lambda d: d.update(assets=None), "assets", "must be a list, got null"),
    ("unknown top-level key", lambda d: d.update(colour="red"), "colour", "unknown field"),
    ("site not a mapping", lambda d: d["sites"].append("x"), "sites[2]", "must be a mapping, got str"),
    ("asset not a mapping", lambda d: d["assets"].append([1]), "assets[2]", "must be a mapping, got list"),
    ("unknown site key", put("sites", 0, colour="red"), "sites[0].colour", "unknown field"),
    ("unknown asset key", put("assets", 1, colour="red"), "assets[1].colour", "unknown field"),
    # required fields
    ("site id missing", drop("sites", 0, "id"), "sites[0].id", "required"),
    ("site name missing", drop("sites", 1, "name"), "sites[1].name", "required"),
    ("asset id missing", drop("assets", 0, "id"), "assets[0].id", "required"),
    ("asset name missing", drop("assets", 0, "name"), "assets[0].name", "required"),
    ("site_id missing", drop("assets", 1, "site_id"), "assets[1].site_id", "required"),
    ("max_mw missing", drop("assets", 0, "max_mw"), "assets[0].max_mw", "required"),
    ("min_mw missing", drop("assets", 1, "min_mw"), "assets[1].min_mw", "required"),
    ("max_mw null", put("assets", 0, max_mw=None), "assets[0].max_mw", "must be a number, got null"),
    ("bess capacity missing", drop("assets", 0, "capacity_mwhr"), "assets[0].capacity_mwhr", "required for"),
    ("bess capacity null", put("assets", 0, capacity_mwhr=None), "assets[0].capacity_mwhr", "required for"),
    # types
    ("bool is not a number", put("assets", 0, max_mw=True), "assets[0].max_mw", "must be a number, got bool"),
    ("str is not a number", put("assets", 0, efficiency="0.9"), "assets[0].efficiency", "must be a number, got str"),
    ("name not a string", put("assets", 0, name=7), "assets[0].name", "must be a non-empty string, got int"),
    ("empty name", put("sites", 0, name=""), "sites[0].name", "must be a non-empty string"),
    ("blank location", put("assets", 1, location="  "), "assets[1].location", "must be a non-empty string"),
    ("unknown type", put("assets", 1, type="tidal"), "assets[1].type", "must be one of bess, pv, wind, ev_charger"),
    # ids
    ("site id not a UUID", put("sites", 0, id="site-1"), "sites[0].id", "must be a UUID, got 'site-1'"),
    ("asset id not a UUID", put("assets", 1, id="pv-1"), "assets[1].id", "must be a UUID"),
    ("asset id an int", put("assets", 1, id=12), "assets[1].id", "must be a UUID string, got int"),
    ("site_id not a UUID", put("assets", 0, site_id="site-a"), "assets[0].site_id", "must be a UUID"),
    ("duplicate site id", put("sites", 1, id=SITE_A.upper()), "sites[1].id", "duplicate of sites[0].id"),
    ("duplicate asset id", put("assets", 1, id=BESS_ID), "assets[1].id", "duplicate of assets[0].id"),
    (
        "dangling site_id",
        put("assets", 1, site_id="00000000-0000-4000-8000-000000000000"),
        "assets[1].site_id",
        "no site with id 00000000-0000-4000-8000-000000000000",
    ),
    # limits
    ("min above max", put("assets", 0, min_mw=-2.0, max_mw=-3.0), "assets[0].max_mw", "must be >= min_mw (-2.0)"),
    ("min_mw positive", put("assets", 1, min_mw=0.5), "assets[1].min_mw", "must be <= 0, got 0.5"),
    ("max_mw negative", put("assets", 1, max_mw=-1), "assets[1].max_mw", "must be >= 0, got -1.0"),
    ("capacity zero", put("assets", 0, capacity_mwhr=0), "assets[0].capacity_mwhr", "must be > 0"),
    ("pv capacity negative", put("assets", 1, capacity_mwhr=-1.0), "assets[1].capacity_mwhr", "must be > 0"),
    ("ramp zero", put("assets", 0, ramp_rate_mw_per_min=0.0), "assets[0].ramp_rate_mw_per_min", "must be > 0"),
    ("efficiency zero", put("assets", 0, efficiency=0.0), "assets[0].efficiency", "must be > 0"),
    ("efficiency above 1", put("assets", 0, efficiency=1.01), "assets[0].efficiency", "must be <= 1"),
    ("nan", put("assets", 0, max_mw=math.nan), "assets[0].max_mw", "must be finite, got nan"),
    ("inf", put("assets", 0, capacity_mwhr=math.inf), "assets[0].capacity_mwhr", "must be finite, got inf"),
    ("-inf", put("assets", 1, min_mw=-math.inf), "assets[1].min_mw", "must be finite, got -inf"),
]


@pytest.mark.parametrize(("edit", "path", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_error_names_path_and_reason(edit: Callable[[dict[str, Any]], None], path: str, fragment: str) -> None:
    d = doc()
    edit(d)
    errors = errors_of(d)
    matching = [e for e in errors if e.path == path]
    assert matching, f"no error at {path!r}; got {[str(e) for e in errors]}"
    assert any(fragment in e.reason for e in matching), [str(e) for e in matching]


@pytest.mark.parametrize(("data", "kind"), [(None, "null"), ([], "list"), ("sites: []", "str")])
def test_document_must_be_a_mapping(data: object, kind: str) -> None:
    assert errors_of(data) == (FieldError("", f"must be a mapping with keys sites and assets, got {kind}"),)


def test_all_problems_reported_at_once() -> None:
    d = doc()
    d["sites"][1]["id"] = "nope"
    d["assets"][0].update(colour="blue", efficiency=2, max_mw=-3.0)
    del d["assets"][0]["capacity_mwhr"]
    d["assets"][1].update(type="tidal", site_id=SITE_B)
    with pytest.raises(InventoryError) as info:
        parse_inventory(d)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.errors == (
        FieldError("sites[1].id", "must be a UUID, got 'nope'"),
        FieldError("assets[0].colour", "unknown field"),
        FieldError("assets[0].max_mw", "must be >= 0, got -3.0"),
        FieldError("assets[0].efficiency", "must be <= 1, got 2.0"),
        FieldError("assets[0].capacity_mwhr", "required for type bess"),
        FieldError("assets[0].max_mw", "must be >= min_mw (-2.0)"),
        FieldError("assets[1].type", "must be one of bess, pv, wind, ev_charger; got 'tidal'"),
        FieldError("assets[1].site_id", f"no site with id {SITE_B}"),
    )
    assert str(err).splitlines() == [str(e) for e in err.errors]
    assert str(err).splitlines()[2] == "assets[0].max_mw: must be >= 0, got -3.0"


# ---------------------------------------------------------------------------- files


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(InventoryError) as info:
        load_inventory(missing)
    (error,) = info.value.errors
    assert error.path == str(missing)
    assert "cannot read" in error.reason and "No such file" in error.reason


def test_yaml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "assets.yaml"
    bad.write_text("sites:\n  - id: [unclosed\nassets: []\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(bad)
    (error,) = info.value.errors
    assert error.path == str(bad)
    assert error.reason.startswith("invalid YAML at line ")


def test_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "assets.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(empty)
    assert info.value.errors == (FieldError("", "must be a mapping with keys sites and assets, got null"),)


def test_load_from_file_converts_ints(tmp_path: Path) -> None:
    f = tmp_path / "assets.yaml"
    f.write_text(
        f"sites:\n  - {{id: {SITE_A.upper()}, name: Park}}\n"
        f"assets:\n  - {{id: {BESS_ID}, name: B, site_id: {SITE_A}, capacity_mwhr: 4, max_mw: 2, min_mw: -2}}\n"
    )
    inv = load_inventory(f)
    (asset,) = inv.assets
    assert inv.sites[0].id == SITE_A
    assert (asset.capacity_mwhr, asset.max_mw, asset.min_mw) == (4.0, 2.0, -2.0)
    assert type(asset.max_mw) is float and asset.type is AssetType.BESS
