from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from meshserial.discovery import mdns
from meshserial.discovery.mdns import Discovered, ServiceAd
from meshserial.discovery.overlay import loopback_interface
from meshserial.errors import UsageError
from meshserial.logonce import LogOnce
from tests.netns import Netns, avahi_unavailable, netns_unavailable, start_avahi

ROOT = Path(__file__).resolve().parents[2]


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop (no asyncio plugin is configured)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


def _ad(name: str = "gps", **kw: Any) -> ServiceAd:
    fields: dict[str, Any] = {"port": 0, "server_id": "ms1abc", "state": "free", "rights": "rw"}
    fields.update(kw)
    return ServiceAd(name=name, **fields)


# ------------------------------------------------------------------------------------------- TXT


def test_txt_has_the_documented_keys() -> None:
    ad = _ad(device={"vid": "0403", "pid": "6001", "bogus": "x"}, holder="alice@lap", state="in-use")
    assert mdns.build_txt(ad, host="bench") == {
        "v": "1", "port": "gps", "id": "ms1abc", "host": "bench", "state": "in-use", "rights": "rw",
        "holder": "alice@lap", "vid": "0403", "pid": "6001",
    }  # fmt: skip


def test_txt_trims_device_description_first() -> None:
    device = {k: "d" * 400 for k in mdns.DEVICE_KEYS}
    txt = mdns.build_txt(_ad(device=device, holder="h" * 300), host="bench")
    assert all(len(f"{k}={v}".encode()) <= 255 for k, v in txt.items())
    assert mdns.txt_size(txt) <= mdns.MAX_TXT_TOTAL
    assert len(txt["holder"]) == 64
    assert "desc" not in txt and "product" not in txt
    assert {"vid", "pid", "serial"} <= txt.keys()  # kept: dropped only as far as needed


def test_txt_cuts_utf8_on_character_boundaries() -> None:
    txt = mdns.build_txt(_ad(device={"desc": "ü" * 300}), host="bench")
    assert len(txt["desc"].encode()) <= 250
    assert set(txt["desc"]) == {"ü"}


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(min_size=1, max_size=300),
    host=st.text(max_size=300),
    holder=st.none() | st.text(max_size=300),
    device=st.dictionaries(st.sampled_from(mdns.DEVICE_KEYS), st.text(max_size=400)),
)
def test_txt_never_fails_and_zeroconf_accepts_it(
    name: str, host: str, holder: str | None, device: dict[str, str]
) -> None:
    txt = mdns.build_txt(_ad(name, holder=holder, device=device, server_id="ms1" + "k" * 58), host=host)
    assert mdns.txt_size(txt) <= mdns.MAX_TXT_TOTAL
    assert {"v", "port", "id", "state", "rights"} <= txt.keys()
    info = AsyncServiceInfo(mdns.SERVICE_TYPE, f"x.{mdns.SERVICE_TYPE}", port=1, properties=dict(txt))
    assert info.text is not None and len(info.text) <= mdns.MAX_TXT_TOTAL


# --------------------------------------------------------------------------------------- parsing


def test_parse_round_trip() -> None:
    txt = mdns.build_txt(_ad(device={"serial": "A1"}, holder="bob", state="in-use"), host="bench")
    seen = mdns.parse_service(mdns.SERVICE_TYPE, "gps @ ms-1", "ms-1.local.", txt)
    assert (seen.kind, seen.name, seen.host, seen.server_id) == ("meshserial", "gps", "bench", "ms1abc")
    assert (seen.state, seen.rights, seen.holder, seen.device) == ("in-use", "rw", "bob", {"serial": "A1"})


@pytest.mark.parametrize(
    ("txt", "reason"),
    [
        ({"v": "2", "port": "a", "id": "b", "state": "free"}, "unsupported TXT version '2'"),
        ({"port": "a", "id": "b", "state": "free"}, "unsupported TXT version '(none)'"),
        ({"v": "1", "id": "b", "state": "free"}, "TXT without port or id"),
        ({"v": "1", "port": "a", "id": "b", "state": "melted"}, "unknown state 'melted'"),
        ({"v": "1", "port": "a", "id": "b", "state": "free", "x": "y" * 3000}, "oversized TXT record"),
    ],
)
def test_parse_rejects(txt: dict[str, str], reason: str) -> None:
    with pytest.raises(mdns.MalformedAdvert, match=reason.replace("(", r"\(").replace(")", r"\)")):
        mdns.parse_service(mdns.SERVICE_TYPE, "a", "h.local.", txt)


