"""The operator REST API (Quart-Trio): thin handlers over the headend's actor handles.

Every error is JSON `{"error": {"code", "message", "field"}}`; bad input is a 4xx, never a 500 and
never an HTML page. Lists come in a stable order (inventory order, or newest first for history).
"""

from __future__ import annotations

import csv
import io

import structlog
import trio
from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from der_actors.actors.headend import Headend
from der_actors.dispatching import preview_split
from der_actors.requests import (
    RequestError,
    parse_dispatch,
    parse_json,
    parse_limit,
    parse_mw_param,
    parse_state,
    parse_time,
    parse_uuid_param,
    parse_wait,
)
from der_actors.storage.base import StorageUnavailable
from der_actors.transport import json_views as jv
from der_actors.transport.grpc_server import IntakeTurns
from der_actors.transport.openapi import DOCS_HTML, openapi_document

log = structlog.get_logger("der.rest")

# /agents streams its rows in chunks of this many (~6 ms of the event loop each, measured on 10,000
# assets); its rows are read chunk by chunk, so one response is not one instant's snapshot.
AGENT_ROWS_PER_CHUNK = 500


def error(status: int, code: str, message: str, field: str | None = None) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "field": field}}), status


def create_app(headend: Headend, intake: IntakeTurns) -> QuartTrio:
    """`intake`: the gRPC server's telemetry turns, which /health reports and a dispatch request
    narrows while it is served."""
    app = QuartTrio("der_actors")
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False
    ctx = headend.ctx
    inventory = ctx.inventory

    def known_asset(asset_id: str):
        canonical = parse_uuid_param(asset_id, "asset_id")
        asset = inventory.asset(canonical)
        if asset is None:
            raise RequestError(404, "unknown_asset", f"no asset {asset_id}", "asset_id")
        return asset

    @app.errorhandler(RequestError)
    async def on_request_error(exc: RequestError):
        return error(exc.status, exc.code, exc.message, exc.field)

    @app.errorhandler(StorageUnavailable)
    async def on_storage_down(exc: StorageUnavailable):
        # History is unreachable right now; "now", presence and dispatch keep working.
        return error(503, "history_unavailable", f"the history store is unavailable: {exc}")

    @app.errorhandler(HTTPException)
    async def on_http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response, status = error(exc.code or 500, code, exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. Allow on a 405 (required there by RFC 9110)
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, status

    @app.errorhandler(Exception)
    async def on_bug(exc: Exception):
        log.exception("rest_handler_failed", path=request.path, method=request.method)
        return error(500, "internal_error", "the headend failed to handle this request; see its log")

    @app.get("/health")
    async def health():
        now = trio.current_time()
        turns = intake.limiter
        return {
            # 200 either way: the process serves ("now" and dispatch never wait for the database)
            "status": "ok" if ctx.store.healthy else "degraded",
            "sessions": len(ctx.directory.sessions), "assets": len(inventory.assets),
            "event_loop_lag_ms": {"last": round(ctx.loop_lag.last_s * 1e3, 1),
                                  "worst_60s": round(ctx.loop_lag.worst_s(now) * 1e3, 1)},
            "event_loop_stalls": ctx.loop_lag.stalls,  # wake-ups STALL_S late or more since start (logged)
            "history": ctx.store.status(),
            # streams waiting in line for a telemetry turn: above zero for long, agents offer more
            # than the headend takes in (they are held back and spool; see transport/grpc_server.py)
            "intake": {"turns": turns.total_tokens, "in_use": turns.borrowed_tokens,
                       "streams_waiting": turns.statistics().tasks_waiting},
        }

    @app.get("/sites")
    async def sites():
        return {"sites": [jv.site_json(s) for s in inventory.sites]}

    @app.get("/assets")
    async def assets():
        return {"assets": [jv.asset_json(a, inventory) for a in inventory.assets]}

    def agent_row(asset, now: float) -> dict:
        handle = ctx.assets[asset.id]
        view = handle.published
        latest_ts, received_at = handle.latest_times()
        session = ctx.directory.sessions.get(view.session.session_id) if view.session else None
        last_seen = session.last_seen if session else received_at
        return jv.agent_row(view, inventory.site(asset.site_id).name, latest_ts, last_seen, now)

    async def agents_json():
        """`{"agents": [...]}` a slice of rows at a time: each chunk's send lets the loop run, so a
        dashboard polling a 10,000-asset fleet never stalls dispatch for the whole document."""
        now = ctx.clock.now()
        assets = inventory.assets
        yield '{"agents":['
        for start in range(0, len(assets), AGENT_ROWS_PER_CHUNK):
            rows = [agent_row(a, now) for a in assets[start : start + AGENT_ROWS_PER_CHUNK]]
            yield ("," if start else "") + app.json.dumps(rows, separators=(",", ":"))[1:-1]
        yield "]}"

    @app.get("/agents")
    async def agents():
        return Response(agents_json(), content_type="application/json")

    @app.get("/telemetry/<asset_id>")
    async def telemetry(asset_id: str):
        asset = known_asset(asset_id)
        view = ctx.assets[asset.id].view
        if view.latest is None:
            raise RequestError(404, "no_data_yet", f"asset {asset.id} ({asset.name}) has not reported telemetry yet", "asset_id")
        return jv.telemetry_json(view.latest, view.received_at)

    async def history_rows(asset_id: str):
        asset = known_asset(asset_id)
        since = parse_time(request.args.get("since"), "since")
        until = parse_time(request.args.get("until"), "until")
        if since is not None and until is not None and since > until:
            raise RequestError(400, "invalid_parameter", "must not be after until", "since")
        limit = parse_limit(request.args.get("limit"))
        return asset, await ctx.store.query(ctx.store.storage.telemetry_history, asset.id, since, until, limit)

    @app.get("/telemetry/<asset_id>/history")
    async def telemetry_history(asset_id: str):
        asset, rows = await history_rows(asset_id)
        return {"asset_id": asset.id, "points": [jv.stored_point_json(r) for r in rows]}

    @app.get("/telemetry/<asset_id>/history.csv")
    async def telemetry_history_csv(asset_id: str):
        _, rows = await history_rows(asset_id)
        columns = ["timestamp", "received_at", "asset_id", "site_id", "seq", "mw", "mw_setpoint", "online", "status", "fault_code"]
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        for r in rows:
            row = jv.stored_point_json(r)
            writer.writerow([row[c] for c in columns])
        return Response(buf.getvalue(), content_type="text/csv; charset=utf-8")

    @app.get("/heartbeat/<asset_id>")
    async def heartbeat(asset_id: str):
        asset = known_asset(asset_id)
        view = ctx.assets[asset.id].view
        rows = await ctx.store.query(ctx.store.storage.heartbeats, asset.id, 1)
        session = ctx.directory.sessions.get(view.session.session_id) if view.session else None
        return {
            "asset_id": asset.id,
            "connected": view.connected,
            "last_seen": jv.rfc3339(session.last_seen if session else None),
            "last_heartbeat": jv.heartbeat_json(rows[0]) if rows else None,
        }

    @app.get("/heartbeat/<asset_id>/history")
    async def heartbeat_history(asset_id: str):
        asset = known_asset(asset_id)
        limit = parse_limit(request.args.get("limit"))
        rows = await ctx.store.query(ctx.store.storage.heartbeats, asset.id, limit)
        return {"asset_id": asset.id, "heartbeats": [jv.heartbeat_json(h) for h in rows]}

    @app.post("/dispatch")
    async def dispatch():
        wait_s = parse_wait(request.args.get("wait"), request.args.get("timeout_s"))
        with intake.giving_way():
            req = parse_dispatch(parse_json(await request.get_data()), inventory)
            view = await ctx.dispatches.submit(req)
            if wait_s is not None and not view.lifecycle.state.terminal:
                view = await ctx.dispatches.wait_terminal(view.dispatch_id, wait_s)
        return jv.dispatch_json(view), 200 if view.lifecycle.state.terminal else 202

    @app.get("/dispatch")
    async def dispatch_list():
        state = parse_state(request.args.get("state"))
        asset_id = parse_uuid_param(request.args.get("asset_id"), "asset_id")
        site_id = parse_uuid_param(request.args.get("site_id"), "site_id")
        limit = parse_limit(request.args.get("limit"))
        rows = [
            v for v in reversed(ctx.dispatches.recent.values())
            if (state is None or v.lifecycle.state.value == state)
            and (asset_id is None or v.asset_id == asset_id)
            and (site_id is None or v.site_id == site_id)
        ]
        return {"dispatches": [jv.dispatch_json(v) for v in rows[:limit]]}

    @app.get("/dispatch/history")
    async def dispatch_history():
        asset_id = parse_uuid_param(request.args.get("asset_id"), "asset_id")
        site_id = parse_uuid_param(request.args.get("site_id"), "site_id")
        limit = parse_limit(request.args.get("limit"))
        rows = await ctx.store.query(ctx.store.storage.dispatch_history, asset_id, site_id, limit)
        return {"dispatches": [jv.dispatch_json(v) for v in rows]}

    @app.get("/dispatch/<dispatch_id>")
    async def dispatch_get(dispatch_id: str):
        canonical = parse_uuid_param(dispatch_id, "dispatch_id")
        view = await ctx.dispatches.view(canonical)
        if view is None:
            raise RequestError(404, "unknown_dispatch", f"no dispatch {dispatch_id}", "dispatch_id")
        return jv.dispatch_json(view)

    @app.get("/sites/<site_id>/split")
    async def split(site_id: str):
        canonical = parse_uuid_param(site_id, "site_id")
        if inventory.site(canonical) is None:
            raise RequestError(404, "unknown_site", f"no site {site_id}", "site_id")
        mw = parse_mw_param(request.args.get("mw"))
        result = preview_split(inventory, canonical, mw, lambda a: a in ctx.directory.owners)
        return jv.split_json(canonical, result)

    @app.get("/openapi.json")
    async def openapi():
        return openapi_document()

    @app.get("/docs")
    async def docs():
        return Response(DOCS_HTML, content_type="text/html; charset=utf-8")

    return app
