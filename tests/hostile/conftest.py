"""Fixtures of the hostile tests: a real server to attack, and test namespaces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import DevicePty
from tests.hostile.peer import Server
from tests.netns import netns

__all__ = ["netns"]


@pytest.fixture
def server(tmp_path: Path, device: DevicePty) -> Iterator[Server]:
    """``meshserial share`` on loopback sharing the ``device`` PTY as ``gps``; must stop cleanly."""
    s = Server(tmp_path, device)
    try:
        yield s
    finally:
        assert s.stop() == 0, s.proc.stderr