def test_parse_ser2net() -> None:
    txt = {"provider": "ser2net", "gensiostack": "telnet(rfc2217),tcp", "idVendor": "0403", "serial": "Z9"}
    seen = mdns.parse_service(mdns.SER2NET_TYPE, "console", "pi.local.", txt)
    assert (seen.kind, seen.name, seen.host, seen.state) == ("ser2net", "console", "pi", "unknown")
    assert seen.device == {"vid": "0403", "serial": "Z9"}
    assert seen.txt["gensiostack"] == "telnet(rfc2217),tcp"
    with pytest.raises(mdns.MalformedAdvert):
        mdns.parse_service(mdns.SER2NET_TYPE, "other", "pi.local.", {"provider": "someone-else"})


def _seen(server_id: str, name: str, addr: str, via: str) -> Discovered:
    return Discovered(
        kind="meshserial", name=name, host="h", server_id=server_id, addresses=[addr], via=[via],
        device={}, state="free", rights="rw", holder=None, txt={},
    )  # fmt: skip


def test_merge_unions_addresses_and_links() -> None:
    merged = mdns.merge(
        [
            _seen("ms1a", "gps", "198.18.1.1:7217", "eth0"),
            _seen("ms1a", "gps", "198.18.2.1:7217", "zt0(Lab)"),
            _seen("ms1a", "gps", "198.18.1.1:7217", "eth0"),
            _seen("ms1b", "gps", "198.18.1.2:7217", "eth0"),
            _seen("ms1a", "radio", "198.18.1.1:7217", "eth0"),
        ]
    )
    assert [(d.server_id, d.name, d.addresses, d.via) for d in merged] == [
        ("ms1a", "gps", ["198.18.1.1:7217", "198.18.2.1:7217"], ["eth0", "zt0(Lab)"]),
        ("ms1b", "gps", ["198.18.1.2:7217"], ["eth0"]),
        ("ms1a", "radio", ["198.18.1.1:7217"], ["eth0"]),
    ]


def test_bad_adverts_logged_once_per_sender_and_reason(caplog: pytest.LogCaptureFixture) -> None:
    once = LogOnce(logging.getLogger("meshserial.discovery.mdns"), level=logging.INFO).warning
    # The Browser's own instance is built the same way (see Browser.__init__).
    with caplog.at_level(logging.INFO, logger="meshserial.discovery.mdns"):
        for _ in range(3):
            once("evil.local.", "oversized TXT record")
        once("evil.local.", "unknown state 'x'")
        once("other.local.", "oversized TXT record")
    assert len(caplog.records) == 3


def test_usage_errors() -> None:
    with pytest.raises(UsageError):
        mdns.Advertiser(interfaces=[], host_label="ms-x", tcp_port=1)
    with pytest.raises(UsageError):
        mdns.Browser(interfaces=[])


@aio
async def test_advertiser_api_misuse() -> None:
    adv = mdns.Advertiser(interfaces=[loopback_interface()], host_label="ms-x", tcp_port=1)
    await adv.add(_ad())  # before start: kept, published on start
    with pytest.raises(UsageError):
        await adv.add(_ad())
    with pytest.raises(UsageError):
        await adv.update("nope", state="free")
    await adv.remove("nope")  # unknown names are ignored
    await adv.aclose()


# -------------------------------------------------------------------------------------- probe


@aio
async def test_probe() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await mdns.probe(["127.0.0.1:1", f"127.0.0.1:{port}"], timeout=2)
    finally:
        server.close()
        await server.wait_closed()
    assert not await mdns.probe([f"127.0.0.1:{port}", "[::1]:1", "garbage"], timeout=2)
    assert not await mdns.probe([], timeout=1)


# ------------------------------------------------------------------------------ loopback round trip


async def _next(browser: mdns.Browser, timeout: float = 5.0) -> mdns.BrowseEvent:
    async with asyncio.timeout(timeout):
        return await anext(browser)


