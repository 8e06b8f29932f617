"""The rendezvous with the real CLI: ``rendezvous``, ``share --rendezvous``, ``list``/``use --rendezvous``.

On loopback (mDNS off) and across a router between two namespaces, where multicast cannot pass and the
rendezvous is the only way to find the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshserial.keys import Identity
from tests.helpers import (
    DevicePty,
    Proc,
    free_tcp_port,
    meshserial,
    ok,
    private_home,
    pump_both,
    run_meshserial,
    wait_for,
)
from tests.netns import Netns, require_netns

pytestmark = pytest.mark.system


def listed(url: str, env: dict[str, str]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(
        ok("list", "--json", "--no-mdns", "--rendezvous", url, env=env)
    )
    return entries


def exchange(link: Path, device: DevicePty) -> None:
    app = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(app)
        to_device, to_app = pump_both(app, device.master, bytes(range(256)) * 8, b"$GPGGA,fix*00\r\n" * 50)
        assert to_device == bytes(range(256)) * 8 and to_app == b"$GPGGA,fix*00\r\n" * 50
    finally:
        os.close(app)


def test_loopback_register_list_use_restart_withdraw(
    tmp_path: Path, device: DevicePty, request: pytest.FixtureRequest
) -> None:
    rdv_env, server_env, client_env = (
        private_home(tmp_path, "rdv"),
        private_home(tmp_path, "server"),
        private_home(tmp_path, "client"),
    )
    rdv_port, port = free_tcp_port(), free_tcp_port()
    db = tmp_path / "rdv.sqlite3"
    rdv = meshserial("rendezvous", "--listen", f"127.0.0.1:{rdv_port}", "--db", str(db), env=rdv_env)
    started = [rdv]
    request.addfinalizer(lambda: [proc.stop() for proc in started])  # whatever happens below
    url = rdv.wait_line(r"rendezvous listening on (http://127\.0\.0\.1:\d+)").group(1)
    client_id = ok("keygen", env=client_env).strip()
    ok("authorize", client_id, env=server_env)
    share = meshserial(
        "share", f"{device.path}=gps", "--listen", f"127.0.0.1:{port}", "--no-mdns", "--rendezvous", url,
        env=server_env,
    )  # fmt: skip
    use: Proc | None = None
    try:
        server_id = share.wait_line(r"as (ms1\w+)").group(1)
        share.wait_line(rf"registered gps with rendezvous {url}")
        (entry,) = listed(url, client_env)
        assert (entry["name"], entry["id"], entry["addresses"], entry["via"]) == (
            "gps", server_id, [f"127.0.0.1:{port}"], ["rendezvous"],
        )  # fmt: skip
        assert (entry["state"], entry["trust"], entry["host"], entry["device"]) == (
            "free", "new", "127.0.0.1", {"desc": device.path},
        )  # fmt: skip

        link = tmp_path / "ttyGPS"
        use = meshserial(
            "use", "gps", "--no-mdns", "--rendezvous", url, "--pty", "--trust-new", "--link", str(link),
            env=client_env,
        )  # fmt: skip
        use.wait_line(r"/dev/pts/\d+")
        exchange(link, device)
        # The record follows the session (re-registered after a short debounce); the pin shows.
        wait_for(
            lambda: [(e["state"], e["trust"]) for e in listed(url, client_env)] == [("in-use", "pinned")], 15
        )
        assert use.stop() == 0, use.stderr
        use = None

        # Another client that pinned a different key under this address sees the conflict.
        other_env = private_home(tmp_path, "other")
        ok("trust", Identity.generate().id_string, "--name", f"127.0.0.1:{port}", env=other_env)
        assert [e["trust"] for e in listed(url, other_env)] == ["KEY CHANGED"]
        result = run_meshserial("use", "gps", "--no-mdns", "--rendezvous", url, "--pty", env=other_env)
        assert result.returncode == 6 and "impersonat" in result.stderr, result.stderr

        # Records survive a restart of the service (same database, same address).
        assert rdv.stop() == 0, rdv.stderr
        rdv = meshserial("rendezvous", "--listen", f"127.0.0.1:{rdv_port}", "--db", str(db), env=rdv_env)
        started.append(rdv)
        rdv.wait_line("rendezvous listening on")
        assert [e["id"] for e in listed(url, client_env)] == [server_id]
    finally:
        if use is not None:
            use.stop()
        assert share.stop() == 0, share.stderr
    assert listed(url, client_env) == []  # a clean exit withdraws the record
    assert rdv.stop() == 0, rdv.stderr


def test_unreachable_rendezvous_is_a_warning(tmp_path: Path) -> None:
    env = private_home(tmp_path, "c")
    url = f"http://127.0.0.1:{free_tcp_port()}"
    result = run_meshserial("list", "--json", "--no-mdns", "--rendezvous", url, env=env)
    assert (result.returncode, json.loads(result.stdout)) == (0, [])
    assert "cannot reach rendezvous" in result.stderr and "Traceback" not in result.stderr
    result = run_meshserial("list", "--rendezvous", "ftp://x", env=env)
    assert result.returncode == 2 and "http:// or https://" in result.stderr


def _ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[Netns]:
    require_netns()
    with Netns() as net:
        yield net


@pytest.mark.netns
def test_rendezvous_finds_a_server_behind_a_router(netns: Netns, tmp_path: Path, device: DevicePty) -> None:
    """Server and client are on two subnets joined by a router: no multicast path, only the rendezvous."""
    router, server, client = netns.host("rtr"), netns.host("srv"), netns.host("cli")
    netns.link(router, server, ifname="eth0", peer_ifname="eth0", address="198.18.20.1/24",
               peer_address="198.18.20.2/24")  # fmt: skip
    netns.link(router, client, ifname="eth1", peer_ifname="eth0", address="198.18.21.1/24",
               peer_address="198.18.21.2/24")  # fmt: skip
    netns.run(router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    _ip(server, "route", "add", "default", "via", "198.18.20.1")
    _ip(client, "route", "add", "default", "via", "198.18.21.1")

    def ms(ns: str, *args: str, env: dict[str, str]) -> Proc:
        return Proc(["ip", "netns", "exec", ns, sys.executable, "-m", "meshserial", *args], env=env)

    def run(ns: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return netns.run(ns, [sys.executable, "-m", "meshserial", *args], env=env, check=False)

    rdv_env, server_env, client_env = (
        private_home(tmp_path, "rdv"),
        private_home(tmp_path, "server"),
        private_home(tmp_path, "client"),
    )
    client_id = run(client, "keygen", env=client_env).stdout.strip()
    assert run(server, "authorize", client_id, env=server_env).returncode == 0
    procs: list[Proc] = []
    try:
        rdv = ms(router, "rendezvous", "--listen", "0.0.0.0:7218", "--db", str(tmp_path / "db"), env=rdv_env)
        procs.append(rdv)
        rdv.wait_line("rendezvous listening on")
        share = ms(server, "share", f"{device.path}=gps", "--listen", "0.0.0.0:7217",
                   "--rendezvous", "http://198.18.20.1:7218", env=server_env)  # fmt: skip
        procs.append(share)
        share.wait_line("registered gps with rendezvous")
        share.wait_line(r"advertising gps on eth0 \(mDNS\)")  # mDNS is on, but cannot cross the router

        url = "http://198.18.21.1:7218"
        result = run(client, "list", "--json", "--rendezvous", url, env=client_env)
        assert result.returncode == 0, result.stderr
        assert [(e["name"], e["addresses"], e["via"]) for e in json.loads(result.stdout)] == [
            ("gps", ["198.18.20.2:7217"], ["rendezvous"])
        ]
        link = tmp_path / "ttyGPS"
        use = ms(client, "use", "gps", "--rendezvous", url, "--pty", "--trust-new", "--link", str(link),
                 env=client_env)  # fmt: skip
        procs.append(use)
        use.wait_line(r"/dev/pts/\d+")
        exchange(link, device)
        assert use.stop() == 0, use.stderr
    finally:
        for proc in reversed(procs):
            proc.stop()
