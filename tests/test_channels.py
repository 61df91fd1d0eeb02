"""`send_or_wait`: no trip through the scheduler while the buffer has room; `send`'s wait when full."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from der_actors.actors.channels import send_or_wait


async def test_a_send_with_room_is_not_a_checkpoint_and_a_full_buffer_waits(autojump_clock):
    send, recv = trio.open_memory_channel[int](1)
    with trio.testing.assert_no_checkpoints():
        await send_or_wait(send, 1)
    sent_at = []

    async def second():
        await send_or_wait(send, 2)  # the buffer is full: waits for the receiver
        sent_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(second)
        await trio.sleep(5)
        assert sent_at == []
        assert await recv.receive() == 1
    assert sent_at == [5.0]
    assert recv.receive_nowait() == 2


async def test_it_raises_what_send_raises():
    send, recv = trio.open_memory_channel[int](1)
    await recv.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await send_or_wait(send, 1)
    await send.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await send_or_wait(send, 1)
