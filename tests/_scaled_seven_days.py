import os, time
import tests.test_seven_days as m
m.DAY = 86_400.0 / float(os.environ.get("SCALE", "28"))

async def test_scaled(tmp_path, nursery, autojump_clock):
    t = time.perf_counter()
    try:
        await m.test_seven_days_every_promise_holds(tmp_path, nursery, autojump_clock)
    except AssertionError as e:
        print("assertion", str(e)[:100])
    print(f"\nBODY {time.perf_counter() - t:.2f} s")
