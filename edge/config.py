"""The edge agent's configuration: env vars and CLI flags -> one frozen EdgeConfig, validated up front.

Every setting is an env var and also a flag (`HEADEND_GRPC` <-> `--headend-grpc`); a flag wins over
the env var, and an empty env var counts as unset. Every problem is reported at once, each naming the
variable and the reason, so a bad deployment is fixed in one pass.

Two modes:
- gateway: `GATEWAY_SITE_ID` is set; every asset of that site in `ASSETS_PATH` is served over one
  stream. `GATEWAY_ID` (default: the site id) is the agent's stable identity.
- single-asset (legacy): `ASSET_ID` and `SITE_ID`, the asset's fields from env vars. `ASSET_TYPE`
  (default bess) is our addition so the launcher can start PV, wind and EV agents in this mode too.

Telemetry spool (see edge.spool, edge.delivery): `EDGE_SPOOL_DIR` (default `spool/<agent id>` under
the working directory; one directory per agent, locked while in use), `EDGE_SPOOL_MAX_MB` (64),
`EDGE_BACKFILL_RATE` (2000 points/s: an hour of a 12-asset gateway at 4 s, 10,800 points, replays
in ~5.4 s, while one unthrottled gateway reaches ~35-50k points/s end to end into SQLite
(bench/backfill_bench.py), so many gateways reconnecting at once cannot swamp the headend).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from der_actors.inventory import InventoryError, load_inventory
from der_actors.model import Asset, AssetType

__all__ = ["ConfigError", "EdgeConfig", "load_config", "parse_headend", "build_parser", "ENV_VARS"]


class ConfigError(ValueError):
    """The configuration is unusable; `errors` holds one line per problem, each naming its variable."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(self.errors))


@attrs.frozen
class EdgeConfig:
    site_id: str
    agent_id: str  # stable identity: GATEWAY_ID in gateway mode, else "agent-<asset_id>"
    gateway_id: str  # GATEWAY_ID in gateway mode; "" for a legacy single-asset agent
    assets: tuple[Asset, ...]  # what this agent serves, in inventory order
    primary_asset_id: str | None = None  # single-asset mode: the asset; None for a gateway
    site_name: str = ""
    headend_host: str = "127.0.0.1"
    headend_port: int = 50051
    telemetry_interval_s: float = 4.0
    heartbeat_interval_s: float = 30.0
    headend_timeout_s: float = 90.0
    log_format: str = "kv"
    spool_dir: str = ""  # EDGE_SPOOL_DIR; load_config defaults it to spool/<agent_id>
    spool_max_mb: float = 64.0
    backfill_rate: float = 2000.0  # points per second

    @property
    def spool_max_bytes(self) -> int:
        return int(self.spool_max_mb * 1024 * 1024)

    @property
    def gateway_mode(self) -> bool:
        return self.primary_asset_id is None

    @property
    def headend(self) -> str:
        host = f"[{self.headend_host}]" if ":" in self.headend_host else self.headend_host
        return f"{host}:{self.headend_port}"


# --- the settings table: env var -> flag, help, default ----------------------------------------

@attrs.frozen
class _Setting:
    env: str
    help: str
    default: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")

    @property
    def dest(self) -> str:
        return self.env.lower()


_SETTINGS = (
    _Setting("GATEWAY_SITE_ID", "gateway mode: serve every asset of this site (UUID)"),
    _Setting("GATEWAY_ID", "gateway mode: this gateway's stable id (default: the site id)"),
    _Setting("ASSETS_PATH", "gateway mode: the inventory file", "assets.yaml"),
    _Setting("ASSET_ID", "single-asset mode: the asset's id (UUID)"),
    _Setting("SITE_ID", "single-asset mode: the asset's site id (UUID)"),
    _Setting("SITE_NAME", "single-asset mode: the site's name (default: the site id)"),
    _Setting("ASSET_NAME", "single-asset mode: the asset's name (default: the asset id)"),
    _Setting("ASSET_LOCATION", "single-asset mode: where the asset is"),
    _Setting("ASSET_TYPE", "single-asset mode: bess | pv | wind | ev_charger", "bess"),
    _Setting("CAPACITY_MWHR", "single-asset mode: energy capacity, MWh (bess)", "4.0"),
    _Setting("MAX_MW", "single-asset mode: most export/discharge, MW (default 2.0; 0 for ev_charger)"),
    _Setting("MIN_MW", "single-asset mode: most import/charge, MW (default -2.0; 0 for pv and wind)"),
    _Setting("EFFICIENCY", "single-asset mode: round-trip efficiency in (0, 1]", "0.9"),
    _Setting("RAMP_RATE_MW_PER_MIN", "single-asset mode: ramp rate, MW/min", "1.0"),
    _Setting("HEADEND_GRPC", "the headend's gRPC address, host:port or http://host:port", "127.0.0.1:50051"),
    _Setting("TELEMETRY_INTERVAL_S", "seconds between telemetry points", "4"),
    _Setting("HEARTBEAT_INTERVAL_S", "seconds between heartbeats up", "30"),
    _Setting("HEADEND_TIMEOUT_S", "no message from the headend for this long = stale stream", "90"),
    _Setting("LOG_FORMAT", "kv | json", "kv"),
    _Setting("EDGE_SPOOL_DIR", "where unacknowledged telemetry and setpoint outcomes are kept, one directory "
                               "per agent (default: spool/<agent id>, relative to the working directory)"),
    _Setting("EDGE_SPOOL_MAX_MB", "bound of the telemetry spool in MB; when full the oldest points are dropped "
                                  "(and counted)", "64"),
    _Setting("EDGE_BACKFILL_RATE", "points per second replayed from the spool after a reconnect "
                                   "(live telemetry is not limited)", "2000"),
)

