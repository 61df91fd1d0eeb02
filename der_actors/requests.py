"""Validation of operator requests (pure). Every refusal names the field and says why.

`RequestError` carries the HTTP status the REST layer answers with: 400 for a malformed request,
404 for a target that does not exist.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid

import attrs

from der_actors.dispatching import DispatchRequest
from der_actors.model import Inventory


@attrs.frozen
class RequestError(Exception):
    status: int
    code: str
    message: str
    field: str | None = None


DISPATCH_FIELDS = {"asset_id", "site_id", "mw", "duration_s", "ttl_s"}
MAX_HISTORY_LIMIT = 10_000
# A sanity bound on any MW figure an operator sends (1 TW, far past any site). Finite floats beyond
# it overflow the site split's kW arithmetic; refusing them here keeps bad input a 400, never a 500.
MAX_ABS_MW = 1_000_000.0


def parse_json(body: bytes) -> object:
    # ValueError covers JSONDecodeError and UnicodeDecodeError, and also an integer literal longer
    # than Python's int-string limit; RecursionError is a deeply nested body. Both are bad input.
    try:
        return json.loads(body)
    except ValueError as exc:
        raise RequestError(400, "malformed_json", f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError(400, "malformed_json", "request body is not valid JSON: nested too deeply") from None


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(400, "invalid_field", f"must be a number, got {type(value).__name__}", field)
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise RequestError(400, "invalid_field", "must be a finite number", field) from None
    if not math.isfinite(number):
        raise RequestError(400, "invalid_field", "must be a finite number", field)
    return number


def _uuid(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise RequestError(400, "invalid_field", f"must be a UUID string, got {type(value).__name__}", field)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise RequestError(400, "invalid_field", f"must be a UUID, got {value!r}", field) from None


def parse_dispatch(body: object, inventory: Inventory) -> DispatchRequest:
    if not isinstance(body, dict):
        raise RequestError(400, "invalid_body", f"body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - DISPATCH_FIELDS)
    if unknown:
        raise RequestError(400, "unknown_field", f"unknown field (allowed: {', '.join(sorted(DISPATCH_FIELDS))})", unknown[0])
    has_asset, has_site = body.get("asset_id") is not None, body.get("site_id") is not None
    if not has_asset and not has_site:
        raise RequestError(400, "missing_field", "give asset_id or site_id", "asset_id")
    if "mw" not in body:
        raise RequestError(400, "missing_field", "required", "mw")
    mw = _number(body["mw"], "mw")
    if abs(mw) > MAX_ABS_MW:
        raise RequestError(400, "invalid_field", f"must be between {-MAX_ABS_MW:g} and {MAX_ABS_MW:g}", "mw")
    duration_s = 0.0
    if body.get("duration_s") is not None:
        duration_s = _number(body["duration_s"], "duration_s")
        if duration_s < 0:
            raise RequestError(400, "invalid_field", "must be >= 0 (0 = hold until replaced)", "duration_s")
    ttl_s = None
    if body.get("ttl_s") is not None:
        ttl_s = _number(body["ttl_s"], "ttl_s")
        if ttl_s <= 0:
            raise RequestError(400, "invalid_field", "must be > 0 seconds", "ttl_s")
    if has_asset:  # an asset target wins, as on the wire; a site_id beside it must match
        asset_id = _uuid(body["asset_id"], "asset_id")
        asset = inventory.asset(asset_id)
        if asset is None:
            raise RequestError(404, "unknown_asset", f"no asset {asset_id}", "asset_id")
        if has_site and _uuid(body["site_id"], "site_id") != asset.site_id:
            raise RequestError(400, "invalid_field", f"asset {asset_id} belongs to site {asset.site_id}", "site_id")
        return DispatchRequest(mw=mw, asset_id=asset_id, duration_s=duration_s, ttl_s=ttl_s)
    site_id = _uuid(body["site_id"], "site_id")
    if inventory.site(site_id) is None:
        raise RequestError(404, "unknown_site", f"no site {site_id}", "site_id")
    return DispatchRequest(mw=mw, site_id=site_id, duration_s=duration_s, ttl_s=ttl_s)


def parse_limit(raw: str | None, default: int = 100, maximum: int = MAX_HISTORY_LIMIT) -> int:
    if raw is None:
        return default
    if not re.fullmatch(r"\d{1,9}", raw):
        raise RequestError(400, "invalid_parameter", f"must be an integer, got {raw!r}", "limit")
    value = int(raw)
    if not 1 <= value <= maximum:
        raise RequestError(400, "invalid_parameter", f"must be between 1 and {maximum}", "limit")
    return value


def parse_time(raw: str | None, field: str) -> float | None:
    """RFC 3339 (`2026-11-23T10:00:00Z`) or seconds since the epoch."""
    if raw is None:
        return None
    try:
        value = float(raw) if re.fullmatch(r"\d{1,12}(\.\d+)?", raw) else _rfc3339(raw)
    except ValueError:
        raise RequestError(400, "invalid_parameter", f"must be RFC 3339 or epoch seconds, got {raw!r}", field) from None
    return value


def _rfc3339(raw: str) -> float:
    parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed.timestamp()


def parse_mw_param(raw: str | None) -> float:
    if raw is None:
        raise RequestError(400, "missing_parameter", "required", "mw")
    try:
        value = float(raw)
    except ValueError:
        raise RequestError(400, "invalid_parameter", f"must be a number, got {raw!r}", "mw") from None
    if not math.isfinite(value):
        raise RequestError(400, "invalid_parameter", "must be a finite number", "mw")
    if abs(value) > MAX_ABS_MW:
        raise RequestError(400, "invalid_parameter", f"must be between {-MAX_ABS_MW:g} and {MAX_ABS_MW:g}", "mw")
    return value


def parse_uuid_param(raw: str | None, field: str) -> str | None:
    if raw is None:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise RequestError(400, "invalid_parameter", f"must be a UUID, got {raw!r}", field) from None


MAX_WAIT_S = 60.0
STATES = ("submitted", "pending", "sent", "received", "applied", "rejected", "expired", "superseded", "failed")


def parse_wait(wait: str | None, timeout: str | None) -> float | None:
    """`?wait=applied&timeout_s=5`: how long POST /dispatch waits for a final state (None: no wait)."""
    if wait is None:
        if timeout is not None:
            raise RequestError(400, "invalid_parameter", "only with wait=applied", "timeout_s")
        return None
    if wait not in ("applied", "terminal"):
        raise RequestError(400, "invalid_parameter", f"must be 'applied' (wait for a final state), got {wait!r}", "wait")
    if timeout is None:
        return 5.0
    try:
        value = float(timeout)
    except ValueError:
        raise RequestError(400, "invalid_parameter", f"must be a number of seconds, got {timeout!r}", "timeout_s") from None
    if not 0 < value <= MAX_WAIT_S:
        raise RequestError(400, "invalid_parameter", f"must be > 0 and <= {MAX_WAIT_S:g}", "timeout_s")
    return value


def parse_state(raw: str | None) -> str | None:
    if raw is not None and raw not in STATES:
        raise RequestError(400, "invalid_parameter", f"must be one of {', '.join(STATES)}", "state")
    return raw
