"""``doctor`` as a process: a warning is not "all good", and the exit status says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import ok, private_home, run_meshserial

pytestmark = pytest.mark.system


def test_a_warning_fails_the_run(tmp_path: Path) -> None:
    env = private_home(tmp_path, "d")
    client = ok("keygen", env=env)
    path = Path(env["MESHSERIAL_HOME"]) / "authorized_clients"
    # A mistyped option: the server skips the line, so this client is not let in as meant.
    path.write_text(f"{client} *=rw expire=2027-01-01\n")
    path.chmod(0o600)
    text = run_meshserial("doctor", "--interface", "lo", env=env)
    assert "Traceback" not in text.stderr, text.stderr
    assert text.returncode == 1
    assert f"warning  {path}:1: unknown option 'expire=2027-01-01'" in text.stdout, text.stdout
    assert "all good" not in text.stdout
    assert text.stdout.rstrip().splitlines()[-1].endswith(" found")
    assert "warning" in text.stdout.rstrip().splitlines()[-1]
    as_json = run_meshserial("doctor", "--json", "--interface", "lo", env=env)
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and report["ok"] is False
    assert any(c["status"] == "warning" and c["area"] == "trust" for c in report["checks"])
