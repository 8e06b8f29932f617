from __future__ import annotations

import http.server
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshserial.discovery import overlay
from meshserial.discovery.overlay import Interface
from meshserial.errors import UsageError
from tests.netns import Netns, netns  # noqa: F401 - fixture

LO = Interface(name="lo", addresses=("127.0.0.1", "::1"), is_loopback=True)
ETH = Interface(name="eth0", addresses=("198.18.1.5", "fe80::1%eth0"))
ZT = Interface(name="zt3a1b2c3d", addresses=("198.18.2.5",), overlay="zerotier")
DOWN = Interface(name="eth1", addresses=("198.18.3.5",), is_up=False)
V6ONLY = Interface(name="eth2", addresses=("fd00::5",))
DOCKER = Interface(name="docker0", addresses=("198.18.4.1",))
WG = Interface(name="wg0", addresses=("198.18.5.1",), multicast=False)
ALL = [LO, ETH, ZT, DOWN, V6ONLY, DOCKER, WG]


def test_default_selection_is_up_multicast_ipv4_non_loopback() -> None:
    assert overlay.select_interfaces(None, available=ALL) == [ETH, ZT]
    assert overlay.select_interfaces([], available=ALL) == [ETH, ZT]


def test_patterns_are_names_or_globs() -> None:
    assert overlay.select_interfaces(["zt*"], available=ALL) == [ZT]
    assert overlay.select_interfaces(["lo", "eth0", "e*"], available=ALL) == [LO, ETH, DOWN, V6ONLY]


def test_unmatched_pattern_names_what_exists() -> None:
    with pytest.raises(UsageError, match=r"'zt\*'.*available: docker0, eth0, eth1, eth2, lo, wg0\)"):
        overlay.select_interfaces(["eth0", "zt*"], available=[i for i in ALL if i is not ZT])


def test_address_views_and_label() -> None:
    assert ETH.ipv4 == ("198.18.1.5",)
    assert ETH.ipv6 == ("fe80::1%eth0",)
    assert ZT.label == "zt3a1b2c3d"
    named = Interface(name="zt0", network_name="My Net")
    assert named.label == "zt0(My Net)"


@pytest.mark.parametrize(
    ("name", "platform", "expected"),
    [
        ("zt3a1b2c3d", "linux", True),
        ("eth0", "linux", False),
        ("feth1234", "darwin", True),
        ("zt0", "darwin", False),
        ("ZeroTier One [8056c2e21c000001]", "win32", True),
    ],
)
def test_zerotier_names(name: str, platform: str, expected: bool) -> None:
    assert overlay.is_zerotier_name(name, platform) is expected


def test_annotate_by_device_then_by_address() -> None:
    nets = overlay.parse_zerotier_networks(
        [
            {"nwid": "8056c2e21c000001", "name": "Lab", "portDeviceName": "zt3a1b2c3d", "status": "OK"},
            {"id": "8056c2e21c000002", "name": "Other", "assignedAddresses": ["198.18.1.5/24"]},
        ]
    )
    out = overlay.annotate_zerotier([LO, ETH, ZT], nets)
    assert out[0] == LO
    assert (out[1].overlay, out[1].network_id, out[1].label) == (
        "zerotier",
        "8056c2e21c000002",
        "eth0(Other)",
    )
    assert (out[2].network_id, out[2].label) == ("8056c2e21c000001", "zt3a1b2c3d(Lab)")


@pytest.mark.parametrize("garbage", [None, {}, "x", [1, None, {"nwid": 5}, {"name": "no id"}]])
def test_parse_networks_ignores_garbage(garbage: object) -> None:
    assert overlay.parse_zerotier_networks(garbage) == []


def test_token_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    empty = tmp_path / "empty"
    empty.write_text("")
    good = tmp_path / "token"
    good.write_text("abc123\n")
    assert overlay.read_zerotier_token([missing, empty]) is None
    assert overlay.read_zerotier_token([missing, good]) == "abc123"


class _FakeZeroTier(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        if self.headers.get("X-ZT1-Auth") != "secret" or self.path != "/network":
            self.send_response(401)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_zerotier() -> Iterator[str]:
    _FakeZeroTier.body = json.dumps(
        [{"nwid": "8056c2e21c000001", "name": "Lab", "portDeviceName": "zt0", "status": "OK",
          "assignedAddresses": ["198.18.2.5/24", "fd80::1/88"]}]
    ).encode()  # fmt: skip
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeZeroTier)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_query_zerotier(fake_zerotier: str) -> None:
    nets = overlay.query_zerotier(token="secret", base_url=fake_zerotier)
    assert nets == [
        overlay.ZeroTierNetwork(
            network_id="8056c2e21c000001", name="Lab", device="zt0", status="OK",
            addresses=("198.18.2.5", "fd80::1"),
        )
    ]  # fmt: skip
    assert overlay.query_zerotier(token="wrong", base_url=fake_zerotier) == []


def test_query_zerotier_absent_is_quiet_and_quick() -> None:
    start = time.monotonic()
    assert overlay.query_zerotier(token="x", base_url="http://127.0.0.1:1") == []
    assert time.monotonic() - start < 2


def test_live_listing_has_loopback() -> None:
    names = {i.name: i for i in overlay.list_interfaces(zerotier=False)}
    assert any(i.is_loopback and "127.0.0.1" in i.addresses for i in names.values())


@pytest.mark.netns
def test_zt_named_interface_in_a_namespace(netns: Netns) -> None:  # noqa: F811
    a, b = netns.host("a"), netns.host("b")
    netns.link(
        a, b, ifname="veth-a", peer_ifname="veth-b", address="198.18.7.1/24", peer_address="198.18.7.2/24"
    )
    netns.rename(a, "veth-a", "zt7f00aa01")
    code = (
        "from meshserial.discovery import overlay;"
        "print([(i.name, i.overlay, i.ipv4) for i in overlay.select_interfaces(['zt*'])])"
    )
    out = netns.run(a, [sys.executable, "-c", code]).stdout
    assert out.strip() == "[('zt7f00aa01', 'zerotier', ('198.18.7.1',))]"
