"""Stop signals outside trio's signal receiver, for `der-edge` and `der-launcher`.

While trio's `open_signal_receiver` is open it handles SIGINT / SIGTERM. Before it opens (start-up)
and after it closes (teardown) a stop signal is only recorded here: a signal that arrives early still
stops the program (the caller checks `received`), and a second signal that arrives after a graceful
stop (a launcher and a terminal's Ctrl-C both signal the agents) cannot turn a clean exit into death
by signal or a KeyboardInterrupt traceback. Once the program is done, `ignore_from_now` ignores them
outright: Python resets handlers written in Python to the default while it finalizes, so a late
signal would otherwise still kill the exiting process.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class EarlySignals:
    def __init__(self) -> None:
        self.received: int | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record)

    def _record(self, signum: int, frame: object) -> None:
        if self.received is None:
            self.received = signum

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else ""

    def ignore_from_now(self) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
