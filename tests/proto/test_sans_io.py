"""``meshserial.proto`` is sans-IO: importing it pulls in no I/O, concurrency or serial machinery."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "asyncio",
    "socket",
    "_socket",
    "selectors",
    "select",
    "serial",
    "threading",
    "_thread",
    "concurrent",
    "subprocess",
    "zeroconf",
    "aiohttp",
}

# Import every submodule, and report which top-level packages appeared because of it. Modules the
# interpreter itself preloaded (site, .pth hooks) are not meshserial's doing and are subtracted.
_PROBE = """
import importlib, json, pkgutil, sys
sys.path.insert(0, {root!r})
before = set(sys.modules)
import meshserial.proto
names = {modules}
if names is None:
    names = [m.name for m in pkgutil.walk_packages(meshserial.proto.__path__, "meshserial.proto.")]
for name in names:
    importlib.import_module(name)
print(json.dumps(sorted({{m.split(".")[0] for m in set(sys.modules) - before}})))
"""


def _imported(*flags: str, modules: list[str] | None = None) -> set[str]:
    out = subprocess.run(
        [sys.executable, *flags, "-c", _PROBE.format(root=str(ROOT), modules=modules)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(out.stdout))


def test_importing_the_package_imports_no_io() -> None:
    assert _imported() & FORBIDDEN == set()


def test_telnet_and_rfc2217_import_nothing_forbidden_even_from_a_bare_interpreter() -> None:
    # -I -S: no site hooks, so nothing is preloaded and the check is absolute, threading included.
    imported = _imported("-I", "-S", modules=["meshserial.proto.telnet", "meshserial.proto.rfc2217"])
    assert "meshserial" in imported
    assert imported & FORBIDDEN == set()
