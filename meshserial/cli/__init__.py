"""The ``meshserial`` command line: parse, build settings, await the application coroutine.

Data goes to stdout, diagnostics to stderr. Every :class:`~meshserial.errors.MeshserialError` becomes
one line and its exit code; a traceback only with ``--debug``.

The event loop is uvloop's when uvloop is importable (``pip install 'meshserial[fast]'``), else asyncio's
own; ``MESHSERIAL_LOOP=asyncio`` forces asyncio's, ``MESHSERIAL_LOOP=uvloop`` insists on uvloop. uvloop is
imported only by commands that run a loop, so the others start no slower for it.

Log messages and error lines often quote what a peer sent (a port or host name, a deny reason), so
both go through :func:`~meshserial.proto.text.escape`: no control character or line break from the
network reaches the terminal or a log file, and one record stays one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from meshserial import __version__
from meshserial.cli import doctor, keys, rendezvous, share, use
from meshserial.cli import list as list_
from meshserial.errors import MeshserialError, UsageError
from meshserial.proto.text import escape

log = logging.getLogger("meshserial")

EXIT_INTERRUPTED = 130
# How long cleaning up after SIGINT/SIGTERM may take (goodbyes, closing sessions) before the process
# exits anyway: a server asked to stop must stop, even if some part of it is stuck.
SHUTDOWN_GRACE = 10.0


class _Watchdog:
    """Ends the process if shutting down has not finished ``grace`` seconds after it began.

    A thread, so that it fires even when the event loop itself is stuck; it says what was still
    running (where each pending task waits, and where the loop's thread is), for a bug report.
    """

    def __init__(self, grace: float) -> None:
        self._grace = grace
        self._done = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = threading.get_ident()

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        threading.Thread(target=self._watch, name="meshserial shutdown watchdog", daemon=True).start()

    def done(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        if self._done.wait(self._grace):
            return
        try:
            lines = [f"meshserial: still shutting down after {self._grace:g} s; exiting without finishing"]
            lines += [f"meshserial:   {line}" for line in self._stuck()]
            _last_words("\n".join(lines))
        finally:
            os._exit(EXIT_INTERRUPTED)

    def _stuck(self) -> list[str]:
        out: list[str] = []
        try:
            tasks = asyncio.all_tasks(self._loop) if self._loop is not None else set()
            for task in tasks:
                out.append(f"task {task.get_name()}: {_awaiting(task.get_coro())}")
            frame = sys._current_frames().get(self._thread_id)
            if frame is not None:
                chain = [_where(f) for f, _ in itertools.islice(traceback.walk_stack(frame), 4)]
                out.append(f"event loop thread: {' <- '.join(chain)}")
        except Exception as exc:  # racing the loop from another thread; the exit matters more
            out.append(f"(could not list what is pending: {exc!r})")
        return out


def _last_words(text: str) -> None:
    """Write ``text`` to stderr just before ``os._exit``: a closed or broken stderr (the terminal or the
    pipe reading it is gone) must not keep the process from exiting."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
        os.write(sys.stderr.fileno(), (text + "\n").encode(errors="replace"))


def _awaiting(coro: Any) -> str:
    """Where a suspended coroutine waits: its chain of awaits, innermost first (at most four)."""
    frames: list[str] = []
    for _ in range(100):
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append(_where(frame))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return " <- ".join(reversed(frames[-4:])) or "not running"


def _where(frame: Any) -> str:
    code = frame.f_code
    return f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})"


# -v and --debug are accepted before the command and after it. argparse parses a sub-command's options
# into a fresh namespace and copies every value over the main parser's, defaults included, so the two
# positions store under different names, with no default (SUPPRESS) so that an option not given sets
# nothing; logging_options() adds them up once parsing is done.
_BEFORE = "before_command_"


def _add_logging_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        dest=prefix + "verbose",
        default=argparse.SUPPRESS,
        help="more logging on stderr (-v info, -vv debug); before or after the command",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        dest=prefix + "debug",
        default=argparse.SUPPRESS,
        help="show tracebacks and debug logs",
    )


