"""The OpenAPI 3.1 description of every REST route, and a self-contained page that renders it."""

from __future__ import annotations

from der_actors import __version__
from der_actors.requests import STATES
from der_actors.requests import MAX_ABS_MW

_ERR = {"$ref": "#/components/responses/Error"}


def _uuid_param(name: str, where: str = "path", description: str = "") -> dict:
    return {"name": name, "in": where, "required": where == "path", "description": description,
            "schema": {"type": "string", "format": "uuid"}}


_LIMIT = {"name": "limit", "in": "query", "description": "rows to return (1 to 10,000; default 100)",
          "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}}
_MW = {"type": "number", "minimum": -MAX_ABS_MW, "maximum": MAX_ABS_MW}
_TIME = {"type": "string", "description": "RFC 3339 (2026-11-23T10:00:00Z) or epoch seconds"}


def _get(summary: str, params: list | None = None, errors: tuple[str, ...] = ("400", "404"), ok: dict | None = None) -> dict:
    op: dict = {"summary": summary, "parameters": params or [],
                "responses": {"200": ok or {"description": "OK", "content": {"application/json": {}}}}}
    for code in errors:
        op["responses"][code] = _ERR
    return {"get": op}


def openapi_document() -> dict:
    asset = _uuid_param("asset_id")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "DER control plane headend",
            "version": __version__,
            "description": "See every asset now and dispatch MW setpoints. "
            "Sign convention: +MW = discharge / export / generation, -MW = charge / import / load.",
        },
        "paths": {
            "/health": _get("Liveness (200 while the process serves): status (degraded while history cannot be "
                            "written), sessions, assets, event-loop lag (last and worst of the last 60 s, ms), "
                            "history counters (received, stored, buffered, dropped, rejected points; last_error), "
                            "intake (telemetry turns, in use, streams waiting in line for one)",
                            errors=()),
            "/sites": _get("Configured sites, inventory order", errors=()),
            "/assets": _get("Configured assets (the inventory), inventory order", errors=()),
            "/agents": _get("One row per configured asset: connection, session, last seen, telemetry lag, recent sessions", errors=()),
            "/telemetry/{asset_id}": _get("Latest telemetry point of an asset (404 no_data_yet before its first)", [asset]),
            "/telemetry/{asset_id}/history": _get(
                "Stored telemetry, newest first", [asset, {"name": "since", "in": "query", "schema": _TIME},
                                                  {"name": "until", "in": "query", "schema": _TIME}, _LIMIT]),
            "/telemetry/{asset_id}/history.csv": _get(
                "The same rows as CSV", [asset, {"name": "since", "in": "query", "schema": _TIME},
                                        {"name": "until", "in": "query", "schema": _TIME}, _LIMIT],
                ok={"description": "CSV", "content": {"text/csv": {}}}),
            "/heartbeat/{asset_id}": _get("Last heartbeat of the session serving the asset", [asset]),
            "/heartbeat/{asset_id}/history": _get("Heartbeats of sessions that served the asset, newest first", [asset, _LIMIT]),
            "/dispatch": {
                "get": _get(
                    "Recent dispatches (the last 10,000), newest first, by state and target",
                    [{"name": "state", "in": "query", "schema": {"enum": list(STATES)}},
                     _uuid_param("asset_id", "query"), _uuid_param("site_id", "query"), _LIMIT],
                    errors=("400",))["get"],
                "post": {
                    "summary": "Dispatch a MW setpoint to an asset or a whole site (pending while the target is offline)",
                    "parameters": [
                        {"name": "wait", "in": "query", "schema": {"enum": ["applied"]},
                         "description": "wait for a final state (applied, rejected, expired, superseded, failed)"},
                        {"name": "timeout_s", "in": "query", "schema": {"type": "number", "exclusiveMinimum": 0, "maximum": 60, "default": 5}},
                    ],
                    "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DispatchRequest"}}}},
                    "responses": {
                        "200": {"description": "With wait: the final state reached",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Dispatch"}}}},
                        "202": {"description": "Accepted (sent or pending); poll GET /dispatch/{dispatch_id}",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Dispatch"}}}},
                        "400": _ERR, "404": _ERR,
                    },
                }
            },
            "/dispatch/history": _get(
                "Dispatches, newest first",
                [_uuid_param("asset_id", "query"), _uuid_param("site_id", "query"), _LIMIT], errors=("400",)),
            "/dispatch/{dispatch_id}": _get(
                "A dispatch's state, history and per-asset allocations", [_uuid_param("dispatch_id")],
                ok={"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Dispatch"}}}}),
            "/sites/{site_id}/split": _get(
                "Preview how a site setpoint would be split across its connected assets",
                [_uuid_param("site_id"), {"name": "mw", "in": "query", "required": True, "schema": _MW}]),
            "/openapi.json": _get("This document", errors=()),
            "/docs": _get("This document, rendered", errors=(), ok={"description": "HTML", "content": {"text/html": {}}}),
        },
        "components": {
            "schemas": {
                "DispatchRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["mw"],
                    "properties": {
                        "asset_id": {"type": "string", "format": "uuid", "description": "target asset (wins over site_id)"},
                        "site_id": {"type": "string", "format": "uuid", "description": "target site (split across its assets)"},
                        "mw": {**_MW, "description": "+ export/discharge, - import/charge"},
                        "duration_s": {"type": "number", "minimum": 0, "description": "0 = hold until replaced"},
                        "ttl_s": {"type": "number", "exclusiveMinimum": 0, "description": "never delivered after this (default DISPATCH_TTL_S, 300)"},
                    },
                },
                "Dispatch": {
                    "type": "object",
                    "properties": {
                        "dispatch_id": {"type": "string", "format": "uuid"},
                        "target": {"enum": ["asset", "site"]},
                        "asset_id": {"type": ["string", "null"]},
                        "site_id": {"type": "string"},
                        "requested_mw": {"type": "number"},
                        "mw": {"type": "number", "description": "what will be applied after clamping to limits"},
                        "clamped": {"type": "boolean"},
                        "shortfall_mw": {"type": "number"},
                        "mode": {"enum": ["asset", "gateway_split", "headend_split"]},
                        "state": {"enum": ["submitted", "pending", "sent", "received", "applied", "rejected", "expired", "superseded", "failed"]},
                        "allocations": {"type": "array", "items": {"type": "object", "properties": {"asset_id": {"type": "string"}, "mw": {"type": "number"}}}},
                        "history": {"type": "array", "items": {"type": "object"}},
                        "setpoints": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "object", "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": ["string", "null"]}}}},
                },
            },
            "responses": {"Error": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
    }


