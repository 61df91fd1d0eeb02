"""Structured logs: one event per line, key=value (default) or JSON (`LOG_FORMAT=json`).

Every module logs with `structlog.get_logger(...)` and event names plus fields
(`log.info("session_connected", session_id=..., peer=...)`); this sets the rendering once per process.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(log_format: str = "kv", level: str = "INFO") -> None:
    if log_format not in ("kv", "json"):
        raise ValueError(f"LOG_FORMAT: must be 'kv' or 'json', got {log_format!r}")
    renderer = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.processors.KeyValueRenderer(key_order=["ts", "level", "event"], drop_missing=True)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (hypercorn, purerpc) log through the standard library; keep them quiet but visible.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s %(message)s")
