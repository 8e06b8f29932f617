"""Fixtures of the fault tests: a rig of namespaces (veth through a switch, or the delay/loss TUN
link), private homes, and a device PTY. Everything is skipped with the reason when not root, without
network namespaces or without /dev/net/tun."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.rig import Device, PtyHost, Rig, TunLink, faults_unavailable
from tests.netns import Netns

# (c): 200 ms one-way delay in each direction (a 400 ms round trip) and 5 % loss in each direction.
DELAY_LOSS = TunLink(delay=0.2, loss=0.05)


def _rig(tmp_path: Path, tun: TunLink | None) -> Iterator[Rig]:
    reason = faults_unavailable(tun=tun is not None)
    if reason is not None:
        pytest.skip(reason)
    with Netns() as net:
        rig = Rig(net, tmp_path, tun=tun)
        try:
            yield rig
        finally:
            rig.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    """Server and client namespaces joined through a switch (the cable can be cut there)."""
    yield from _rig(tmp_path, None)


@pytest.fixture
def slow_rig(tmp_path: Path) -> Iterator[Rig]:
    """Server and client namespaces joined by the userspace link with delay and loss."""
    yield from _rig(tmp_path, DELAY_LOSS)


@pytest.fixture
def ptys(tmp_path: Path) -> Iterator[PtyHost]:
    """A private devpts instance for device PTYs (see :class:`PtyHost`)."""
    host = PtyHost(tmp_path / "pts")
    try:
        yield host
    finally:
        host.close()


@pytest.fixture
def serial_device(ptys: PtyHost) -> Iterator[Device]:
    dev = Device(ptys)
    try:
        yield dev
    finally:
        dev.close()
