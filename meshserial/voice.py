"""How the application layer speaks to the person running it, without printing anything itself.

``share``, ``use`` and the gateway run for hours and have things to say as they go: where they listen
(a line scripts wait for), that a connection was lost and came back, that a new identity was made, and
sometimes a question (trust this server?). Library code must not print: it tells a :class:`Voice`, and
the command line decides where the words go (stdout for results, stderr for notes, the terminal for
questions). A default :class:`Voice` stays silent and never asks, as a library user would expect.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


def _quiet(line: str) -> None:
    del line


@dataclass(frozen=True, slots=True, kw_only=True)
class Voice:
    #: Results, one line each, for scripts as much as for people (the CLI's stdout).
    say: Callable[[str], None] = _quiet
    #: Notes and status for people (the CLI's stderr).
    note: Callable[[str], None] = _quiet
    #: Ask a question and await the answer; ``None``: there is nobody to ask.
    ask: Callable[[str], Awaitable[str]] | None = None
