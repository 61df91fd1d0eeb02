"""`der-edge`: parse the config, configure logs, run the site over gRPC until SIGINT / SIGTERM.

A bad configuration prints every problem on stderr (each naming its variable) and exits 2; so does a
spool directory that cannot be used (another agent holds it, unreadable state).
A signal cancels the site: the stream's socket is closed, so the headend sees the agent leave at once,
and the process exits 0.
"""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Sequence

import structlog
import trio

from der_actors import logs
from der_actors.transport.grpc_client import grpc_dialer
from edge.config import ConfigError, EdgeConfig, load_config
from edge.signals import STOP_SIGNALS, EarlySignals
from edge.site import run_site
from edge.spool import SpoolError
from edge.state import EdgeState

log = structlog.get_logger("der.edge")


async def serve(config: EdgeConfig, early: EarlySignals | None = None) -> None:
    """Run the site until SIGINT or SIGTERM arrives."""
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        if early is not None and early.received is not None:
            log.info("edge_stopping", signal=early.name())
            return
        # The spool scan can take seconds (a full 64 MB spool): a worker thread keeps signals answered.
        state = await trio.to_thread.run_sync(EdgeState.open, config)
        try:
            async with trio.open_nursery() as nursery:
                dial = grpc_dialer(config.headend_host, config.headend_port)
                await nursery.start(functools.partial(run_site, config, dial, state=state))
                async for signum in signals:
                    log.info("edge_stopping", signal=signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    break
        finally:
            state.close()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print("der-edge: invalid configuration:", file=sys.stderr)
        for line in exc.errors:
            print(f"  {line}", file=sys.stderr)
        sys.exit(2)
    logs.configure(config.log_format)
    early = EarlySignals()
    try:
        trio.run(serve, config, early)
    except SpoolError as exc:
        print(f"der-edge: EDGE_SPOOL_DIR: {exc}", file=sys.stderr)
        sys.exit(2)
    early.ignore_from_now()  # stopping anyway: a second signal must not make the exit unclean
    log.info("edge_stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
