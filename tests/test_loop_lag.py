"""The loop-lag window (pure) and its monitor on trio's MockClock (exact virtual times)."""

from __future__ import annotations

import gc

import trio
import trio.testing

from der_actors.actors.lag_monitor import run_lag_monitor
from der_actors.gc_times import GcSnapshot
from der_actors.loop_lag import LagWindow, Stall


def test_the_window_keeps_the_worst_of_its_last_minute_and_the_last_figure():
    lag = LagWindow(window_s=60)
    assert (lag.last_s, lag.worst_s(0)) == (0.0, 0.0)
    lag.add(0, 0.5)
    lag.add(10, 0.2)
    lag.add(20, 0.3)
    assert (lag.last_s, lag.worst_s(20)) == (0.3, 0.5)
    assert lag.worst_s(60) == 0.5  # the 0.5 at t=0 is still inside [0, 60]
    assert lag.worst_s(61) == 0.3  # then the 0.3 at t=20 (the 0.2 before it can never be the worst)
    assert lag.worst_s(81) == 0.0
    lag.add(82, 0.1)
    assert (lag.last_s, lag.worst_s(82)) == (0.1, 0.1)


def test_a_wake_up_stall_s_late_or_more_is_a_stall_with_what_the_collector_did():
    lag = LagWindow(stall_s=0.1)
    gc_work = GcSnapshot((2, 0, 0), (0.09, 0.0, 0.0))
    assert lag.add(1, 0.099, gc_work) is None and (lag.stalls, lag.last_stall) == (0, None)
    stall = lag.add(2, 0.1, gc_work)
    assert stall == Stall(2, 0.1, gc_work) and (lag.stalls, lag.last_stall) == (1, stall)
    assert lag.add(3, 0.0) is None and (lag.stalls, lag.last_stall) == (1, stall)  # the count stays


async def test_the_monitor_records_how_late_the_loop_woke_it(nursery, autojump_clock):
    lag = LagWindow()
    nursery.start_soon(run_lag_monitor, lag, 0.1)
    await trio.sleep(1.05)
    assert (lag.last_s, lag.worst_s(trio.current_time())) == (0.0, 0.0)  # an idle loop is never late
    # a stall: the loop is held for 0.25 s with the monitor's wake-up at t=1.1 due in between
    autojump_clock.jump(0.25)
    await trio.sleep(0)
    await trio.testing.wait_all_tasks_blocked()
    assert abs(lag.last_s - 0.2) < 1e-9 and lag.worst_s(trio.current_time()) == lag.last_s
    await trio.sleep(0.5)
    assert lag.last_s == 0.0 and abs(lag.worst_s(trio.current_time()) - 0.2) < 1e-9


async def test_a_stall_is_counted_with_what_the_collector_did_in_it(nursery, autojump_clock):
    lag = LagWindow()
    nursery.start_soon(run_lag_monitor, lag, 0.1)
    await trio.sleep(1.05)
    gc.collect()  # a collection where no wake-up is late: it is not a stall
    await trio.sleep(0.5)
    assert (lag.stalls, lag.last_stall) == (0, None)
    # the loop held for 0.25 s, a full collection in that time: the wake-up due at t=1.6 comes 0.2 s late
    autojump_clock.jump(0.25)
    gc.collect()
    await trio.sleep(0)
    await trio.testing.wait_all_tasks_blocked()
    stall = lag.last_stall
    assert lag.stalls == 1 and abs(stall.late_s - 0.2) < 1e-9 and stall.at == trio.current_time()
    assert stall.gc.collections == (0, 0, 1) and stall.gc.seconds[2] > 0
    await trio.sleep(1)  # on time again: the count stays
    assert lag.stalls == 1 and lag.last_stall is stall
