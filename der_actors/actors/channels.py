"""Channel sends and receives for loops that wait on their own.

`await channel.send(x)` and `await channel.receive()` always end with a trip through the scheduler,
even when the buffer has room or holds a value: trio's fairness checkpoint. A loop that blocks on
its next receive or event anyway (the session's ack, heartbeat and command loops, the edge's
delivery, the store's writer) or checkpoints once after a run of sends (a gRPC intake turn) pays
that trip for nothing, once per message: in the seven-day run it was a quarter of all task steps
(33.1 -> 25.5 a tick, counted with a trio Instrument). Likewise a session taking the messages an
intake turn handed it in one step: 1.5 task steps a message under ingest load, where one will do.

The waits come after the `except`, not inside it: a wait inside keeps the `WouldBlock`, its
traceback and the frames it references alive for as long as it lasts, young objects that every
cyclic-GC collection then walks (1,000 waiting sessions: ~3,000 of them in each collection).
"""

from __future__ import annotations

from typing import TypeVar

import trio

T = TypeVar("T")


async def send_or_wait(channel: trio.MemorySendChannel[T], value: T) -> None:
    """Send `value` at once if the buffer has room (no checkpoint); otherwise wait as `send` does.

    Only for a caller that reaches a checkpoint soon after: it is not one itself when it does not wait.
    Raises what `send` raises (ClosedResourceError, BrokenResourceError).
    """
    try:
        channel.send_nowait(value)
        return
    except trio.WouldBlock:
        pass
    await channel.send(value)


async def receive_or_wait(channel: trio.MemoryReceiveChannel[T]) -> T:
    """The next value at once if one is queued (no checkpoint); otherwise wait as `receive` does.

    Only for a loop whose run of values without a wait is bounded (by its channel's buffer, which
    its senders cannot refill while it runs). Raises what `receive` raises (EndOfChannel, ...).
    """
    try:
        return channel.receive_nowait()
    except trio.WouldBlock:
        pass
    return await channel.receive()