DOCS_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DER headend API</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#1b1f24}
h1{font-size:1.4rem} .op{border:1px solid #d0d7de;border-radius:6px;margin:.6rem 0;padding:.5rem .8rem}
.m{display:inline-block;min-width:3.5rem;font-weight:700;text-transform:uppercase}
.get{color:#0969da}.post{color:#1a7f37} code{background:#f6f8fa;padding:0 .25rem;border-radius:3px}
.p{color:#57606a;font-size:.9em}
</style></head><body>
<h1 id="title">DER headend API</h1><p id="desc"></p><div id="ops">Loading /openapi.json ...</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  document.getElementById('title').textContent = doc.info.title + ' ' + doc.info.version;
  document.getElementById('desc').textContent = doc.info.description;
  const ops = document.getElementById('ops'); ops.textContent = '';
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const div = document.createElement('div'); div.className = 'op';
      const params = (op.parameters || []).map(p => p.name + (p.required ? '' : '?')).join(', ');
      const codes = Object.keys(op.responses).join(' ');
      div.innerHTML = '<span class="m ' + method + '"></span> <code></code><div></div><div class="p"></div>';
      div.children[0].textContent = method; div.children[1].textContent = path;
      div.children[2].textContent = op.summary;
      div.children[3].textContent = (params ? 'parameters: ' + params + ' \\u00b7 ' : '') + 'responses: ' + codes;
      ops.appendChild(div);
    }
  }
});
</script></body></html>
"""
