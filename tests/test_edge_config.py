"""Edge configuration: env vars, flags over env, defaults, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from der_actors.inventory import load_inventory
from der_actors.model import Asset, AssetType
from edge import cli
from edge.config import ConfigError, EdgeConfig, load_config, parse_headend

ASSETS = str(Path(__file__).resolve().parent.parent / "assets.yaml")
RIDGEWAY = "f91f3035-50e0-4460-81ba-4fe29ad09222"
ASSET = "c85e9759-8fac-40b8-ae8e-e9f6c796f8bb"
SITE = "7e3a446b-8390-41f8-ba6c-946169ccf1e8"
LEGACY = {"ASSET_ID": ASSET, "SITE_ID": SITE}


def errors(argv: list[str], env: dict[str, str]) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load_config(argv, env)
    return info.value.errors


def test_gateway_mode_serves_every_asset_of_the_site() -> None:
    config = load_config([], {"GATEWAY_SITE_ID": RIDGEWAY, "ASSETS_PATH": ASSETS})
    assert config.gateway_mode
    assert config.assets == load_inventory(ASSETS).assets_of(RIDGEWAY)
    assert len(config.assets) == 13
    assert (config.agent_id, config.gateway_id, config.site_id) == (RIDGEWAY, RIDGEWAY, RIDGEWAY)
    assert config.primary_asset_id is None
    assert config.site_name == "Ridgeway Energy Hub"
    named = load_config(["--gateway-id", "gw-7"], {"GATEWAY_SITE_ID": RIDGEWAY.upper(), "ASSETS_PATH": ASSETS})
    assert (named.agent_id, named.gateway_id, named.site_id) == ("gw-7", "gw-7", RIDGEWAY)


def test_single_asset_defaults_are_a_2_mw_4_mwh_bess() -> None:
    config = load_config([], LEGACY)
    assert config == EdgeConfig(
        site_id=SITE,
        agent_id=f"agent-{ASSET}",
        gateway_id="",
        assets=(
            Asset(id=ASSET, name=ASSET, site_id=SITE, type=AssetType.BESS, capacity_mwhr=4.0,
                  max_mw=2.0, min_mw=-2.0, ramp_rate_mw_per_min=1.0, efficiency=0.9),
        ),
        primary_asset_id=ASSET,
        site_name=SITE,
        headend_host="127.0.0.1",
        headend_port=50051,
        telemetry_interval_s=4.0,
        heartbeat_interval_s=30.0,
        headend_timeout_s=90.0,
        log_format="kv",
        spool_dir=f"spool/agent-{ASSET}",
        spool_max_mb=64.0,
        backfill_rate=2000.0,
    )


def test_single_asset_from_env_and_type_dependent_defaults() -> None:
    env = {**LEGACY, "SITE_NAME": "Harbour", "ASSET_NAME": "B1", "ASSET_LOCATION": "Quay 3",
           "CAPACITY_MWHR": "20", "MAX_MW": "5", "MIN_MW": "-5", "EFFICIENCY": "0.81",
           "RAMP_RATE_MW_PER_MIN": "10", "TELEMETRY_INTERVAL_S": "1.5", "LOG_FORMAT": "json"}
    config = load_config([], env)
    (asset,) = config.assets
    assert asset == Asset(id=ASSET, name="B1", site_id=SITE, type=AssetType.BESS, location="Quay 3",
                          capacity_mwhr=20.0, max_mw=5.0, min_mw=-5.0, ramp_rate_mw_per_min=10.0,
                          efficiency=0.81)
    assert (config.site_name, config.telemetry_interval_s, config.log_format) == ("Harbour", 1.5, "json")
    (pv,) = load_config([], {**LEGACY, "ASSET_TYPE": "pv"}).assets
    assert (pv.type, pv.max_mw, pv.min_mw, pv.capacity_mwhr) == (AssetType.PV, 2.0, 0.0, None)
    (ev,) = load_config([], {**LEGACY, "ASSET_TYPE": "ev_charger"}).assets
    assert (ev.max_mw, ev.min_mw) == (0.0, -2.0)


def test_flags_win_over_env_and_empty_env_is_unset() -> None:
    env = {**LEGACY, "HEADEND_GRPC": "env-host:1", "MAX_MW": "", "HEARTBEAT_INTERVAL_S": "10"}
    config = load_config(["--headend-grpc", "http://flag-host:2", "--heartbeat-interval-s", "5",
                          "--headend-timeout-s", "12"], env)
    assert (config.headend_host, config.headend_port) == ("flag-host", 2)
    assert (config.heartbeat_interval_s, config.headend_timeout_s) == (5.0, 12.0)
    assert config.assets[0].max_mw == 2.0


def test_spool_settings_default_to_a_directory_per_agent_and_take_flags_over_env() -> None:
    gateway = load_config(["--gateway-id", "north/gw 1"], {"GATEWAY_SITE_ID": RIDGEWAY, "ASSETS_PATH": ASSETS})
    assert gateway.spool_dir == "spool/north_gw_1"  # the free-text id made one safe path component
    config = load_config(["--edge-spool-dir", "/data/spool", "--edge-backfill-rate", "500"],
                         {**LEGACY, "EDGE_SPOOL_DIR": "/env", "EDGE_SPOOL_MAX_MB": "8", "EDGE_BACKFILL_RATE": "9"})
    assert (config.spool_dir, config.spool_max_mb, config.backfill_rate) == ("/data/spool", 8.0, 500.0)
    assert config.spool_max_bytes == 8 * 1024 * 1024


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"MAX_MW": "lots"}, "MAX_MW: must be a number, got 'lots'"),
        ({"MAX_MW": "-1"}, "MAX_MW: must be >= 0, got -1"),
        ({"MIN_MW": "1"}, "MIN_MW: must be <= 0, got 1"),
        ({"CAPACITY_MWHR": "0"}, "CAPACITY_MWHR: must be > 0, got 0"),
        ({"EFFICIENCY": "1.5"}, "EFFICIENCY: must be <= 1, got 1.5"),
        ({"RAMP_RATE_MW_PER_MIN": "nan"}, "RAMP_RATE_MW_PER_MIN: must be finite, got 'nan'"),
        ({"TELEMETRY_INTERVAL_S": "0"}, "TELEMETRY_INTERVAL_S: must be > 0, got 0"),
        ({"HEADEND_TIMEOUT_S": "-3"}, "HEADEND_TIMEOUT_S: must be > 0, got -3"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT: must be one of kv, json; got 'xml'"),
        ({"ASSET_TYPE": "diesel"}, "ASSET_TYPE: must be one of bess, pv, wind, ev_charger; got 'diesel'"),
        ({"ASSET_ID": "b1"}, "ASSET_ID: must be a UUID, got 'b1'"),
        ({"HEADEND_GRPC": "nohost"}, "HEADEND_GRPC: must be host:port or http://host:port, got 'nohost'"),
        ({"HEADEND_GRPC": "h:99999"}, "HEADEND_GRPC: port must be 1..65535, got 99999"),
        ({"HEADEND_GRPC": "https://h:1"},
         "HEADEND_GRPC: https (TLS) is not supported yet; use http://host:port or host:port"),
        ({"GATEWAY_ID": "gw"}, "GATEWAY_ID: is for gateway mode; set GATEWAY_SITE_ID too"),
        ({"EDGE_SPOOL_MAX_MB": "0"}, "EDGE_SPOOL_MAX_MB: must be >= 0.1, got 0"),
        ({"EDGE_BACKFILL_RATE": "-5"}, "EDGE_BACKFILL_RATE: must be > 0, got -5"),
        ({"EDGE_SPOOL_DIR": " "}, "EDGE_SPOOL_DIR: must not be blank"),
    ],
)
def test_a_bad_value_names_the_variable_and_the_reason(env: dict[str, str], expected: str) -> None:
    assert errors([], {**LEGACY, **env}) == (expected,)


def test_every_problem_is_reported_at_once() -> None:
    assert errors(["--max-mw", "x"], {"EFFICIENCY": "0"}) == (
        "ASSET_ID: required",
        "SITE_ID: required",
        "MAX_MW: must be a number, got 'x'",
        "EFFICIENCY: must be > 0, got 0",
    )


def test_gateway_errors_name_the_variable() -> None:
    unknown = "00000000-0000-0000-0000-000000000000"
    assert errors([], {"GATEWAY_SITE_ID": unknown, "ASSETS_PATH": ASSETS}) == (
        f"GATEWAY_SITE_ID: no site with id {unknown} in {ASSETS}",
    )
    (missing,) = errors([], {"GATEWAY_SITE_ID": RIDGEWAY, "ASSETS_PATH": "/nonexistent.yaml"})
    assert missing.startswith("ASSETS_PATH: /nonexistent.yaml: cannot read")
    assert errors([], {"GATEWAY_SITE_ID": RIDGEWAY, "ASSETS_PATH": ASSETS, "MAX_MW": "1"}) == (
        "MAX_MW: is for single-asset mode; GATEWAY_SITE_ID selects gateway mode",
    )


def test_inventory_problems_are_reported_with_their_field_path(tmp_path: Path) -> None:
    bad = tmp_path / "assets.yaml"
    bad.write_text(f"sites:\n  - id: {RIDGEWAY}\n    name: R\nassets:\n"
                   f"  - id: {ASSET}\n    name: A\n    site_id: {RIDGEWAY}\n    max_mw: lots\n    min_mw: 0\n"
                   "    type: pv\n")
    assert errors([], {"GATEWAY_SITE_ID": RIDGEWAY, "ASSETS_PATH": str(bad)}) == (
        f"ASSETS_PATH: {bad}: assets[0].max_mw: must be a number, got str 'lots'",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051)),
        ("http://headend:8443/", ("headend", 8443)),
        ("[::1]:50051", ("::1", 50051)),
        ("http://[fe80::1]:7", ("fe80::1", 7)),
    ],
)
def test_parse_headend(text: str, expected: tuple[str, int]) -> None:
    assert parse_headend(text) == expected


def test_cli_exits_2_with_the_problems_on_stderr(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_SITE_ID", "ASSET_ID", "SITE_ID", "MAX_MW"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main(["--asset-id", ASSET, "--site-id", SITE, "--max-mw", "-2"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "der-edge: invalid configuration:" in err
    assert "MAX_MW: must be >= 0, got -2" in err


async def test_der_edge_refuses_a_spool_directory_another_agent_holds(tmp_path: Path) -> None:
    from edge.spool import Spool, SpoolLocked

    config = load_config(["--edge-spool-dir", str(tmp_path)], LEGACY)
    held = Spool.open(str(tmp_path))
    try:
        with pytest.raises(SpoolLocked, match="in use by another agent"):
            await cli.serve(config)
    finally:
        held.close()