@aio
async def test_loopback_advertise_browse_update_remove(caplog: pytest.LogCaptureFixture) -> None:
    lo = loopback_interface()
    ser2net_zc = AsyncZeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    ser2net = AsyncServiceInfo(
        mdns.SER2NET_TYPE, f"console.{mdns.SER2NET_TYPE}", port=3001, server="pi-test.local.",
        parsed_addresses=["127.0.0.1"],
        properties={"provider": "ser2net", "gensiostack": "telnet(rfc2217),tcp"},
    )  # fmt: skip
    bogus = AsyncServiceInfo(
        mdns.SERVICE_TYPE, f"bogus.{mdns.SERVICE_TYPE}", port=1, server="pi-test.local.",
        parsed_addresses=["127.0.0.1"], properties={"v": "9", "port": "x", "id": "y"},
    )  # fmt: skip
    badname = AsyncServiceInfo(  # a name nothing could connect to: ignored, logged escaped
        mdns.SERVICE_TYPE, f"badname.{mdns.SERVICE_TYPE}", port=1, server="pi-test.local.",
        parsed_addresses=["127.0.0.1"],
        properties={"v": "1", "port": "a@b\x1b]0;x\x07", "id": "ms1y", "state": "free"},
    )  # fmt: skip
    adv = mdns.Advertiser(interfaces=[lo], host_label="ms-loop1", tcp_port=7217, host="bench")
    try:
        async with asyncio.timeout(20):
            await asyncio.gather(
                (await ser2net_zc.async_register_service(ser2net)),
                (await ser2net_zc.async_register_service(bogus)),
                (await ser2net_zc.async_register_service(badname)),
                adv.start(),
            )
            await adv.add(_ad("gps", device={"vid": "0403"}))
            await adv.add(_ad("radio", port=7300))
            assert await adv.wait_settled(10)
            assert adv.published_name("gps") == [f"gps @ ms-loop1.{mdns.SERVICE_TYPE}"]

        with caplog.at_level(logging.INFO, logger="meshserial.discovery.mdns"):
            async with mdns.Browser(interfaces=[lo]) as browser:
                got = {}
                ours = {"gps", "radio", "console"}
                while not ours <= got.keys():
                    event = await _next_of(browser, ours)
                    assert event.change == "added"
                    got[event.entry.name] = event.entry
                gps, radio, console = got["gps"], got["radio"], got["console"]
                assert (gps.kind, gps.server_id, gps.host, gps.state) == (
                    "meshserial",
                    "ms1abc",
                    "bench",
                    "free",
                )
                assert (gps.addresses, gps.via, gps.device) == (["127.0.0.1:7217"], ["lo"], {"vid": "0403"})
                assert radio.addresses == ["127.0.0.1:7300"]
                assert (console.kind, console.host, console.addresses) == (
                    "ser2net",
                    "pi-test",
                    ["127.0.0.1:3001"],
                )

                await adv.update("gps", state="in-use", holder="alice")
                event = await _next_of(browser, ours)
                assert (event.change, event.entry.name) == ("updated", "gps")
                assert (event.entry.state, event.entry.holder) == ("in-use", "alice")

                await adv.remove("radio")
                event = await _next_of(browser, ours)
                assert (event.change, event.entry.name) == ("removed", "radio")
                assert [d.name for d in browser.snapshot() if d.name in ours] == ["gps", "console"]
                await browser.settle(timeout=5)  # the bogus adverts are resolved (and rejected) too
        bad = [r.getMessage() for r in caplog.records if "ignoring mDNS advert" in r.getMessage()]
        assert sorted(bad) == [
            "ignoring mDNS advert from pi-test.local.: unsupported TXT version '9'",
            "ignoring mDNS advert from pi-test.local.: unusable port name 'a@b\\x1b]0;x\\x07'",
        ]
    finally:
        await adv.aclose()
        await ser2net_zc.async_close()


async def _next_of(browser: mdns.Browser, names: set[str]) -> mdns.BrowseEvent:
    """The next event about one of ``names``: other processes on this machine (a benchmark, another
    test run) may be advertising on loopback too."""
    for _ in range(1000):
        event = await _next(browser)
        if event.entry.name in names:
            return event
    raise AssertionError("only foreign adverts on loopback")


