"""The directory actor: asset -> the session that serves it, and the live sessions.

Claims and releases are serialised through its inbox; lookups read the handle's live read-only
maps. The actor is their only writer and trio runs one task at a time, so a reader sees one
consistent state between two awaits. (They were copied on every claim and release: 10,000 owners
copied per session made a 1,000-gateway reconnect storm quadratic, ~0.25 s at each end.)
On a takeover the old session is told (it closes its stream when it has no assets left).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import attrs
import structlog
import trio

from der_actors.routing import Routing, Takeover

if TYPE_CHECKING:
    from der_actors.actors.session import SessionHandle

log = structlog.get_logger("der.directory")

# Claims and releases happen once per connect and disconnect; a reconnect storm of 1,000 gateways
# waits here briefly rather than growing memory.
INBOX_SIZE = 128


@attrs.frozen
class Claim:
    session: SessionHandle
    asset_ids: tuple[str, ...]
    reply: trio.MemorySendChannel[list[Takeover]]


@attrs.frozen
class Release:
    session_id: str
    asset_ids: tuple[str, ...]


class DirectoryHandle:
    def __init__(
        self, send: trio.MemorySendChannel[Claim | Release], owners: Mapping[str, str],
        sessions: Mapping[str, SessionHandle],
    ) -> None:
        self._send = send
        self.owners = owners  # asset_id -> session_id
        self.sessions = sessions  # session_id -> handle

    async def claim(self, session: SessionHandle, asset_ids: tuple[str, ...]) -> list[Takeover]:
        reply_send, reply_recv = trio.open_memory_channel[list[Takeover]](1)
        async with reply_recv:
            await self._send.send(Claim(session, asset_ids, reply_send))
            return await reply_recv.receive()

    async def release(self, session_id: str, asset_ids: tuple[str, ...]) -> None:
        await self._send.send(Release(session_id, asset_ids))

    def session_for(self, asset_id: str) -> SessionHandle | None:
        session_id = self.owners.get(asset_id)
        return self.sessions.get(session_id) if session_id else None


async def run_directory(*, task_status: trio.TaskStatus[DirectoryHandle] = trio.TASK_STATUS_IGNORED) -> None:
    send, recv = trio.open_memory_channel[Claim | Release](INBOX_SIZE)
    routing = Routing()
    sessions: dict[str, SessionHandle] = {}
    async with send, recv:
        handle = DirectoryHandle(send, routing.owners, MappingProxyType(sessions))
        task_status.started(handle)
        async for msg in recv:
            if isinstance(msg, Claim):
                takeovers = routing.claim(msg.session.session_id, msg.asset_ids)
                sessions[msg.session.session_id] = msg.session
                for t in takeovers:
                    old = sessions.get(t.old_session_id)
                    log.warning(
                        "asset_taken_over",
                        asset_id=t.asset_id,
                        old_session_id=t.old_session_id,
                        new_session_id=t.new_session_id,
                        old_peer=old.peer if old else None,
                        new_peer=msg.session.peer,
                    )
                    if old is not None:
                        old.lost_asset(t.asset_id, f"taken over by session {t.new_session_id} ({msg.session.peer})")
                async with msg.reply:
                    msg.reply.send_nowait(takeovers)
            else:
                routing.release(msg.session_id, msg.asset_ids)
                sessions.pop(msg.session_id, None)
