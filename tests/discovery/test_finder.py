"""Finding ports (merge, order, probe, trust, resolve) and connecting to one of several addresses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from meshserial import finder
from meshserial.client import connect_first, parse_target
from meshserial.discovery.mdns import Discovered
from meshserial.discovery.overlay import Interface
from meshserial.errors import ConnectError, UnknownServer, UsageError
from meshserial.finder import FindOptions, judge, merge_sources, order_addresses, record_entries
from meshserial.keys import Identity, format_id
from meshserial.net.sharing import SharedPort
from meshserial.ports.memory import MemoryPort
from meshserial.proto import records
from meshserial.proto import session as sess
from meshserial.server import SecureServer
from meshserial.trust import KnownServers
from tests.discovery.test_mdns import aio

A = Identity.generate()
B = Identity.generate()


def _entry(name: str = "gps", server: Identity = A, *addresses: str, **kw: Any) -> Discovered:
    fields: dict[str, Any] = {
        "kind": "meshserial", "name": name, "host": "bench", "server_id": server.id_string,
        "addresses": list(addresses) or ["198.18.1.1:7217"], "via": ["eth0"], "device": {}, "state": "free",
        "rights": "auth", "holder": None, "txt": {},
    }  # fmt: skip
    fields.update(kw)
    return Discovered(**fields)


def test_target_forms() -> None:
    assert parse_target("gps").kind == "discover"
    assert parse_target("gps@198.18.1.1").kind == "meshserial"
    assert parse_target("rfc2217://198.18.1.1:2000").kind == "rfc2217"
    for bad in ("gps@", "@host", "a b", "x" * 65, "host:7217"):
        with pytest.raises(UsageError):
            parse_target(bad)


def test_rendezvous_records_merge_with_mdns_by_identity() -> None:
    envelope = records.sign_record(
        A.signing_key,
        seq=1,
        expires=int(time.time()) + 600,
        ports=[records.PortInfo(name="gps", device="FT232R", state=records.PortState.IN_USE)],
        addresses=["198.18.2.1:7217", "198.18.1.1:7217"],
    )
    record = records.verify_envelope(envelope, now=time.time())
    from_rdv = record_entries(record)
    assert [(e.name, e.server_id, e.via, e.state, e.device) for e in from_rdv] == [
        ("gps", A.id_string, ["rendezvous"], "in-use", {"desc": "FT232R"})
    ]
    merged = merge_sources([_entry(), _entry("gps", B)], from_rdv)
    assert [(e.server_id, e.addresses, e.via, e.state) for e in merged] == [
        (A.id_string, ["198.18.1.1:7217", "198.18.2.1:7217"], ["eth0", "rendezvous"], "free"),
        (B.id_string, ["198.18.1.1:7217"], ["eth0"], "free"),
    ]


def test_addresses_are_ordered_lan_overlay_other() -> None:
    interfaces = [
        Interface(name="eth0", addresses=("198.18.1.9",), networks=("198.18.1.0/24",)),
        Interface(name="zt0", addresses=("198.18.2.9",), overlay="zerotier", networks=("198.18.2.0/24",)),
    ]
    entry = _entry("gps", A, "198.18.5.1:7217", "198.18.2.1:7217", "[2001:db8::1]:7217", "198.18.1.1:7217")
    order_addresses([entry], interfaces)
    assert entry.addresses == ["198.18.1.1:7217", "198.18.2.1:7217", "198.18.5.1:7217", "[2001:db8::1]:7217"]


def test_trust_against_pins(tmp_path: Any) -> None:
    known = KnownServers(tmp_path / "known_servers")
    assert (judge(_entry(), known.load()).trust, judge(_entry(), known).label) == ("new", "bench")
    known.pin("bench", A.public_id)
    assert judge(_entry(), known).trust == "pinned"
    assert (judge(_entry("gps", B), known).trust, judge(_entry("gps", B), known).label) == (
        "KEY CHANGED",
        "bench",
    )
    # An address label pinned (by 'use gps@198.18.1.1') counts too, with a non-default port in it.
    known.pin("198.18.3.3:7300", B.public_id)
    other = _entry("gps", B, "198.18.3.3:7300", host="elsewhere")
    assert (judge(other, known).trust, judge(other, known).label) == ("pinned", "198.18.3.3:7300")
    # A key pinned under any other name is trusted; a record without a host shows that name.
    C = Identity.generate()
    known.pin("lab-pi", C.public_id)
    record_only = _entry("gps", C, host="")
    assert (judge(record_only, known).trust, record_only.host) == ("pinned", "lab-pi")
    assert judge(_entry("gps", A, server_id="ms1bogus"), known).trust == "bad id"
    ser2net = _entry(kind="ser2net", server_id="", host="pi")
    assert judge(ser2net, known).trust == "none"
    assert judge(ser2net, known).target == "rfc2217://198.18.1.1:7217"


@asynccontextmanager
async def _listener(handler: Any) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@aio
async def test_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with _listener(idle) as port:
        live = f"127.0.0.1:{port}"
        dead = f"127.0.0.1:{_closed_port()}"
        entries = [_entry("gps", A, live), _entry("gps", B, dead, host="old"), _entry("radio", A, live)]

        async def gather(options: FindOptions, *, name: str | None = None) -> list[Discovered]:
            return [e for e in entries if name is None or e.name == name]

        monkeypatch.setattr(finder, "gather", gather)
        options = FindOptions(mdns=False)
        resolved = await finder.resolve("gps", options)  # B does not answer: not ambiguous
        assert (resolved.server_id, resolved.addresses, resolved.label) == (
            A.public_id,
            (("127.0.0.1", port),),
            "bench:" + str(port),
        )
        found = {(f.entry.server_id, f.state) for f in await finder.find(options)}
        assert found == {(A.id_string, "free"), (B.id_string, "unreachable")}
        with pytest.raises(ConnectError, match="does not answer"):
            await finder.resolve("gps", options, server_id=B.public_id)
        with pytest.raises(ConnectError, match="no port named 'nope'"):
            await finder.resolve("nope", options)
        entries.append(_entry("gps", B, live, host="second"))
        with pytest.raises(
            UsageError, match=rf"gps@127.0.0.1:{port} \(host bench.*gps@127.0.0.1:{port} \(host second"
        ):
            await finder.resolve("gps", options)


# ------------------------------------------------------------------------------------ connect_first


@asynccontextmanager
async def _server() -> AsyncIterator[tuple[Identity, int]]:
    shared = SharedPort("gps", MemoryPort())
    await shared.start()
    identity = Identity.generate()
    server = SecureServer([shared], identity, "127.0.0.1", 0)
    await server.start()
    assert server.address is not None
    try:
        yield identity, server.address[1]
    finally:
        await server.aclose()
        await shared.aclose()


class Stop(UnknownServer):
    pass


async def _first(addresses: list[tuple[str, int]], expect: bytes, **kw: Any) -> bytes:
    """Race, then stop at the trust check; returns the identity the winner proved."""
    proved: list[bytes] = []

    async def trust(server_id: bytes) -> None:
        proved.append(server_id)
        raise Stop("stop here")

    with pytest.raises(Stop):
        await connect_first(
            addresses, identity=Identity.generate(), expect=expect, request=sess.Hello(port="gps", mode="rw"),
            trust=trust, stream_for=None, **kw,
        )  # fmt: skip
    return proved[0]


@aio
async def test_connect_first_staggers_and_cancels_the_slow_path() -> None:
    hung: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read()  # never answers; EOF once the client gave up on this path
        hung.set_result(data)
        writer.close()

    async with _server() as (identity, port), _listener(black_hole) as hole:
        start = time.monotonic()
        assert await _first([("127.0.0.1", hole), ("127.0.0.1", port)], identity.public_id, stagger=0.2) == (
            identity.public_id
        )
        assert 0.2 <= time.monotonic() - start < 3
        async with asyncio.timeout(5):
            assert len(await hung) == 2 + 32  # our message 1, then the connection was closed
        # A refused path starts the next attempt at once, without waiting for the stagger.
        start = time.monotonic()
        await _first([("127.0.0.1", _closed_port()), ("127.0.0.1", port)], identity.public_id, stagger=5)
        assert time.monotonic() - start < 3


@aio
async def test_connect_first_wants_the_announced_identity() -> None:
    async with _server() as (identity, port):
        with pytest.raises(ConnectError, match="not the announced id"):
            await _first([("127.0.0.1", port)], B.public_id)
        with pytest.raises(
            ConnectError, match=rf"127.0.0.1:{port}: .*not the announced id; 127.0.0.1:\d+: cannot"
        ):
            await _first([("127.0.0.1", port), ("127.0.0.1", _closed_port())], B.public_id, stagger=0.05)
    assert format_id(identity.public_id) == identity.id_string
