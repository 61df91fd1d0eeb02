"""Headend settings: environment variables, each also a command-line flag (the flag wins).

Parsed and validated before anything starts; a bad value stops start-up with a message naming the
variable and the reason.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence

import attrs

from der_actors.storage import WRITERS


class ConfigError(ValueError):
    pass


@attrs.frozen
class HeadendSettings:
    http_host: str
    http_port: int
    grpc_host: str
    grpc_port: int
    assets_path: str
    heartbeat_timeout_s: float
    database_url: str
    reset_db: bool
    log_format: str
    dispatch_ack_timeout_s: float
    dispatch_ttl_s: float = 300.0
    telemetry_retention_days: float = 30.0
    storage_writer: str = "process"


# (env var, flag, default, help)
_OPTIONS = (
    ("HEADEND_HTTP_ADDR", "--http-addr", "127.0.0.1:3001", "REST listen address host:port"),
    ("HEADEND_GRPC_ADDR", "--grpc-addr", "127.0.0.1:50051", "agent gRPC listen address host:port"),
    ("ASSETS_PATH", "--assets", "assets.yaml", "inventory file"),
    ("HEARTBEAT_TIMEOUT_S", "--heartbeat-timeout-s", "90", "close a session silent this long"),
    ("DATABASE_URL", "--database-url", "",
     "history store: sqlite:///path, postgresql://..., memory:// (unset: SQLite der_headend.sqlite3)"),
    ("RESET_DB", "--reset-db", "", "empty history tables at start-up (truthy)"),
    ("STORAGE_WRITER", "--storage-writer", "process",
     "where SQLite's and PostgreSQL's writes run: process (a child process) or thread"),
    ("LOG_FORMAT", "--log-format", "kv", "kv or json"),
    ("DISPATCH_ACK_TIMEOUT_S", "--dispatch-ack-timeout-s", "10", "fail a dispatch with no outcome by then"),
    ("DISPATCH_TTL_S", "--dispatch-ttl-s", "300", "default time a dispatch may wait for an offline target"),
    ("TELEMETRY_RETENTION_DAYS", "--telemetry-retention-days", "30", "prune stored telemetry older than this"),
)


def parse_addr(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{name}: must be host:port, got {value!r}")
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"{name}: port must be an integer, got {port!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"{name}: port must be 0-65535, got {number}")
    return host.strip("[]"), number


def _positive(value: str, name: str, unit: str = "seconds") -> float:
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}: must be a number of {unit}, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{name}: must be > 0, got {value!r}")
    return number


def truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def load_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> HeadendSettings:
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="der-headend", description="DER control plane headend")
    for var, flag, default, help_text in _OPTIONS:
        parser.add_argument(flag, dest=var, default=None, help=f"{help_text} (env {var}, default {default!r})")
    args = vars(parser.parse_args(argv))
    raw = {var: args[var] if args[var] is not None else env.get(var, default) for var, _, default, _ in _OPTIONS}
    http_host, http_port = parse_addr(raw["HEADEND_HTTP_ADDR"], "HEADEND_HTTP_ADDR")
    grpc_host, grpc_port = parse_addr(raw["HEADEND_GRPC_ADDR"], "HEADEND_GRPC_ADDR")
    if raw["LOG_FORMAT"] not in ("kv", "json"):
        raise ConfigError(f"LOG_FORMAT: must be kv or json, got {raw['LOG_FORMAT']!r}")
    if raw["STORAGE_WRITER"] not in WRITERS:
        raise ConfigError(f"STORAGE_WRITER: must be one of {', '.join(WRITERS)}, got {raw['STORAGE_WRITER']!r}")
    return HeadendSettings(
        http_host=http_host,
        http_port=http_port,
        grpc_host=grpc_host,
        grpc_port=grpc_port,
        assets_path=raw["ASSETS_PATH"],
        heartbeat_timeout_s=_positive(raw["HEARTBEAT_TIMEOUT_S"], "HEARTBEAT_TIMEOUT_S"),
        database_url=raw["DATABASE_URL"],
        reset_db=truthy(raw["RESET_DB"]),
        log_format=raw["LOG_FORMAT"],
        dispatch_ack_timeout_s=_positive(raw["DISPATCH_ACK_TIMEOUT_S"], "DISPATCH_ACK_TIMEOUT_S"),
        dispatch_ttl_s=_positive(raw["DISPATCH_TTL_S"], "DISPATCH_TTL_S"),
        telemetry_retention_days=_positive(raw["TELEMETRY_RETENTION_DAYS"], "TELEMETRY_RETENTION_DAYS", "days"),
        storage_writer=raw["STORAGE_WRITER"],
    )
