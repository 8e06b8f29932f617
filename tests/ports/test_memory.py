"""MemoryPort, the test double for the layers above the ports."""

from __future__ import annotations

import pytest

from meshserial.errors import PortClosed
from meshserial.ports.base import Capabilities, PeerOpened
from meshserial.ports.memory import MemoryPort
from meshserial.proto.settings import ModemState, SerialSettings

from ._helpers import Recorder


async def test_records_everything() -> None:
    port = MemoryPort(capabilities=Capabilities(break_=False), modem=ModemState.CTS)
    rec = Recorder()
    await port.start(rec)
    port.write(b"ab")
    port.write(b"c")
    assert port.written == b"abc"
    fast = SerialSettings(baudrate=115200)
    assert port.configure(fast) == fast
    port.configure(fast)
    assert port.configured == [fast]
    port.set_control(dtr=False)
    assert port.controls == [(False, None, None)] and port.control == (False, True, False)
    port.purge(rx=True, tx=False)
    assert port.purges == [(True, False)]
    assert port.modem_state() == ModemState.CTS
    assert port.capabilities.break_ is False


async def test_feed_emit_pause_and_close() -> None:
    port = MemoryPort()
    rec = Recorder()
    await port.start(rec)
    port.feed(b"one")
    port.pause_reading()
    port.feed(b"two")
    assert rec.data == b"one"
    port.resume_reading()
    assert rec.data == b"onetwo"
    port.emit(PeerOpened())
    assert rec.events == [PeerOpened()]
    port.set_buffered(1000)
    assert port.write_buffer_size() == 1000 and rec.pauses == 1
    port.set_buffered(0)
    assert rec.resumes == 1
    await port.aclose()
    await port.aclose()
    assert rec.closed == [None]
    with pytest.raises(PortClosed):
        port.write(b"x")


async def test_fail_reports_the_error() -> None:
    port = MemoryPort()
    rec = Recorder()
    await port.start(rec)
    boom = OSError("gone")
    port.fail(boom)
    assert rec.closed == [boom]
