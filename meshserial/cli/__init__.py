"""The ``meshserial`` command line: parse, build settings, await the application coroutine.

Data goes to stdout, diagnostics to stderr. Every :class:`~meshserial.errors.MeshserialError` becomes
one line and its exit code; a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from meshserial import __version__
from meshserial.cli import doctor, keys, rendezvous, share, use
from meshserial.cli import list as list_
from meshserial.errors import MeshserialError

log = logging.getLogger("meshserial")

EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging on stderr (-v info, -vv debug)"
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser = argparse.ArgumentParser(
        prog="meshserial",
        description="Share serial ports across a LAN or an overlay VPN, and use them from anywhere.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"meshserial {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (share, use, list_):
        module.add_parser(sub, common)
    keys.add_parsers(sub, common)
    for module in (rendezvous, doctor):
        module.add_parser(sub, common)
    return parser


def _configure_logging(verbose: int, debug: bool) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2 or debug:
        level = logging.DEBUG
    logging.basicConfig(level=level, stream=sys.stderr, format="meshserial: %(levelname)s: %(message)s")


async def _run_cancellable(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro``; SIGINT/SIGTERM cancel it cleanly (links removed, goodbyes sent)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if interrupted:
            # A second signal while cleaning up: the user wants out now.
            print("meshserial: interrupted again; exiting without cleaning up", file=sys.stderr, flush=True)
            os._exit(EXIT_INTERRUPTED)
        interrupted = True
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    # Everything imported and set up so far lives as long as the process: keep it out of the cyclic
    # collector's sweeps, so full collections stay short (they show up as latency spikes otherwise).
    gc.freeze()
    try:
        return await coro
    except asyncio.CancelledError:
        if interrupted:
            return 0
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose, args.debug)
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            return asyncio.run(_run_cancellable(result))
        return int(result)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        error = _meshserial_error(exc)
        if error is None:
            raise
        if args.debug:
            log.error("failed", exc_info=exc)
        print(f"meshserial: error: {error}", file=sys.stderr)
        return error.exit_code


def _meshserial_error(exc: BaseException) -> MeshserialError | None:
    """The MeshserialError in ``exc``, looking inside exception groups (task groups wrap errors)."""
    if isinstance(exc, MeshserialError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _meshserial_error(inner)) is not None:
                return found
    return None