@aio
async def test_loopback_browse_returns_once_settled() -> None:
    lo = loopback_interface()
    async with mdns.Advertiser(interfaces=[lo], host_label="ms-loop2", tcp_port=7217, host="bench") as adv:
        for i in range(5):
            await adv.add(_ad(f"tty{i}", server_id="ms1loop2"))
        assert await adv.wait_settled(10)
        start = time.monotonic()
        found = await mdns.browse(interfaces=[lo], timeout=10, include_ser2net=False)
        elapsed = time.monotonic() - start
    assert sorted(d.name for d in found if d.server_id == "ms1loop2") == [f"tty{i}" for i in range(5)]
    assert elapsed < 5  # settled long before the timeout


# ----------------------------------------------------------------------------------- namespaces


def _agent(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.discovery.agent", *args]


def _read_json(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The next JSON line the agent prints, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not buf.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                err = proc.stderr.read1().decode() if proc.stderr and proc.poll() is not None else ""  # type: ignore[attr-defined]
                raise AssertionError(f"agent said nothing within {timeout}s {err}")
            chunk = os.read(proc.stdout.fileno(), 1)
            if not chunk:
                raise AssertionError(
                    f"agent exited: {proc.wait(5)} {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            buf += chunk
    result: dict[str, Any] = json.loads(buf)
    return result


@dataclass
class Topology:
    net: Netns
    server: str
    lan_client: str
    zt_client: str
    both_client: str


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    """server and both_client on LAN and overlay; lan_client on the LAN only; zt_client on the overlay only.

    The server's overlay interface is named like a ZeroTier port (zt7f3a0001).
    """
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with Netns() as net:
        lan, zt = net.bridge("lan"), net.bridge("zt")
        server, lan_client, zt_client, both = (net.host(x) for x in ("srv", "lanc", "ztc", "both"))
        net.attach(server, lan, ifname="eth0", address="198.18.1.1/24")
        net.attach(server, zt, ifname="zt7f3a0001", address="198.18.2.1/24")
        net.attach(lan_client, lan, ifname="eth0", address="198.18.1.2/24")
        net.attach(zt_client, zt, ifname="ztc0", address="198.18.2.2/24")
        net.attach(both, lan, ifname="eth0", address="198.18.1.3/24")
        net.attach(both, zt, ifname="ztb0", address="198.18.2.3/24")
        yield Topology(net, server, lan_client, zt_client, both)


def _advertise(topo: Topology, *args: str) -> subprocess.Popen[bytes]:
    proc = topo.net.popen(
        topo.server, _agent("advertise", "--port", "gps", "--id", "ms1srv", *args), cwd=ROOT
    )
    ready = _read_json(proc, 20)
    assert ready["ready"] is True
    return proc


def _browse(topo: Topology, ns: str, timeout: float = 4) -> list[dict[str, Any]]:
    out = topo.net.run(ns, _agent("browse", "--timeout", str(timeout)), cwd=ROOT, timeout=30).stdout
    found: list[dict[str, Any]] = json.loads(out)["found"]
    return found


@pytest.mark.netns
def test_each_link_sees_only_its_own_address(topo: Topology) -> None:
    adv = _advertise(topo)
    try:
        lan = _browse(topo, topo.lan_client)
        zt = _browse(topo, topo.zt_client)
        both = _browse(topo, topo.both_client)
    finally:
        assert topo.net.stop(adv) == 0
    assert [(d["name"], d["addresses"], d["via"]) for d in lan] == [("gps", ["198.18.1.1:7217"], ["eth0"])]
    assert [(d["name"], d["addresses"], d["via"]) for d in zt] == [("gps", ["198.18.2.1:7217"], ["ztc0"])]
    assert [(d["name"], sorted(d["addresses"]), sorted(d["via"])) for d in both] == [
        ("gps", ["198.18.1.1:7217", "198.18.2.1:7217"], ["eth0", "ztb0"])
    ]
    assert lan[0]["device"] == {"vid": "0403", "pid": "6001", "product": "FT232R"}


@pytest.mark.netns
def test_zt_pattern_keeps_the_advert_off_the_lan(topo: Topology) -> None:
    adv = _advertise(topo, "--interface", "zt*")
    try:
        zt = _browse(topo, topo.zt_client)
        lan = _browse(topo, topo.lan_client, timeout=2)
    finally:
        assert topo.net.stop(adv) == 0
    assert [d["addresses"] for d in zt] == [["198.18.2.1:7217"]]
    assert lan == []


@pytest.mark.netns
def test_stopped_advertiser_says_goodbye(topo: Topology) -> None:
    watch = topo.net.popen(topo.lan_client, _agent("watch", "--timeout", "30"), cwd=ROOT)
    assert "watching" in _read_json(watch, 10)
    adv = _advertise(topo)
    added = _read_json(watch, 5)
    assert (added["change"], added["entry"]["name"]) == ("added", "gps")
    assert topo.net.stop(adv) == 0  # SIGTERM: aclose() sends goodbyes
    removed = _read_json(watch, 5)  # without a goodbye this would take ~19 minutes
    assert (removed["change"], removed["entry"]["name"]) == ("removed", "gps")
    topo.net.stop(watch)


@pytest.mark.netns
def test_avahi_sees_the_advert_and_its_txt(topo: Topology, tmp_path: Path) -> None:
    reason = avahi_unavailable()
    if reason is not None:
        pytest.skip(reason)
    avahi = start_avahi(topo.net, topo.lan_client, ifname="eth0", workdir=tmp_path)
    adv = _advertise(topo, "--host-label", "ms-avahi1")
    try:
        lines = avahi.browse("_meshserial._tcp")
    finally:
        topo.net.stop(adv)
        avahi.stop()
    assert len(lines) == 1, lines
    _, iface, proto, name, type_, _domain, host, addr, port, txt = lines[0]
    assert (iface, proto, type_, host, addr, port) == (
        "eth0",
        "IPv4",
        "_meshserial._tcp",
        "ms-avahi1.local",
        "198.18.1.1",
        "7217",
    )
    assert name == r"gps\032\064\032ms-avahi1"  # avahi-browse -p escapes " " and "@"
    for item in ('"v=1"', '"port=gps"', '"id=ms1srv"', '"state=free"', '"rights=rw"', '"vid=0403"'):
        assert item in txt


@pytest.mark.netns
def test_browse_50_ports_on_5_hosts_is_fast(record_property: Any) -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with Netns() as net:
        lan = net.bridge("lan")
        client = net.host("cli")
        net.attach(client, lan, ifname="eth0", address="198.18.10.100/24")
        servers = []
        for h in range(5):
            ns = net.host(f"s{h}")
            net.attach(ns, lan, ifname="eth0", address=f"198.18.10.{h + 1}/24")
            ports = [a for i in range(10) for a in ("--port", f"tty{i}")]
            servers.append(
                net.popen(
                    ns,
                    _agent("advertise", "--id", f"ms1host{h}", "--host-label", f"ms-h{h}", *ports),
                    cwd=ROOT,
                )
            )
        for proc in servers:
            assert _read_json(proc, 20)["ready"] is True
        result = json.loads(net.run(client, _agent("browse", "--timeout", "5"), cwd=ROOT).stdout)
    record_property("browse_seconds", round(result["elapsed"], 3))
    print(f"browse of 50 ports on 5 hosts: {result['elapsed']:.3f}s")
    assert len(result["found"]) == 50
    assert len({(d["server_id"], d["name"]) for d in result["found"]}) == 50
    assert result["elapsed"] < 1.5


def test_waiting_for_adverts_to_settle_never_loses_a_cancellation() -> None:
    """Shutting down while the first adverts go out: the cancellation must win even when the adverts
    settle in the same loop iteration (Python 3.11's asyncio.wait_for would return True here)."""
    advertiser = mdns.Advertiser(interfaces=[loopback_interface()], host_label="ms-test", tcp_port=7217)

    async def main() -> str:
        advertiser._idle.clear()  # as while registrations are in flight
        waiting = asyncio.create_task(advertiser.wait_settled(10.0))
        await asyncio.sleep(0.01)
        advertiser._idle.set()  # the last registration finishes...
        waiting.cancel()  # ...just as SIGTERM cancels the publisher
        try:
            return f"returned {await waiting}"
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(main()) == "cancelled"
