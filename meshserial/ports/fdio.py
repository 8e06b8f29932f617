"""Non-blocking reading and writing of one file descriptor on the event loop.

Shared by the ports that sit on a descriptor (serial devices, PTY masters): a writer that tries the
write at once and buffers only what the kernel did not take, reporting the size of that buffer to a
:class:`~meshserial.ports.base.WriterFlow` for back-pressure; and a reader registration that can be
paused and re-armed. The descriptor may change (a device unplugged and reopened); both follow ``fd``,
and -1 means "absent".
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from meshserial.ports.base import WriterFlow


class FdWriter:
    """Buffered non-blocking writes; ``flow`` tells the port's listener when to pause and resume."""

    def __init__(self, *, flow: WriterFlow, on_error: Callable[[OSError], None]) -> None:
        self._flow = flow
        self._on_error = on_error
        self._buffer = bytearray()
        self._registered = False
        self.fd = -1

    @property
    def size(self) -> int:
        return len(self._buffer)

    def write(self, data: bytes) -> None:
        """Write now what the kernel takes, buffer the rest."""
        if self.fd < 0 or not data:
            return
        if not self._buffer:
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._on_error(exc)
                return
            if sent == len(data):
                return
            data = data[sent:]
        self._buffer += data
        self._register()
        self._flow.update(len(self._buffer))

    def clear(self) -> None:
        """Drop what is buffered (a purge, or the descriptor is going away)."""
        self._buffer.clear()
        self._unregister()
        self._flow.update(0)

    def detach(self) -> None:
        """The descriptor is about to be closed: stop watching it and drop the buffer."""
        self.clear()
        self.fd = -1

    def _on_writable(self) -> None:
        try:
            sent = os.write(self.fd, self._buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self.clear()
            self._on_error(exc)
            return
        del self._buffer[:sent]
        if not self._buffer:
            self._unregister()
        self._flow.update(len(self._buffer))

    def _register(self) -> None:
        if not self._registered and self.fd >= 0:
            asyncio.get_running_loop().add_writer(self.fd, self._on_writable)
            self._registered = True

    def _unregister(self) -> None:
        if self._registered:
            asyncio.get_running_loop().remove_writer(self.fd)
            self._registered = False


class FdReader:
    """A reader callback on a descriptor, armed only while wanted and not paused."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._registered = False
        self.paused = False
        self.fd = -1

    def arm(self) -> None:
        """Watch the descriptor (unless paused or absent)."""
        if not self._registered and not self.paused and self.fd >= 0:
            asyncio.get_running_loop().add_reader(self.fd, self._callback)
            self._registered = True

    def disarm(self) -> None:
        if self._registered:
            asyncio.get_running_loop().remove_reader(self.fd)
            self._registered = False

    @property
    def armed(self) -> bool:
        return self._registered

    def pause(self) -> None:
        self.paused = True
        self.disarm()

    def resume(self, *, arm: bool) -> None:
        """Unpause; re-arm if ``arm`` (the descriptor is in a state worth reading)."""
        self.paused = False
        if arm:
            self.arm()
