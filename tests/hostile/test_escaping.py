"""Text a peer chose never reaches a terminal or a log raw; port names are checked where they are made.

A LAN host can put anything in its mDNS adverts (TXT values, host and instance names), a rendezvous
record carries a device string, a server's error text ends in our error line. Each test here feeds
such text, full of terminal controls, to the code that shows it and checks that what comes out holds
no control, format or separator character, and as many lines as it should.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import socket
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from meshserial import cli
from meshserial.cli import keys as keys_cli
from meshserial.cli import list as list_cli
from meshserial.discovery import mdns
from meshserial.discovery.overlay import Interface
from meshserial.errors import ConnectError
from meshserial.finder import FindOptions, Found, record_entries
from meshserial.proto.records import PortInfo, PortState, Record
from tests.helpers import free_tcp_port, private_home, run_meshserial

# Clears the screen, homes the cursor, sets the window title, starts a forged row, and then some: C1
# CSI, NEL, DEL, NUL, a right-to-left override, an isolate, a zero-width space, a line separator.
HOSTILE = (
    "\x1b[2J\x1b[H\x1b]0;pwned\x07\r\nnasty  evil  10.0.0.1:1  fake\x9b31m\x85\x7f\x00"
    "\u202egnp.exe\u2066\u200b\u2028end"
)
# What python-zeroconf lets through in an instance name (it refuses C0 and DEL there).
HOSTILE_LABEL = "console\x9b2J\x85\u202e\u2066\u200b\u2028"
UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def assert_clean(text: str, *, lines: int) -> None:
    """``text`` is ``lines`` lines with no unsafe character in any of them."""
    rows = text.split("\n")
    assert len(rows) == lines, rows
    for row in rows:
        bad = [c for c in row if unicodedata.category(c) in UNSAFE_CATEGORIES]
        assert not bad, (bad, row)


# ----------------------------------------------------------------------------------- the list table


def _hostile_entries() -> list[mdns.Discovered]:
    txt = {key: HOSTILE for key in ("id", "host", "rights", "holder", *mdns.DEVICE_KEYS)}
    txt |= {"v": "1", "port": "gps", "state": "in-use"}
    ours = mdns.parse_service(mdns.SERVICE_TYPE, HOSTILE, HOSTILE + ".local.", txt)
    ours.addresses, ours.via = ["198.18.0.9:7217"], [Interface(name="zt0", network_name=HOSTILE).label]
    theirs = mdns.parse_service(
        mdns.SER2NET_TYPE, HOSTILE, HOSTILE + ".local.", {"provider": "ser2net", "product": HOSTILE}
    )
    theirs.addresses, theirs.via = ["198.18.0.9:3001"], ["eth0"]
    record = Record(
        server_id=bytes(32), seq=1, expires=2, envelope=b"", addresses=("198.18.0.8:7217",),
        ports=(PortInfo(name="radio", device=HOSTILE, state=PortState.FREE),),
    )  # fmt: skip
    return [ours, theirs, *record_entries(record)]


def test_list_table_escapes_every_field() -> None:
    found = [Found(entry=e, trust=HOSTILE, label="") for e in _hostile_entries()]
    out = list_cli.table([list_cli.cells(f) for f in found])
    assert_clean(out, lines=1 + len(found))
    assert "\\x1b]0;pwned\\x07" in out  # visible, not dropped: the user sees something is odd


def test_list_table_columns_line_up_after_escaping() -> None:
    entries = _hostile_entries()
    found = [Found(entry=e, trust="new", label="") for e in entries]
    header, *rows = list_cli.table([list_cli.cells(f) for f in found]).split("\n")
    state = header.index("STATE")
    assert [row[state:].split()[0] for row in rows] == [f.state for f in found]


def test_list_watch_lines_escape_every_field(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    found = [Found(entry=e, trust="new", label="") for e in _hostile_entries()]
    for tty in (False, True):
        monkeypatch.setattr(sys.stdout, "isatty", lambda tty=tty: tty)
        screen = list_cli._Screen(FindOptions(), as_json=False)
        screen.show(found)
        screen.show(found[:1])  # one removed ("- …" line) and, on a terminal, a redraw
        out = capsys.readouterr().out
        if tty:  # our own screen control, then only escaped text
            frames = out.split("\x1b[H\x1b[2J")
            assert frames[0] == "" and len(frames) == 3
            assert_clean(frames[1].rstrip("\n"), lines=len(found) + 3)
        else:
            assert_clean(out.rstrip("\n"), lines=len(found) + len(found) - 1)


@pytest.mark.parametrize(
    "name", ["a@b", "a b", "a/b", "a:b", "-a", ".a", "x" * 65, "gps\x1b[2J", "gps\u202e", "gpsé"]
)
def test_adverts_with_unusable_port_names_are_malformed(name: str) -> None:
    txt = {"v": "1", "port": name, "id": "ms1x", "state": "free"}
    with pytest.raises(mdns.MalformedAdvert) as caught:
        mdns.parse_service(mdns.SERVICE_TYPE, "a", "h.local.", txt)
    assert_clean(str(caught.value), lines=1)


def test_record_ports_with_unusable_names_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    ports = (PortInfo(name="gps\x9b2J", device=""), PortInfo(name="ok-1", device=""))
    record = Record(server_id=bytes(32), seq=1, expires=2, envelope=b"", addresses=(), ports=ports)
    with caplog.at_level(logging.INFO, logger="meshserial.finder"):
        assert [e.name for e in record_entries(record)] == ["ok-1"]
        record_entries(record)
    (line,) = [r.getMessage() for r in caplog.records if "unusable name" in r.getMessage()]
    assert_clean(line, lines=1)


def test_host_labels_keep_no_unsafe_characters() -> None:
    from meshserial.finder import _clean_label

    assert_clean(_clean_label(HOSTILE), lines=1)
    assert _clean_label("bench.lab") == "bench.lab"


# ------------------------------------------------------------------------------ a real list process


@contextlib.contextmanager
def _hostile_adverts(tcp_port: int) -> Iterator[None]:
    """Adverts a hostile host on the link could send, published with python-zeroconf on loopback."""
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    txt = {key: HOSTILE for key in ("id", "host", "rights", "holder", *mdns.DEVICE_KEYS)}
    infos = [
        ServiceInfo(
            mdns.SERVICE_TYPE, f"nasty.{mdns.SERVICE_TYPE}", port=tcp_port, server=f"{HOSTILE}.local.",
            parsed_addresses=["127.0.0.1"], properties={**txt, "v": "1", "port": "gps", "state": "free"},
        ),
        ServiceInfo(  # nothing could connect to this one: not listed, logged (escaped) with -v
            mdns.SERVICE_TYPE, f"badname.{mdns.SERVICE_TYPE}", port=tcp_port, server="evil.local.",
            parsed_addresses=["127.0.0.1"],
            properties={"v": "1", "port": "a@b\x1b]0;pwned\x07", "id": "ms1x", "state": "free"},
        ),
        ServiceInfo(
            mdns.SER2NET_TYPE, f"{HOSTILE_LABEL}.{mdns.SER2NET_TYPE}", port=tcp_port,
            server=f"{HOSTILE}.local.", parsed_addresses=["127.0.0.1"],
            properties={"provider": "ser2net", "product": HOSTILE, "serial": HOSTILE},
        ),
    ]  # fmt: skip
    try:
        for info in infos:
            zc.register_service(info)
        yield
    finally:
        zc.close()


@pytest.mark.system
def test_list_process_prints_no_raw_control_characters(tmp_path: Path) -> None:
    env = private_home(tmp_path, "client")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        with _hostile_adverts(int(listener.getsockname()[1])):
            table = run_meshserial("list", "-v", "--interface", "lo", env=env)
            data = run_meshserial("list", "--interface", "lo", "--json", env=env)
    assert table.returncode == 0, table.stderr
    assert "\x1b" not in table.stdout and "\x1b" not in table.stderr
    assert_clean(table.stdout.rstrip("\n"), lines=3)  # header, gps, the ser2net console
    assert_clean(table.stderr.rstrip("\n"), lines=len(table.stderr.rstrip("\n").split("\n")))
    assert "unusable port name" in table.stderr
    # --json keeps the values exactly as they came (JSON escapes them itself).
    entries = json.loads(data.stdout)
    assert sorted(e["name"] for e in entries) == sorted(["gps", HOSTILE_LABEL])
    assert {e["host"] for e in entries} == {HOSTILE}


# -------------------------------------------------------------------------------------------- logs


def test_log_formatter_escapes_the_message_and_keeps_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(cli.EscapingFormatter(cli.LOG_FORMAT))
    logger = logging.getLogger("tests.hostile.formatter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("hello from %s: %s", "\x1b]0;title\x07", "gps\nmeshserial: ERROR: forged")
        try:
            raise ConnectError("denied: \x1b[2J")
        except ConnectError:
            logger.error("failed", exc_info=True)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    first, *rest = stream.getvalue().rstrip("\n").split("\n")
    assert first == "meshserial: WARNING: hello from \\x1b]0;title\\x07: gps\\x0ameshserial: ERROR: forged"
    assert rest[0] == "meshserial: ERROR: failed" and rest[1] == "Traceback (most recent call last):"
    assert rest[-1] == "meshserial.errors.ConnectError: denied: \\x1b[2J"
    assert_clean("\n".join(rest), lines=len(rest))


LOG_FROM_CLI = """
import logging, sys
from meshserial import cli
cli._configure_logging(0, False)
logging.getLogger("meshserial.server").warning("hello from %s", sys.argv[1])
"""


def test_cli_logging_escapes_in_a_real_process() -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", LOG_FROM_CLI, "a\x1b]0;title\x07\nmeshserial: ERROR: forged"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = "meshserial: WARNING: hello from a\\x1b]0;title\\x07\\x0ameshserial: ERROR: forged\n"
    assert result.stderr == expected


def test_cli_error_line_is_escaped(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(args: object) -> int:
        raise ConnectError("server says: \x1b]0;pwned\x07\nmeshserial: all good")

    monkeypatch.setattr(keys_cli, "keygen", refused)
    monkeypatch.setattr(cli, "_configure_logging", lambda verbose, debug: None)
    assert cli.main(["keygen"]) == ConnectError.exit_code
    err = capsys.readouterr().err
    assert err == "meshserial: error: server says: \\x1b]0;pwned\\x07\\x0ameshserial: all good\n"


# -------------------------------------------------------------------------- port names at the source


@pytest.mark.system
@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["sim:echo=a@b"], "'a@b'"),
        (["sim:echo", "--name", "a b"], "'a b'"),
        (["sim:echo=x\x1b]0;pwned\x07"], "'x\\x1b]0;pwned\\x07'"),
        (["--config", "CONFIG"], "'bench/1'"),
    ],
)
def test_share_refuses_unusable_port_names(tmp_path: Path, args: list[str], shown: str) -> None:
    env = private_home(tmp_path, "s")
    config = tmp_path / "share.toml"
    config.write_text('[share]\ndevices = ["sim:echo=bench/1"]\n', encoding="utf-8")
    args = [str(config) if a == "CONFIG" else a for a in args]
    # Loopback only and no adverts, should the name be taken after all (the test then times out).
    listen = ["--listen", f"127.0.0.1:{free_tcp_port()}", "--no-mdns"]
    result = run_meshserial("share", *args, *listen, env=env, timeout=20)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "\x1b" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"meshserial: error: port name {shown} is not usable"), result.stderr
