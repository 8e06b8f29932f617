"""A recording :class:`PortListener` whose waits are always bounded."""

from __future__ import annotations

import asyncio
import os
import select
from collections.abc import Callable
from typing import TypeVar

from meshserial.ports.base import PortEvent

DEFAULT_TIMEOUT = 3.0
T = TypeVar("T")


class Recorder:
    """Collects everything a port reports and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.sizes: list[int] = []  # the length of each port_data call
        self.events: list[PortEvent] = []
        self.pauses = 0
        self.resumes = 0
        self.closed: list[BaseException | None] = []
        self._changed = asyncio.Event()

    def _poke(self) -> None:
        self._changed.set()

    def port_data(self, data: bytes) -> None:
        self.data += data
        self.sizes.append(len(data))
        self._poke()

    def port_event(self, event: PortEvent) -> None:
        self.events.append(event)
        self._poke()

    def port_pause_writing(self) -> None:
        self.pauses += 1
        self._poke()

    def port_resume_writing(self) -> None:
        self.resumes += 1
        self._poke()

    def port_closed(self, exc: BaseException | None) -> None:
        self.closed.append(exc)
        self._poke()

    def of_type(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait(self, predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT) -> None:
        """Return once ``predicate()`` holds; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_event(self, kind: type[T], count: int = 1, timeout: float = DEFAULT_TIMEOUT) -> T:
        await self.wait(lambda: len(self.of_type(kind)) >= count, timeout)
        return self.of_type(kind)[count - 1]


async def read_fd(fd: int, n: int, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """Read exactly ``n`` bytes from a non-blocking ``fd`` through the loop, within ``timeout``."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        async with asyncio.timeout(timeout):
            while len(out) < n:
                try:
                    chunk = os.read(fd, n - len(out))
                except BlockingIOError:
                    ready.clear()
                    await ready.wait()
                    continue
                if not chunk:
                    raise EOFError
                out += chunk
    finally:
        loop.remove_reader(fd)
    return bytes(out)


async def write_fd(fd: int, data: bytes, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Write all of ``data`` to a non-blocking ``fd`` through the loop, within ``timeout``."""
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    ready = asyncio.Event()
    loop.add_writer(fd, ready.set)
    try:
        async with asyncio.timeout(timeout):
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    ready.clear()
                    await ready.wait()
    finally:
        loop.remove_writer(fd)


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


class FakeDevice:
    """A PTY pair standing in for a UART: the test holds the master ("the wire"), the code under test
    opens the slave path, optionally through a stable symlink that can be re-pointed (hot-plug)."""

    def __init__(self, link: str | None = None) -> None:
        self.master, slave = os.openpty()
        self.slave_path = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(self.master, False)
        self.link = link
        if link is not None:
            tmp = link + ".tmp"
            os.symlink(self.slave_path, tmp)
            os.replace(tmp, link)

    @property
    def path(self) -> str:
        return self.link if self.link is not None else self.slave_path

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


async def wait_readable(fd: int, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Wait (bounded) until ``fd`` has something to read, without reading it."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        async with asyncio.timeout(timeout):
            await ready.wait()
    finally:
        loop.remove_reader(fd)
