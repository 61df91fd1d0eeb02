"""`send_or_wait` and `receive_or_wait`: no trip through the scheduler while the buffer has room (a
value); `send`'s (`receive`'s) wait when it is full (empty)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from der_actors.actors.channels import receive_or_wait, send_or_wait


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


async def test_a_receive_with_a_value_queued_is_not_a_checkpoint_and_an_empty_buffer_waits(autojump_clock):
    send, recv = trio.open_memory_channel[int](2)
    send.send_nowait(1)
    with trio.testing.assert_no_checkpoints():
        assert await receive_or_wait(recv) == 1
    got = []

    async def receiver():
        got.append((await receive_or_wait(recv), trio.current_time()))  # empty: waits for a send

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.sleep(5)
        assert got == []
        await send.send(2)
    assert got == [(2, 5.0)]


async def test_it_raises_what_receive_raises():
    send, recv = trio.open_memory_channel[int](1)
    send.send_nowait(1)
    await send.aclose()
    assert await receive_or_wait(recv) == 1  # what was sent before the close still arrives
    with pytest.raises(trio.EndOfChannel):
        await receive_or_wait(recv)
    await recv.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await receive_or_wait(recv)
