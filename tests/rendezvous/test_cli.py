"""``meshserial rendezvous`` arguments and the serve() entry point."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import socket
from pathlib import Path

import aiohttp
import pytest

from meshserial.cli.rendezvous import (
    add_arguments,
    parse_listen,
    parse_proxy,
    run_from_args,
    settings_from_args,
)
from meshserial.errors import PortBusy, UsageError
from meshserial.rendezvous import DEFAULT_MAX_IDS_PER_SOURCE, DEFAULT_PORT, serve

from .conftest import async_test


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7218", ("127.0.0.1", 7218)),
        ("[::1]:80", ("::1", 80)),
        (":9000", ("0.0.0.0", 9000)),
        ("rdv.example:0", ("rdv.example", 0)),
        ("7218", ("127.0.0.1", 7218)),  # a bare port, as ser2net and socat take it: loopback
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["host:", "host:port", "::1:80", "[nope]:80", "h:70000", "h:١٢"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_listen(text)


def test_settings_from_args(tmp_path: Path) -> None:
    args = parse("--db", str(tmp_path / "x.db"), "--token-file", "t", "--allow-file", "a")
    settings = settings_from_args(args)
    assert (settings.host, settings.port) == ("127.0.0.1", DEFAULT_PORT)
    assert settings.db_path == tmp_path / "x.db"
    assert settings.token_file == Path("t") and settings.allow_file == Path("a")
    assert settings.trusted_proxies == ()  # nobody's X-Forwarded-For is believed unless named
    assert settings.max_ids_per_source == DEFAULT_MAX_IDS_PER_SOURCE == 32


def test_trust_proxy_and_quota_flags() -> None:
    args = parse(
        "--trust-proxy", "127.0.0.1", "--trust-proxy", "10.8.0.0/16", "--trust-proxy", "::1",
        "--trust-proxy", "127.0.0.1", "--max-ids-per-source", "200",
    )  # fmt: skip
    settings = settings_from_args(args)
    assert settings.trusted_proxies == tuple(
        ipaddress.ip_network(n) for n in ("127.0.0.1/32", "10.8.0.0/16", "::1/128")
    )
    assert settings.max_ids_per_source == 200


@pytest.mark.parametrize(
    ("text", "expected"),
    [("192.0.2.1", "192.0.2.1/32"), ("2001:db8::/64", "2001:db8::/64"), (" fd00::1 ", "fd00::1/128")],
)
def test_parse_proxy(text: str, expected: str) -> None:
    assert str(parse_proxy(text)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.8.0.1/16", "host bits set"),
        ("proxy.example", "does not appear to be"),
        ("", "does not appear to be"),
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("::ffff:10.0.0.1", "as IPv4"),
    ],
)
def test_parse_proxy_refuses(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_proxy(text)


@pytest.mark.parametrize("text", ["0", "-1", "x", "1.5", "\u0661", "9" * 10])
def test_max_ids_per_source_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="max-ids-per-source"):
        settings_from_args(parse(f"--max-ids-per-source={text}"))


@async_test
async def test_serve_until_stopped_and_default_db_in_state_dir(tmp_path: Path) -> None:
    stop, listening = asyncio.Event(), asyncio.Event()
    bound: list[tuple[str, int]] = []

    def on_listening(addresses: list[tuple[str, int]]) -> None:
        bound.extend(addresses)
        listening.set()

    settings = settings_from_args(parse("--listen", "127.0.0.1:0"))
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(serve(settings, stop=stop, on_listening=on_listening))
        await listening.wait()
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{bound[0][1]}/healthz") as r,
        ):
            assert r.status == 200
        stop.set()
    assert task.done()
    # conftest points MESHSERIAL_HOME at tmp_path / "inproc-home"
    assert (tmp_path / "inproc-home" / "rendezvous.sqlite3").exists()


@async_test
async def test_port_in_use_is_port_busy(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        args = parse("--listen", f"127.0.0.1:{port}", "--db", str(tmp_path / "db"))
        with pytest.raises(PortBusy):
            await run_from_args(args)


@async_test
async def test_run_from_args_is_cancellable(tmp_path: Path) -> None:
    listening = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("rendezvous listening on"):
                listening.set()

    handler = Watch()
    app_log = logging.getLogger("meshserial.rendezvous.app")
    app_log.addHandler(handler)
    app_log.setLevel(logging.INFO)
    try:
        task = asyncio.create_task(
            run_from_args(parse("--listen", "127.0.0.1:0", "--db", str(tmp_path / "db")))
        )
        await listening.wait()
    finally:
        app_log.removeHandler(handler)
        app_log.setLevel(logging.NOTSET)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
