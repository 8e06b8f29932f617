"""Pairing as the README tells it, with real processes on loopback: ``invite`` works out the addresses,
``accept`` takes the code on standard input or at a prompt, the client gets a name that ``revoke``
goes by, and names stay unique."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshserial.cli.keys import MAX_INVITE_ADDRESSES
from meshserial.discovery.overlay import is_container_plumbing, list_interfaces
from meshserial.invites import parse_invite
from meshserial.trust import AuthorizedClients, clean_client_name
from tests.helpers import ROOT, Proc, free_tcp_port, meshserial, ok, private_home, run_meshserial

pytestmark = pytest.mark.system

# What a client sends as its name by default; the processes run on this machine too.
HOST_NAME = clean_client_name(socket.gethostname())


def run(
    *args: str, env: dict[str, str], stdin: str = "", timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run meshserial with ``stdin`` on a pipe (``run_meshserial`` gives it /dev/null)."""
    return subprocess.run(
        [sys.executable, "-m", "meshserial", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


class Server:
    """A home sharing ``sim:echo`` as ``gps`` on a loopback port."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = private_home(tmp_path, "server")
        self.server_id = ok("keygen", env=self.env)
        self.port = free_tcp_port()
        self.proc: Proc = meshserial(
            "share", "sim:echo=gps", "--listen", f"127.0.0.1:{self.port}", "--no-mdns", env=self.env
        )
        self.proc.wait_line(r"sharing gps on 127\.0\.0\.1:\d+ as ms1")
        self.homes = 0

    def invite(self, *args: str) -> tuple[str, str]:
        """``invite`` on the server; its code (stdout) and what it said on stderr."""
        result = run("invite", "--ttl", "5m", *args, env=self.env)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip(), result.stderr

    def client_home(self) -> dict[str, str]:
        self.homes += 1
        return private_home(self.tmp_path, f"client{self.homes}")

    def names(self) -> dict[str, str | None]:
        clients = AuthorizedClients(Path(self.env["MESHSERIAL_HOME"]) / "authorized_clients").load()
        return {e.id_string: e.name for e in clients.entries}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    try:
        yield s
    finally:
        assert s.proc.stop() == 0, s.proc.stderr


# ----------------------------------------------------------------------------------- addresses


def test_invite_puts_in_this_machines_addresses_and_mdns_name(tmp_path: Path) -> None:
    env = private_home(tmp_path, "server")
    usable = {
        a
        for i in list_interfaces(zerotier=False)
        if i.is_up and not i.is_loopback and not is_container_plumbing(i.name)
        for a in i.addresses
        if not a.startswith(("fe80:", "169.254."))
    }
    result = run("invite", "--ttl", "1m", env=env)
    if not usable:  # a machine with loopback only: nothing to hand out
        assert result.returncode == 2 and "give --address" in result.stderr, result.stderr
        return
    assert result.returncode == 0, result.stderr
    code = result.stdout.strip()
    hints = list(parse_invite(code).hints)
    label = socket.gethostname().partition(".")[0]
    if re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) and label != "localhost":
        assert hints.pop() == f"{label}.local:7217"
    assert 1 <= len(hints) <= MAX_INVITE_ADDRESSES
    for hint in hints:
        host, _, port = hint.rpartition(":")
        assert port == "7217" and host.strip("[]") in usable, (hint, usable)
    # Listed for the admin to check, and the code itself stays out of the hint.
    assert ", ".join(parse_invite(code).hints) in result.stderr
    assert code not in result.stderr and "run 'meshserial accept' and paste the code" in result.stderr


def test_invite_takes_the_port_from_shares_config(tmp_path: Path) -> None:
    env = private_home(tmp_path, "server")
    (Path(env["MESHSERIAL_HOME"]) / "config.toml").write_text('[share]\nlisten = "127.0.0.1:7300"\n')
    # share listens on one address only: that is the one address a client can use.
    assert parse_invite(ok("invite", env=env)).hints == ("127.0.0.1:7300",)
    assert parse_invite(ok("invite", "--port", "7400", env=env)).hints == ("127.0.0.1:7400",)
    hints = parse_invite(
        ok("invite", "--interface", "lo", "--port", "7500", "--config", os.devnull, env=env)
    ).hints
    assert hints[0] == "127.0.0.1:7500"
    # An address given without a port gets share's port, not a malformed hint.
    assert parse_invite(ok("invite", "--address", "bench.example.org", env=env)).hints == (
        "bench.example.org:7300",
    )


# --------------------------------------------------------------------------------------- accept


def test_accept_reads_stdin_uses_the_codes_addresses_and_names_the_client(server: Server) -> None:
    code, _ = server.invite("--interface", "lo", "--port", str(server.port))
    assert parse_invite(code).hints[0] == f"127.0.0.1:{server.port}"
    env = server.client_home()
    client_id = ok("keygen", env=env)
    result = run("accept", env=env, stdin=f"{code}\n")  # no CODE, no --address
    assert result.returncode == 0, result.stderr
    assert "paired with 127.0.0.1" in result.stdout and server.server_id in result.stdout
    assert server.names() == {client_id: HOST_NAME}
    # The name is what revoke goes by.
    revoked = run("revoke", str(HOST_NAME), env=server.env)
    assert revoked.returncode == 0 and client_id in revoked.stdout, revoked.stderr
    assert server.names() == {}


def test_invite_name_wins_and_a_taken_name_gets_a_suffix(server: Server) -> None:
    named, _ = server.invite("--address", f"127.0.0.1:{server.port}", "--name", "bench laptop")
    first = server.client_home()
    assert run("accept", "-", env=first, stdin=named).returncode == 0
    plain, _ = server.invite("--address", f"127.0.0.1:{server.port}")
    second = server.client_home()
    ok("authorize", ok("keygen", env=second), "--name", str(HOST_NAME), env=server.env)  # HOST_NAME taken
    third = server.client_home()
    assert run("accept", env=third, stdin=plain).returncode == 0
    assert sorted(n or "" for n in server.names().values()) == sorted(
        ["bench laptop", str(HOST_NAME), f"{HOST_NAME}-2"]
    )


def test_a_dead_address_costs_a_short_timeout(server: Server) -> None:
    # Accepts TCP connections (the kernel does, into its backlog) but never speaks: like a host that
    # swallows packets, only without waiting for SYN retries.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        dead = silent.getsockname()[1]
        code, _ = server.invite("--address", f"127.0.0.1:{dead}", "--address", f"127.0.0.1:{server.port}")
        start = time.monotonic()
        result = run("accept", code, env=server.client_home())  # as an argument: still accepted
        elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert f"127.0.0.1:{dead}: " in result.stderr and "trying the next address" in result.stderr
    assert elapsed < 9, f"took {elapsed:.1f} s: a dead address must not cost the full 10 s"


def test_refused_is_final(server: Server) -> None:
    closed = free_tcp_port()  # nothing listens there: trying it would end in "connection refused"
    code, _ = server.invite("--address", f"127.0.0.1:{server.port}", "--address", f"127.0.0.1:{closed}")
    assert run("accept", code, env=server.client_home()).returncode == 0
    again = run("accept", code, env=server.client_home())
    # The server said no: another address of the same server would only say it again.
    assert again.returncode == 6 and "invite not accepted" in again.stderr, again.stderr
    assert "trying the next address" not in again.stderr


@pytest.mark.parametrize("args", [(), ("-",)])
def test_no_code_on_stdin_is_a_usage_error(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run("accept", *args, env=private_home(tmp_path, "client"), stdin="\n")
    assert result.returncode == 2
    assert result.stderr.startswith("meshserial: error: no invite code") and result.stderr.count("\n") == 1
    closed = run_meshserial("accept", env=private_home(tmp_path, "client2"))  # stdin is /dev/null
    assert closed.returncode == 2 and "no invite code" in closed.stderr


def _read_until(fd: int, needle: bytes, timeout: float = 15.0) -> bytes:
    deadline = time.monotonic() + timeout
    seen = b""
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} within {timeout} s; got {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"EOF before {needle!r}; got {seen!r}"
            seen += chunk
    return seen


def _drain(fd: int) -> bytes:
    out = b""
    os.set_blocking(fd, False)
    while True:
        try:
            chunk = os.read(fd, 4096)
        except (BlockingIOError, OSError):  # EIO: the other side of the PTY is closed
            return out
        if not chunk:
            return out
        out += chunk


def test_on_a_terminal_the_code_is_asked_for_and_not_echoed(server: Server) -> None:
    code, _ = server.invite("--address", f"127.0.0.1:{server.port}")
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshserial", "accept"],
            stdin=slave,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=server.client_home(),
            cwd=ROOT,
            start_new_session=True,  # no controlling terminal: getpass uses stdin, the PTY
        )
        os.close(slave)
        assert proc.stderr is not None
        # getpass turns echo off before it writes the prompt: typing after the prompt is safe.
        _read_until(proc.stderr.fileno(), b"invite code (msinv1")
        os.write(master, f"{code}\n".encode())
        out, err = proc.communicate(timeout=30)
        echoed = _drain(master)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert b"paired with" in out
    assert code.encode() not in echoed and code.encode() not in err


# --------------------------------------------------------------------------------- names, revoke


def test_authorize_refuses_a_taken_name_unless_replace(server: Server) -> None:
    first, second = ok("keygen", env=server.client_home()), ok("keygen", env=server.client_home())
    ok("authorize", first, "--name", "desk", env=server.env)
    refused = run_meshserial("authorize", second, "--name", "desk", env=server.env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "'desk' is taken by ms1" in refused.stderr and "--replace" in refused.stderr
    assert server.names() == {first: "desk"}
    ok("authorize", first, "--name", "desk", "--ports", "*=ro", env=server.env)  # its own name: fine
    replaced = run_meshserial("authorize", second, "--name", "desk", "--replace", env=server.env)
    assert replaced.returncode == 0, replaced.stderr
    assert f"revoked {first}, which had the name 'desk'" in replaced.stderr
    assert server.names() == {second: "desk"}


def test_revoke_a_name_several_clients_have_needs_all(server: Server) -> None:
    ids = [ok("keygen", env=server.client_home()) for _ in range(3)]
    path = Path(server.env["MESHSERIAL_HOME"]) / "authorized_clients"
    # Written by hand (or before names were unique): two entries named "lab".
    path.write_text(f'{ids[0]} *=rw name="lab"\n{ids[1]} *=rw name="lab"\n{ids[2]} *=rw name="other"\n')
    path.chmod(0o600)
    refused = run_meshserial("revoke", "lab", env=server.env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"{ids[0][:14]}… (line 1)" in refused.stderr and f"{ids[1][:14]}… (line 2)" in refused.stderr
    assert "--all" in refused.stderr and len(server.names()) == 3
    done = run_meshserial("revoke", "lab", "--all", env=server.env)
    assert done.returncode == 0 and done.stdout.count("revoked") == 2, done.stderr
    assert server.names() == {ids[2]: "other"}
