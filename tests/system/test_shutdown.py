"""Stopping on SIGTERM/SIGINT always ends the process, even when cleaning up gets stuck."""

from __future__ import annotations

import signal
import sys
import textwrap
import time

import pytest

from tests.helpers import Proc

pytestmark = pytest.mark.system

# The CLI's own runner around a coroutine that swallows every cancellation: a stand-in for a part
# whose clean-up never finishes. The grace period is shortened so that the test is quick.
STUBBORN = textwrap.dedent(
    """
    import asyncio
    from meshserial import cli

    async def stubborn_cleanup() -> int:
        print("ready", flush=True)
        for _ in range(1000):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                print("cancelled", flush=True)
        return 0

    watchdog = cli._Watchdog(GRACE)
    try:
        raise SystemExit(asyncio.run(cli._run_cancellable(stubborn_cleanup(), watchdog)))
    finally:
        watchdog.done()
    """
)


def _stubborn(grace: float) -> Proc:
    proc = Proc([sys.executable, "-c", STUBBORN.replace("GRACE", repr(grace))])
    proc.wait_line("ready")
    return proc


def test_stuck_cleanup_ends_after_the_grace_period_saying_what_was_stuck() -> None:
    proc = _stubborn(0.5)
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=10)
    assert code == 130, proc.stderr
    assert time.monotonic() - started >= 0.5
    assert "still shutting down after 0.5 s" in proc.stderr
    assert "stubborn_cleanup" in proc.stderr  # the pending task, by its innermost frame
    assert "event loop thread:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_second_signal_exits_at_once() -> None:
    proc = _stubborn(60.0)
    proc.proc.send_signal(signal.SIGINT)
    proc.wait_line("cancelled")  # the first one was handled: cleaning up has begun
    proc.proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=10)
    assert code == 130, proc.stderr
    assert "interrupted again" in proc.stderr
    assert "still shutting down" not in proc.stderr
