"""The storage engines the store tests run against, and ways to take one away (an outage).

PostgreSQL: `DER_TEST_POSTGRES` names a server (CI sets it). Unset: the PostgreSQL cases are
skipped with that reason. Set but unreachable: they fail, loudly. Each test gets its own schema
(`der_test_<hex>`, chosen through the URL's `options=-csearch_path=...`), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import attrs
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from der_actors.storage import open_storage
from der_actors.storage.base import Storage

PG_URL = os.environ.get("DER_TEST_POSTGRES", "")
PG_SKIP = "DER_TEST_POSTGRES is not set (CI sets it; e.g. postgresql://postgres@127.0.0.1:5432/test)"


def with_search_path(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def postgres_schema(url: str) -> Iterator[str]:
    """A fresh schema on the server `url` names; yields a URL that uses it. Raises if unreachable."""
    name = f"der_test_{secrets.token_hex(6)}"
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield with_search_path(url, name)
    finally:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@attrs.frozen
class Engine:
    name: str  # "memory", "sqlite" or "postgres"
    url: str
    writer: str = "thread"  # SQLite's and PostgreSQL's writes: "thread", or "process" (the headend's default)

    def open(self, *, reset: bool = False) -> Storage:
        return open_storage(self.url, reset=reset, writer=self.writer)


@contextlib.contextmanager
def engine_for(name: str, tmp_path) -> Iterator[Engine]:
    """`name`: memory, sqlite or postgres; `+process` for writes in a writer process."""
    name, _, writer = name.partition("+")
    if name == "memory":
        yield Engine(name, "memory://")
    elif name == "sqlite":
        yield Engine(name, f"sqlite:///{tmp_path / 'history.sqlite3'}", writer or "thread")
    else:
        if not PG_URL:
            pytest.skip(PG_SKIP)
        with postgres_schema(PG_URL) as url:
            yield Engine(name, url, writer or "thread")


@pytest.fixture(params=["sqlite", "sqlite+process", "postgres", "postgres+process"])
def engine(request, tmp_path) -> Iterator[Engine]:
    """A durable engine: SQLite in tmp_path, or PostgreSQL in a schema of its own; each with its
    writes in a worker thread or in a writer process."""
    with engine_for(request.param, tmp_path) as e:
        yield e


@pytest.fixture(params=["memory", "sqlite", "sqlite+process", "postgres", "postgres+process"])
def any_engine(request, tmp_path) -> Iterator[Engine]:
    """Every engine, memory included (for behaviour all three must share)."""
    with engine_for(request.param, tmp_path) as e:
        yield e


# --- outages ---------------------------------------------------------------------------------


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 that a test can take down (connections reset, the port refuses)
    and bring back on the same port. Plain threads, so it runs whatever trio's clock does."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._spawn(self._accept, listener)

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            listener.close()
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(timeout=5)
        self._threads = [t for t in self._threads if t.is_alive()]
        for s in socks:
            s.close()

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    client.close()
                    upstream.close()
                    return
                self._socks |= {client, upstream}
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def postgres_behind_proxy(url: str) -> Iterator[tuple[str, TcpProxy]]:
    """(URL through a TcpProxy to the server `url` names, the proxy), for outage tests."""
    params = conninfo_to_dict(url)
    proxy = TcpProxy(params.get("host", "127.0.0.1"), int(params.get("port", 5432)))
    proxy.up()
    parts = urlsplit(url)
    userinfo, at, _ = parts.netloc.rpartition("@")
    proxied = urlunsplit(parts._replace(netloc=f"{userinfo}{at}127.0.0.1:{proxy.port}"))
    try:
        yield proxied, proxy
    finally:
        proxy.down()


class SqliteLock:
    """An SQLite 'outage': another connection holds the write lock (readers go on, in WAL mode)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def down(self) -> None:
        self._conn = sqlite3.connect(self.path, isolation_level=None)
        self._conn.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.execute("ROLLBACK")
            conn.close()
