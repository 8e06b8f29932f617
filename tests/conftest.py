from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import DevicePty, device_pty

# Every meshserial process the tests start runs asyncio's own loop, the one a plain install has, unless
# a test chooses (tests/system/test_event_loop.py runs both loops); the test environment also has
# uvloop (the `fast` extra), which would otherwise be picked automatically.
os.environ.setdefault("MESHSERIAL_LOOP", "asyncio")


@pytest.fixture
def ms_env(tmp_path: Path) -> dict[str, str]:
    """Environment for meshserial child processes with a private MESHSERIAL_HOME."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = dict(os.environ)
    env["MESHSERIAL_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process code never touches the real user's config either."""
    monkeypatch.setenv("MESHSERIAL_HOME", str(tmp_path / "inproc-home"))


@pytest.fixture
def device() -> Iterator[DevicePty]:
    with device_pty() as dev:
        yield dev
