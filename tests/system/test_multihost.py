"""Discovery across hosts with the real CLI, in network namespaces.

The server host sits on a LAN (``eth0``) and on an overlay whose interface is named like a ZeroTier
port (``zt7f3a0001``). One client is on the LAN only, one on the overlay only. Everything is
``share``, ``list`` and ``use`` as users run them, each host with its own MESHSERIAL_HOME.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, DevicePty, Proc, private_home, pump_both, wait_for
from tests.netns import Netns, netns_unavailable

pytestmark = [pytest.mark.system, pytest.mark.netns]

SERVER_LAN, SERVER_ZT = "198.18.1.1", "198.18.2.1"


def meshserial_in(ns: str, *args: str, env: dict[str, str]) -> Proc:
    """A meshserial process inside ``ns`` (``ip netns exec`` execs: the PID is meshserial's own)."""
    return Proc(["ip", "netns", "exec", ns, sys.executable, "-m", "meshserial", *args], env=env)


def run_in(
    net: Netns, ns: str, *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return net.run(
        ns, [sys.executable, "-m", "meshserial", *args], env=env, cwd=ROOT, check=False, timeout=timeout
    )


def list_json(net: Netns, ns: str, env: dict[str, str], *extra: str) -> list[dict[str, Any]]:
    result = run_in(net, ns, "list", "--json", *extra, env=env)
    assert result.returncode == 0, result.stderr
    entries: list[dict[str, Any]] = json.loads(result.stdout)
    return entries


@dataclass
class Site:
    net: Netns
    server: str
    lan_client: str
    zt_client: str
    both_client: str
    tmp: Path

    def env(self, name: str) -> dict[str, str]:
        return private_home(self.tmp, name)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with Netns() as net:
        lan, zt = net.bridge("lan"), net.bridge("zt")
        server, lan_client, zt_client = net.host("srv"), net.host("lanc"), net.host("ztc")
        net.attach(server, lan, ifname="eth0", address=f"{SERVER_LAN}/24")
        net.attach(server, zt, ifname="zt7f3a0001", address=f"{SERVER_ZT}/24")
        net.attach(lan_client, lan, ifname="eth0", address="198.18.1.2/24")
        net.attach(zt_client, zt, ifname="zt5c11e47", address="198.18.2.2/24")
        both = net.host("both")
        net.attach(both, zt, ifname="zt5c11e48", address="198.18.2.3/24")  # first: multicast route via zt
        net.attach(both, lan, ifname="eth0", address="198.18.1.3/24")
        yield Site(net, server, lan_client, zt_client, both, tmp_path_factory.mktemp("multihost"))


def test_each_link_lists_its_own_address_and_use_crosses_the_overlay(site: Site, device: DevicePty) -> None:
    server_env, lan_env, zt_env = site.env("server"), site.env("lan"), site.env("zt")
    client_id = run_in(site.net, site.zt_client, "keygen", env=zt_env).stdout.strip()
    assert run_in(site.net, site.server, "authorize", client_id, env=server_env).returncode == 0
    share = meshserial_in(
        site.server, "share", f"{device.path}=gps", "--listen", "0.0.0.0:7217", env=server_env
    )
    use: Proc | None = None
    try:
        server_id = share.wait_line(r"sharing gps on 0\.0\.0\.0:7217 as (ms1\w+)").group(1)
        share.wait_line(r"advertising gps on (eth0, zt7f3a0001|zt7f3a0001, eth0) \(mDNS\)")

        lan = list_json(site.net, site.lan_client, lan_env)
        assert [(e["name"], e["addresses"], e["via"], e["id"]) for e in lan] == [
            ("gps", [f"{SERVER_LAN}:7217"], ["eth0"], server_id)
        ]
        assert (lan[0]["state"], lan[0]["trust"], lan[0]["kind"]) == ("free", "new", "meshserial")
        zt = list_json(site.net, site.zt_client, zt_env)
        assert [(e["name"], e["addresses"], e["via"]) for e in zt] == [
            ("gps", [f"{SERVER_ZT}:7217"], ["zt5c11e47"])
        ]

        link = site.tmp / "ttyGPS"
        use = meshserial_in(
            site.zt_client, "use", "gps", "--pty", "--trust-new", "--link", str(link), "-v", env=zt_env
        )
        use.wait_line(r"/dev/pts/\d+")
        use.wait_line(rf"connected to {SERVER_ZT}:7217", stderr=True)
        app = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(app)
            blob = random.Random(7).randbytes(64 * 1024)
            to_device, to_app = pump_both(app, device.master, blob, bytes(range(256)) * 16, timeout=30)
            assert to_device == blob and to_app == bytes(range(256)) * 16
        finally:
            os.close(app)
        # The advert follows the session: the port is in use now, and pinned on the client.
        zt = list_json(site.net, site.zt_client, zt_env)
        assert [(e["state"], e["trust"]) for e in zt] == [("in-use", "pinned")]
        assert use.stop() == 0, use.stderr
        use = None
    finally:
        if use is not None:
            use.stop()
        assert share.stop() == 0, share.stderr
    result = run_in(site.net, site.lan_client, "list", env=lan_env)
    assert (result.returncode, result.stdout) == (0, "")  # goodbyes: gone at once
    assert "no shared ports found" in result.stderr


def test_zt_glob_keeps_the_lan_out_and_a_killed_server_turns_unreachable(site: Site) -> None:
    server_env, zt_env = site.env("server2"), site.env("zt2")
    share = meshserial_in(
        site.server,
        "share",
        "sim:echo=echo",
        "--listen",
        "0.0.0.0:7217",
        "--interface",
        "zt*",
        env=server_env,
    )
    watch: Proc | None = None
    try:
        share.wait_line(r"advertising echo on zt7f3a0001 \(mDNS\)")
        watch = meshserial_in(site.zt_client, "list", "--watch", "--json", env=zt_env)
        watch.wait_line(r'"name": "echo".*"state": "free"')
        assert list_json(site.net, site.lan_client, site.env("lan2"), "--timeout", "1") == []

        share.proc.kill()  # SIGKILL: no goodbye, the advert stays in caches
        share.wait(10)
        watch.wait_line(r'"state": "unreachable"|^\[\]$', timeout=30)
        fresh = list_json(site.net, site.zt_client, zt_env)
        assert all(e["state"] != "free" for e in fresh), fresh
        assert watch.stop() == 0, watch.stderr  # SIGTERM ends --watch normally
        watch = None
    finally:
        if watch is not None:
            watch.stop()
        share.stop()


def test_cli_advert_seen_by_avahi(site: Site, tmp_path: Path) -> None:
    from tests.netns import avahi_unavailable, start_avahi

    reason = avahi_unavailable()
    if reason is not None:
        pytest.skip(reason)
    avahi = start_avahi(site.net, site.lan_client, ifname="eth0", workdir=tmp_path)
    share = meshserial_in(
        site.server, "share", "sim:nmea=gnss", "--listen", f"{SERVER_LAN}:7300", env=site.env("s3")
    )
    try:
        server_id = share.wait_line(r"as (ms1\w+)").group(1)
        share.wait_line(r"advertising gnss on eth0 \(mDNS\)")  # only where the listener is
        wait_for(lambda: any(line[3].startswith("gnss") for line in avahi.browse("_meshserial._tcp", 3)), 20)
        lines = avahi.browse("_meshserial._tcp")
    finally:
        share.stop()
        avahi.stop()
    (line,) = [x for x in lines if x[3].startswith("gnss")]
    assert (line[1], line[7], line[8]) == ("eth0", SERVER_LAN, "7300")
    for item in ('"port=gnss"', f'"id={server_id}"', '"state=free"', '"desc=simulated nmea device"'):
        assert item in line[9]


def test_use_name_prefers_the_lan_and_finds_the_overlay_after_a_move(site: Site, device: DevicePty) -> None:
    """A client on both links connects over the LAN; when its LAN goes away it looks the name up again
    and resumes the session over the overlay."""
    server_env, client_env = site.env("server4"), site.env("both4")
    client_id = run_in(site.net, site.both_client, "keygen", env=client_env).stdout.strip()
    assert run_in(site.net, site.server, "authorize", client_id, env=server_env).returncode == 0
    share = meshserial_in(
        site.server, "share", f"{device.path}=gps", "--listen", "0.0.0.0:7217", env=server_env
    )
    link = site.tmp / "ttyMove"
    use: Proc | None = None
    try:
        share.wait_line(r"advertising gps on")
        use = meshserial_in(
            site.both_client, "use", "gps", "--pty", "--trust-new", "--link", str(link), "-v", env=client_env
        )
        use.wait_line(r"/dev/pts/\d+")
        use.wait_line(rf"connected to {SERVER_LAN}:7217", stderr=True)
        app = os.open(link, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(app)
            assert pump_both(app, device.master, b"before", b"BEFORE") == (b"before", b"BEFORE")
            subprocess.run(
                ["ip", "-n", site.both_client, "link", "set", "eth0", "down"], check=True, timeout=10
            )
            site.net.run(site.both_client, ["ss", "-K", "dst", SERVER_LAN])  # end the connection now
            use.wait_line(rf"gps is at {SERVER_ZT}:7217 now$", stderr=True, timeout=30)  # looked up again
            use.wait_line(rf"connected to {SERVER_ZT}:7217", stderr=True, timeout=15)
            use.wait_line(r"resumed|reconnected|new session", stderr=True, timeout=15)
            assert pump_both(app, device.master, b"after", b"AFTER") == (b"after", b"AFTER")
        finally:
            os.close(app)
    finally:
        subprocess.run(["ip", "-n", site.both_client, "link", "set", "eth0", "up"], check=False, timeout=10)
        if use is not None:
            use.stop()
        share.stop()
