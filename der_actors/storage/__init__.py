"""History storage behind one small interface (`base.Storage`)."""

from __future__ import annotations

from der_actors.storage.base import Storage
from der_actors.storage.memory import MemoryStorage


class StorageConfigError(ValueError):
    pass


def open_storage(url: str) -> Storage:
    """`memory://` (or unset): bounded in-memory history."""
    if url in ("", "memory://"):
        return MemoryStorage()
    raise StorageConfigError(f"DATABASE_URL: unsupported scheme in {url!r} (use memory://)")
