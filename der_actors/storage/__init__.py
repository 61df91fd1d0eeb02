"""History storage behind one small interface (`base.Storage`).

`DATABASE_URL`:
- unset or empty: SQLite in `der_headend.sqlite3` in the working directory (the embedded default);
- `sqlite:///relative/path.sqlite3` or `sqlite:////absolute/path.sqlite3`;
- `postgresql://user[:password]@host[:port]/dbname[?options=-csearch_path%3Dschema]` (or `postgres://`);
- `memory://`: bounded in-memory history, gone on restart (tests, demos).

`writer`: where SQLite's and PostgreSQL's writes run: `"thread"` (a worker thread of this process)
or `"process"` (a child process of their own, `writer_process.py`: the headend's default).
"""

from __future__ import annotations

import structlog

from der_actors.storage.base import SchemaTooNew, Storage, StorageConfigError, StorageUnavailable
from der_actors.storage.memory import MemoryStorage

__all__ = ["DEFAULT_SQLITE_PATH", "SchemaTooNew", "Storage", "StorageConfigError", "StorageUnavailable", "open_storage"]

log = structlog.get_logger("der.storage")

DEFAULT_SQLITE_PATH = "der_headend.sqlite3"


WRITERS = ("process", "thread")


def open_storage(url: str, *, reset: bool = False, writer: str = "thread", log_format: str = "kv") -> Storage:
    """Open and migrate the store `url` names; `reset` empties its history (RESET_DB).

    Raises `StorageConfigError` for a URL we cannot use, an SQLite file we cannot open, or a schema
    newer than this headend (`SchemaTooNew`). An unreachable PostgreSQL does not stop start-up: the
    headend runs, buffers history, and connects (and migrates, and resets) when the server is back.
    `log_format`: the writer process's logs (`logs.configure`).
    """
    if writer not in WRITERS:
        raise StorageConfigError(f"STORAGE_WRITER: must be one of {', '.join(WRITERS)}, got {writer!r}")
    if url == "memory://":
        storage = MemoryStorage()
        if reset:
            storage.reset()
        return storage
    if url == "" or url.startswith("sqlite:///"):
        from der_actors.storage.sqlite import SqliteStorage

        path = url[len("sqlite:///"):] if url else DEFAULT_SQLITE_PATH
        if not path:
            raise StorageConfigError(f"DATABASE_URL: no file in {url!r} (use sqlite:///path/to/file.sqlite3)")
        storage = _engine(SqliteStorage, {"path": path}, writer, log_format)
        try:
            storage.open(reset=reset)
        except StorageUnavailable as exc:
            storage.close()
            raise StorageConfigError(f"DATABASE_URL: cannot open {exc}") from None
        except BaseException:
            storage.close()
            raise
        return storage
    if url.startswith(("postgresql://", "postgres://")):
        from der_actors.storage.postgres import PostgresStorage

        storage = _engine(PostgresStorage, {"url": url}, writer, log_format)
        try:
            storage.open(reset=reset)
        except StorageUnavailable as exc:
            log.warning("database_unreachable", error=str(exc),
                        consequence="history is buffered and written when the database is back")
        except BaseException:
            storage.close()
            raise
        return storage
    raise StorageConfigError(
        f"DATABASE_URL: unsupported scheme in {url!r} (use sqlite:///path, postgresql://..., or memory://)"
    )


def _engine(engine_type, engine_args: dict, writer: str, log_format: str) -> Storage:
    if writer == "thread":
        return engine_type(**engine_args)
    from der_actors.storage.writer_process import WriterProcess

    return WriterProcess(engine_type, engine_args, log_format=log_format)
