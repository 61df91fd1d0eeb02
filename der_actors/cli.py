"""`der-headend`: parse settings, load the inventory, serve until SIGINT/SIGTERM."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import os
import signal
import sys

import trio

from der_actors import logs
from der_actors.config import ConfigError, HeadendSettings, load_settings
from der_actors.inventory import InventoryError, load_inventory
from der_actors.model import Inventory
from der_actors.server import run_server
from der_actors.storage import Storage, StorageConfigError, open_storage


# The cyclic GC's default gen-0 threshold (700 net allocations) runs a collection every few inbound
# batches at full load, and each one walks every young object: measured (bench, py-spy) it was most of
# the headend's time, and raising the threshold alone took ingest from 7.9k to 18k points/s. The hot
# path's garbage (decoded points, rows, messages) is acyclic and freed by reference counting; cycles
# are rare (exceptions, finished tasks), so collecting them every 50,000 allocations loses nothing.
GC_THRESHOLDS = (50_000, 20, 100)


# The store writes from a worker thread, which releases the GIL for each SQL statement's step and
# then has to get it back from the busy trio thread. A thread waiting for the GIL asks the holder to
# drop it only after the switch interval (default 5 ms), so under load the writer sat out up to 5 ms
# per statement, more than a 1,000-row INSERT takes. At 0.5 ms (`./dev bench --runs 3` before and
# after): SQLite merged ingest 44k -> 53k points/s, dispatch p99 under that load 64 -> 49 ms.
# Since each agent stream is read by its connection's reader (fewer tasks and socket calls), the
# trio thread lets go of the GIL less often on its own, and the writer held it in 24 % of the
# samples of a merged flood instead of 34 % (py-spy --gil). At 0.25 ms, interleaved with 0.5 ms:
# SQLite merged flood 101k-118k against 101k-107k points/s (4 pairs), live the same (3 pairs),
# dispatch p99 light / merged / live 8.0-11.1 / 12.9-13.1 / 248-433 ms against 9.1-9.7 /
# 11.8-13.8 / 272-510 (2 pairs).
SWITCH_INTERVAL_S = 0.00025


def tune_interpreter() -> None:
    """Call once start-up has loaded its long-lived objects (modules, inventory, storage)."""
    gc.collect()
    gc.freeze()  # start-up objects live for the process: never walk them again
    gc.set_threshold(*GC_THRESHOLDS)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


async def _serve(settings, inventory, storage) -> None:
    """Serve until SIGINT/SIGTERM: the first signal shuts down gracefully, a second one at once."""
    shutdown = trio.Event()
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for _ in signals:
                    if shutdown.is_set():
                        nursery.cancel_scope.cancel()
                    shutdown.set()

            nursery.start_soon(watch_signals)
            await run_server(settings, inventory, storage, shutdown=shutdown)
            nursery.cancel_scope.cancel()


def load(settings: HeadendSettings) -> tuple[Inventory, Storage]:
    """The inventory and the open storage, side by side: the storage's writer process starts (a
    fresh interpreter, then it connects and migrates) on the other core while this one parses the
    inventory (pyyaml: ~2 s for 10,000 assets). With RESET_DB one after the other: history is
    emptied only once the inventory has proved good."""

    def opened() -> Storage:
        return open_storage(settings.database_url, reset=settings.reset_db, writer=settings.storage_writer,
                            log_format=settings.log_format)

    if settings.reset_db:
        inventory = load_inventory(settings.assets_path)
        return inventory, opened()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="open-storage") as pool:
        opening = pool.submit(opened)
        try:
            inventory = load_inventory(settings.assets_path)
        except BaseException:
            with contextlib.suppress(Exception):  # the inventory's error is the one to report
                opening.result().close()
            raise
        return inventory, opening.result()


def main(argv: list[str] | None = None) -> None:
    try:
        settings = load_settings(argv)
        logs.configure(settings.log_format)
        inventory, storage = load(settings)
    except (ConfigError, StorageConfigError) as exc:
        sys.exit(f"der-headend: {exc}")
    except InventoryError as exc:
        sys.exit(f"der-headend: {settings.assets_path} is not valid:\n{exc}")
    tune_interpreter()
    try:
        trio.run(_serve, settings, inventory, storage)
    finally:
        storage.close()
    # Served, flushed and closed: skip the interpreter's teardown, which freed a 10,000-asset
    # headend's objects one by one for ~1 s after its last log line (measured with py-spy), time a
    # restart waits for. Only after a clean stop; an exception above exits the usual way.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