ENV_VARS: tuple[str, ...] = tuple(s.env for s in _SETTINGS)

# Mode-specific variables: setting one from the other mode is a mistake worth naming.
_GATEWAY_ONLY = ("GATEWAY_ID",)
_SINGLE_ONLY = (
    "ASSET_ID", "SITE_ID", "SITE_NAME", "ASSET_NAME", "ASSET_LOCATION", "ASSET_TYPE",
    "CAPACITY_MWHR", "MAX_MW", "MIN_MW", "EFFICIENCY", "RAMP_RATE_MW_PER_MIN",
)


def build_parser(prog: str = "der-edge") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="DER edge agent: dials the headend and serves one site (gateway) or one asset.",
        epilog="Each flag can also be given as the env var shown; a flag wins over its env var.",
    )
    for s in _SETTINGS:
        default = f"; default {s.default}" if s.default is not None else ""
        parser.add_argument(s.flag, dest=s.dest, metavar=s.env, help=f"{s.help} [env {s.env}{default}]")
    return parser


# --- checks: each returns the clean value or raises _Invalid with the reason ---------------------


class _Invalid(Exception):
    pass


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise _Invalid(f"must be a UUID, got {text!r}") from None


def _number(*, above: float | None = None, at_least: float | None = None,
            at_most: float | None = None) -> Callable[[str], float]:
    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _Invalid(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise _Invalid(f"must be finite, got {text!r}")
        if above is not None and not value > above:
            raise _Invalid(f"must be > {above:g}, got {value:g}")
        if at_least is not None and value < at_least:
            raise _Invalid(f"must be >= {at_least:g}, got {value:g}")
        if at_most is not None and value > at_most:
            raise _Invalid(f"must be <= {at_most:g}, got {value:g}")
        return value

    return check


def _choice(*allowed: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if text not in allowed:
            raise _Invalid(f"must be one of {', '.join(allowed)}; got {text!r}")
        return text

    return check


def _text(text: str) -> str:
    if not text.strip():
        raise _Invalid("must not be blank")
    return text


def parse_headend(text: str) -> tuple[str, int]:
    """`host:port`, `http://host:port` or `[v6]:port` -> (host, port); raises ValueError."""
    rest = text.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme == "https":
            raise ValueError("https (TLS) is not supported yet; use http://host:port or host:port")
        if scheme != "http":
            raise ValueError(f"scheme must be http, got {scheme!r}")
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
    else:
        host, sep, port_text = rest.rpartition(":")
    if not sep or not host or ":" in port_text:
        raise ValueError(f"must be host:port or http://host:port, got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")
    return host, port


# --- loading ---------------------------------------------------------------------------------------


class _Values:
    """Raw values (flag over env, empty = unset) and the errors found while checking them."""

    def __init__(self, flags: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self._raw: dict[str, str | None] = {}
        for s in _SETTINGS:
            flag = flags.get(s.dest)
            value = flag if flag is not None else environ.get(s.env)
            self._raw[s.env] = value if value else None
        self._defaults = {s.env: s.default for s in _SETTINGS}
        self.errors: list[str] = []

    def given(self, name: str) -> bool:
        return self._raw[name] is not None

    def get(self, name: str, check: Callable[[str], Any], default: str | None = None,
            *, required: bool = False) -> Any:
        text = self._raw[name]
        if text is None:
            text = default if default is not None else self._defaults[name]
        if text is None:
            if required:
                self.errors.append(f"{name}: required")
            return None
        try:
            return check(text)
        except _Invalid as e:
            self.errors.append(f"{name}: {e}")
            return None

    def fail(self, name: str, reason: str) -> None:
        self.errors.append(f"{name}: {reason}")


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> EdgeConfig:
    """Build the config from flags (`argv`, default sys.argv[1:]) over env vars (default os.environ).

    Raises ConfigError listing every problem; argparse itself exits 2 on an unknown flag.
    """
    flags = vars(build_parser().parse_args(argv))
    values = _Values(flags, os.environ if environ is None else environ)

    headend = values.get("HEADEND_GRPC", _headend_check)
    common = {
        "telemetry_interval_s": values.get("TELEMETRY_INTERVAL_S", _number(above=0)),
        "heartbeat_interval_s": values.get("HEARTBEAT_INTERVAL_S", _number(above=0)),
        "headend_timeout_s": values.get("HEADEND_TIMEOUT_S", _number(above=0)),
        "log_format": values.get("LOG_FORMAT", _choice("kv", "json")),
        "spool_max_mb": values.get("EDGE_SPOOL_MAX_MB", _number(at_least=0.1)),
        "backfill_rate": values.get("EDGE_BACKFILL_RATE", _number(above=0)),
    }
    spool_dir = values.get("EDGE_SPOOL_DIR", _text)

    if values.given("GATEWAY_SITE_ID"):
        for name in _SINGLE_ONLY:
            if values.given(name):
                values.fail(name, "is for single-asset mode; GATEWAY_SITE_ID selects gateway mode")
        mode = _gateway(values)
    else:
        for name in _GATEWAY_ONLY:
            if values.given(name):
                values.fail(name, "is for gateway mode; set GATEWAY_SITE_ID too")
        mode = _single_asset(values)

    if values.errors or mode is None:
        raise ConfigError(values.errors)
    host, port = headend
    spool_dir = spool_dir or os.path.join("spool", _file_name(mode["agent_id"]))
    return EdgeConfig(headend_host=host, headend_port=port, spool_dir=spool_dir, **mode, **common)


def _file_name(agent_id: str) -> str:
    """The agent id as one safe path component (GATEWAY_ID is free text)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", agent_id).lstrip(".") or "agent"


def _headend_check(text: str) -> tuple[str, int]:
    try:
        return parse_headend(text)
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _gateway(values: _Values) -> dict[str, Any] | None:
    site_id = values.get("GATEWAY_SITE_ID", _uuid)
    gateway_id = values.get("GATEWAY_ID", _text)
    path = values.get("ASSETS_PATH", _text)
    if site_id is None or path is None:
        return None
    try:
        inventory = load_inventory(path)
    except InventoryError as e:
        for err in e.errors:
            values.fail("ASSETS_PATH", f"{path}: {err}" if err.path != path else str(err))
        return None
    site = inventory.site(site_id)
    if site is None:
        values.fail("GATEWAY_SITE_ID", f"no site with id {site_id} in {path}")
        return None
    assets = inventory.assets_of(site_id)
    if not assets:
        values.fail("GATEWAY_SITE_ID", f"site {site_id} has no assets in {path}")
        return None
    gateway_id = gateway_id or site_id
    return {
        "site_id": site_id,
        "site_name": site.name,
        "agent_id": gateway_id,
        "gateway_id": gateway_id,
        "assets": assets,
        "primary_asset_id": None,
    }


# Defaults that depend on the type: PV and wind only generate, an EV charger only consumes.
_DEFAULT_LIMITS = {
    AssetType.BESS: ("2.0", "-2.0"),
    AssetType.PV: ("2.0", "0.0"),
    AssetType.WIND: ("2.0", "0.0"),
    AssetType.EV_CHARGER: ("0.0", "-2.0"),
}


def _single_asset(values: _Values) -> dict[str, Any] | None:
    asset_id = values.get("ASSET_ID", _uuid, required=True)
    site_id = values.get("SITE_ID", _uuid, required=True)
    type_text = values.get("ASSET_TYPE", _choice(*(t.value for t in AssetType)))
    kind = AssetType(type_text) if type_text is not None else AssetType.BESS
    max_default, min_default = _DEFAULT_LIMITS[kind]
    max_mw = values.get("MAX_MW", _number(at_least=0), max_default)
    min_mw = values.get("MIN_MW", _number(at_most=0), min_default)
    capacity = (
        values.get("CAPACITY_MWHR", _number(above=0))
        if kind is AssetType.BESS or values.given("CAPACITY_MWHR")
        else None
    )
    efficiency = values.get("EFFICIENCY", _number(above=0, at_most=1))
    ramp = values.get("RAMP_RATE_MW_PER_MIN", _number(above=0))
    site_name = values.get("SITE_NAME", _text)
    name = values.get("ASSET_NAME", _text)
    location = values.get("ASSET_LOCATION", _text)
    if asset_id is None or site_id is None or None in (max_mw, min_mw, efficiency, ramp):
        return None
    if kind is AssetType.BESS and capacity is None:
        return None
    asset = Asset(
        id=asset_id,
        name=name or asset_id,
        site_id=site_id,
        type=kind,
        location=location,
        capacity_mwhr=capacity,
        max_mw=max_mw,
        min_mw=min_mw,
        ramp_rate_mw_per_min=ramp,
        efficiency=efficiency,
    )
    return {
        "site_id": site_id,
        "site_name": site_name or site_id,
        "agent_id": f"agent-{asset_id}",
        "gateway_id": "",
        "assets": (asset,),
        "primary_asset_id": asset_id,
    }