def logging_options(args: argparse.Namespace) -> tuple[int, bool]:
    """``(verbosity, debug)`` from both positions: ``-v share -v`` is ``-vv``."""
    verbose = int(getattr(args, _BEFORE + "verbose", 0)) + int(getattr(args, "verbose", 0))
    debug = bool(getattr(args, _BEFORE + "debug", False) or getattr(args, "debug", False))
    return verbose, debug


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _add_logging_options(common)
    parser = argparse.ArgumentParser(
        prog="meshserial",
        description="Share serial ports across a LAN or an overlay VPN, and use them from anywhere.",
    )
    _add_logging_options(parser, _BEFORE)
    parser.add_argument("--version", action="version", version=f"meshserial {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (share, use, list_):
        module.add_parser(sub, common)
    keys.add_parsers(sub, common)
    for module in (rendezvous, doctor):
        module.add_parser(sub, common)
    return parser


class EscapingFormatter(logging.Formatter):
    """A Formatter that escapes the message (the format with its arguments applied) with
    :func:`~meshserial.proto.text.escape`, so a record is one line without control characters
    whatever its arguments held. Tracebacks keep their lines; only characters inside a line are
    escaped (an exception's message can quote a peer too)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        # format() has just set record.message from getMessage(), and sets it again on every call,
        # so replacing it here affects no other handler.
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return _escape_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _escape_lines(super().formatStack(stack_info))


def _escape_lines(text: str) -> str:
    return "\n".join(escape(line) for line in text.split("\n"))


LOG_FORMAT = "meshserial: %(levelname)s: %(message)s"


def _configure_logging(verbose: int, debug: bool) -> None:
    level = logging.WARNING
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2 or debug:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


async def _run_cancellable(coro: Coroutine[Any, Any, int], watchdog: _Watchdog) -> int:
    """Run ``coro``; SIGINT/SIGTERM cancel it cleanly (links removed, goodbyes sent).

    Cleaning up may take :data:`SHUTDOWN_GRACE` seconds; a second signal ends the process at once.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if interrupted:
            # A second signal while cleaning up: the user wants out now.
            _last_words("meshserial: interrupted again; exiting without cleaning up")
            os._exit(EXIT_INTERRUPTED)
        interrupted = True
        task.cancel()
        watchdog.arm(loop)

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


LOOP_ENV = "MESHSERIAL_LOOP"
LOOP_CHOICES = ("auto", "asyncio", "uvloop")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_choice(env: Mapping[str, str]) -> str:
    """``MESHSERIAL_LOOP`` checked: ``auto`` (unset or empty: uvloop when installed), ``asyncio`` or
    ``uvloop``."""
    value = env.get(LOOP_ENV, "")
    choice = value.strip().lower() or "auto"
    if choice not in LOOP_CHOICES:
        raise UsageError(f"{LOOP_ENV}={value!r} is not asyncio, uvloop or auto (unset means auto)")
    return choice


def loop_factory(choice: str) -> tuple[str, LoopFactory | None]:
    """The event loop for ``choice``: its name and a factory (None for asyncio's own loop)."""
    if choice == "asyncio":
        return "asyncio", None
    try:
        # Here, not at the top: only commands that run a loop pay for the import. Optional (the
        # fast extra), so the type checker may not find it either.
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    except ImportError as exc:
        if choice == "uvloop":
            raise UsageError(
                f"{LOOP_ENV}=uvloop, but uvloop cannot be imported ({exc}); "
                "pip install 'meshserial[fast]', or unset it"
            ) from exc
        # Not installed (or installed for another Python): the default loop is just as correct.
        return f"asyncio (uvloop: {exc})", None
    factory: LoopFactory = uvloop.new_event_loop
    return f"uvloop {getattr(uvloop, '__version__', '?')}", factory


def _run_async(coro: Coroutine[Any, Any, int], *, grace: float) -> int:
    """Run the command on the chosen event loop (see :func:`loop_choice`), like ``asyncio.run``; once
    interrupted, everything (the runner's own clean-up of leftover tasks and executor threads included)
    must be over within ``grace`` seconds."""
    try:
        name, factory = loop_factory(loop_choice(os.environ))
    except UsageError:
        coro.close()  # never started: no "never awaited" warning
        raise
    log.debug("event loop: %s", name)
    watchdog = _Watchdog(grace)
    try:
        # asyncio.run() is this Runner without a factory; Python 3.11's run() takes no loop_factory.
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_run_cancellable(coro, watchdog))
    finally:
        watchdog.done()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose, debug = logging_options(args)
    _configure_logging(verbose, debug)
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            return _run_async(result, grace=SHUTDOWN_GRACE)
        return int(result)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        error = _meshserial_error(exc)
        if error is None:
            raise
        if debug:
            log.error("failed", exc_info=exc)
        # The message can quote a peer (a server's deny reason, an advertised name).
        print(f"meshserial: error: {escape(str(error))}", file=sys.stderr)
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
