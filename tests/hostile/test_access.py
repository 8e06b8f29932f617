"""Access rules stay fresh and never widen: bad allow-list edits, expiry of live sessions, StrictModes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meshserial.keys import Identity
from meshserial.proto import session as sess
from tests.helpers import ROOT, DevicePty, meshserial, ok, private_home, run_meshserial
from tests.hostile.peer import RawClient, Server, new_client

pytestmark = pytest.mark.system


def _allowed(server: Server, identity: Identity, mode: str = "rw") -> bool:
    with RawClient(server.port, identity) as client:
        return isinstance(client.request(sess.Hello(port="gps", mode=mode)), sess.Accept)


def _clients_file(server: Server) -> Path:
    return Path(server.env["MESHSERIAL_HOME"]) / "authorized_clients"


def test_a_bad_line_is_skipped_and_the_rest_applies_at_once(
    server: Server, request: pytest.FixtureRequest
) -> None:
    alice, bob = new_client(server, "--name", "alice"), new_client(server, "--name", "bob")
    live = RawClient(server.port, bob)
    request.addfinalizer(live.close)
    assert isinstance(live.request(sess.Hello(port="gps", mode="ro")), sess.Accept)
    # One edit: bob removed, and a typo (expire= instead of expires=) on alice's line.
    path = _clients_file(server)
    text = path.read_text().splitlines()
    kept = [line for line in text if bob.id_string not in line]
    kept = [line.replace('name="alice"', 'name="alice" expire=2030-01-01') for line in kept]
    tmp = path.with_suffix(".new")
    tmp.write_text("\n".join(kept) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    lineno = next(i for i, line in enumerate(kept, 1) if alice.id_string in line)
    # The warning names the file and the line, once.
    server.proc.wait_line(rf"{path}:{lineno}: unknown option 'expire=2030-01-01'.*line ignored", stderr=True)
    # bob's live session ends, with the reason, within the access check period.
    live.read_until_eof(timeout=5)
    assert any(isinstance(m, sess.Deny) and "revoked" in m.reason for m in live.controls), live.controls
    # Removed means removed, every time; the skipped line grants nothing; the server keeps serving.
    for _ in range(5):
        assert not _allowed(server, bob)
        assert not _allowed(server, alice)
    assert server.proc.stderr.count(f"{path}:{lineno}:") == 1
    carol = new_client(server)
    assert _allowed(server, carol)
    assert server.proc.proc.poll() is None


def test_an_untrustworthy_file_denies_everyone_but_the_server_keeps_running(
    server: Server, request: pytest.FixtureRequest
) -> None:
    alice = new_client(server)
    live = RawClient(server.port, alice)
    request.addfinalizer(live.close)
    assert isinstance(live.request(sess.Hello(port="gps")), sess.Accept)
    path = _clients_file(server)
    os.chmod(path, 0o666)  # anyone could now add themselves
    server.proc.wait_line(r"writable by other users.*chmod go-w.*nobody is authorized", stderr=True)
    live.read_until_eof(timeout=5)
    assert not _allowed(server, alice)
    os.chmod(path, 0o600)
    deadline = time.monotonic() + 5
    while not _allowed(server, alice):
        assert time.monotonic() < deadline, "access did not come back after the fix"
    assert server.proc.proc.poll() is None


def test_expiry_ends_a_live_session_on_time(server: Server) -> None:
    # An entry that expires two seconds from now, whole-second precision as the file stores it.
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    alice = Identity.generate()
    server.authorize(alice, "--expires", expires.isoformat())
    with RawClient(server.port, alice) as client:
        assert isinstance(client.request(sess.Hello(port="gps")), sess.Accept)
        client.read_until_eof(timeout=10)
    ended = time.time()
    late = ended - expires.timestamp()
    assert -0.05 <= late < 1.0, f"session ended {late:.3f} s after the expiry"
    assert any(isinstance(m, sess.Deny) and "expired" in m.reason for m in client.controls)
    # Nothing written after the expiry reached the device.
    assert not _allowed(server, alice)


def test_authorize_names_bad_lines_it_leaves_alone(tmp_path: Path) -> None:
    env = private_home(tmp_path, "srv")
    path = Path(env["MESHSERIAL_HOME"]) / "authorized_clients"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"ms1bogus *=rw\n")
    os.close(fd)
    result = run_meshserial("authorize", Identity.generate().id_string, env=env)
    assert result.returncode == 0, result.stderr
    assert f"{path}:1:" in result.stderr and "ignored" in result.stderr


# ---- StrictModes -----------------------------------------------------------------------------------

NOBODY = 65534


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand a file to another user")
def test_a_file_owned_by_someone_else_is_refused(tmp_path: Path, device: DevicePty) -> None:
    env = private_home(tmp_path, "srv")
    ok("keygen", env=env)
    planted = Identity.generate()
    ok("authorize", planted.id_string, env=env)
    path = Path(env["MESHSERIAL_HOME"]) / "authorized_clients"
    os.chown(path, NOBODY, -1)
    proc = meshserial("share", f"{device.path}=gps", "--listen", "127.0.0.1:0", "--no-mdns", env=env)
    try:
        code = proc.wait(timeout=20)
    finally:
        proc.stop()  # a server that did start (the check missing) must not outlive the test
    assert code == 2
    assert f"{path} belongs to nobody" in proc.stderr and "chown root" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    env = private_home(tmp_path, "srv")
    home = Path(env["MESHSERIAL_HOME"])
    ok("keygen", env=env)
    os.chmod(home, 0o770)
    result = run_meshserial("id", env=env)
    assert result.returncode == 2
    assert f"directory {home} is writable by other users" in result.stderr
    assert f"chmod go-w {home}" in result.stderr


@pytest.mark.parametrize("umask", [0o000, 0o002, 0o022, 0o077])
def test_directories_are_created_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    home = tmp_path / "a" / "b" / "home"  # none of it exists yet
    code = (
        "import os, sys; os.umask(int(sys.argv[1])); "
        "from meshserial.cli import main; sys.exit(main(['keygen']))"
    )
    env = dict(os.environ, MESHSERIAL_HOME=str(home))
    result = subprocess.run(
        [sys.executable, "-c", code, str(umask)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for directory in (tmp_path / "a", tmp_path / "a" / "b", home):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
