"""authorized_clients, known_servers and the small parsers the CLI shares with them."""

from __future__ import annotations

import os
import stat
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshserial.errors import ConfigError, KeyFileError, ServerKeyChanged, UsageError
from meshserial.keys import Identity
from meshserial.proto.text import escape
from meshserial.trust import (
    AuthorizedClients,
    KnownServers,
    clean_client_name,
    format_ports_spec,
    parse_duration,
    parse_expiry,
    parse_ports_spec,
    valid_client_name,
)

ALICE = Identity(bytes([1]) * 32)
BOB = Identity(bytes([2]) * 32)
CAROL = Identity(bytes([3]) * 32)


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NOW = ts("2026-06-01T12:00:00")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "home"
    monkeypatch.setenv("MESHSERIAL_HOME", str(path))
    return path


def write(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


# --- parsers ---------------------------------------------------------------------------------


def test_parse_ports_spec() -> None:
    assert parse_ports_spec("ttyUSB0=rw, ttyACM*=ro,*=ro") == [
        ("ttyUSB0", "rw"),
        ("ttyACM*", "ro"),
        ("*", "ro"),
    ]
    assert parse_ports_spec("lab[0-3]=rw") == [("lab[0-3]", "rw")]
    assert format_ports_spec(parse_ports_spec("a=rw,b*=ro")) == "a=rw,b*=ro"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty port list"),
        ("ttyUSB0", "needs an access mode"),
        ("ttyUSB0=", "must be 'rw' or 'ro'"),
        ("ttyUSB0=wr", "must be 'rw' or 'ro'"),
        ("ttyUSB0=RW", "must be 'rw' or 'ro'"),
        ("=rw", "not a port name"),
        ("tty USB=rw", "not a port name"),
        ("a=rw,,b=ro", "needs an access mode"),
        ('a"b=rw', "not a port name"),
        ("a#b=rw", "not a port name"),
    ],
)
def test_parse_ports_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_ports_spec(spec)


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z0-9_*?.\-\[\]/]{1,12}", fullmatch=True), st.sampled_from(["rw", "ro"])
        ),
        min_size=1,
        max_size=5,
    )
)
def test_ports_spec_round_trip(rules: list[tuple[str, str]]) -> None:
    assert parse_ports_spec(format_ports_spec(rules)) == rules


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1w", 604800), (" 1.5H ", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "15 minutes", "-5m", "0s", "1e3s", "5y", "1h30m"])
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_parse_expiry() -> None:
    assert parse_expiry("90d", now=NOW) == datetime(2026, 8, 30, 12, tzinfo=UTC)
    assert parse_expiry("2026-12-31", now=NOW) == date(2026, 12, 31)
    assert parse_expiry("2026-07-01T10:00:00+02:00", now=NOW) == datetime(2026, 7, 1, 8, tzinfo=UTC)
    assert parse_expiry("2026-07-01T10:00", now=NOW) == datetime(2026, 7, 1, 10, tzinfo=UTC)
    assert parse_expiry("2026-06-01", now=NOW) == date(2026, 6, 1)  # valid through today
    with pytest.raises(UsageError, match="in the past"):
        parse_expiry("2026-05-31", now=NOW)
    with pytest.raises(UsageError, match="not an expiry"):
        parse_expiry("next tuesday", now=NOW)
    with pytest.raises(UsageError, match="not an expiry"):
        parse_expiry("2026-13-01", now=NOW)


# --- authorized_clients ----------------------------------------------------------------------


def test_missing_file_authorizes_nobody(home: Path) -> None:
    clients = AuthorizedClients().load()
    assert clients.entries == []
    assert clients.rights(ALICE.public_id, "ttyUSB0", NOW) is None
    assert clients.path == home / "authorized_clients"


def test_parse_and_rights(home: Path) -> None:
    write(
        home / "authorized_clients",
        "# a comment\n"
        "\n"
        f'{ALICE.id_string}  ttyUSB0=rw,ttyUSB*=ro,ttyACM?=rw  name="alice laptop"  # trailing comment\n'
        f"{BOB.id_string} *=ro expires=2026-06-30\n"
        f"   {CAROL.id_string} *=rw expires=2026-06-01T11:00:00Z name=ci\n",
    )
    clients = AuthorizedClients().load()
    assert len(clients.entries) == 3
    alice = clients.find(ALICE.public_id)
    assert alice is not None and alice.name == "alice laptop" and alice.line == 3
    assert clients.rights(ALICE.public_id, "ttyUSB0", NOW) == "rw"  # first match wins over ttyUSB*
    assert clients.rights(ALICE.public_id, "ttyUSB1", NOW) == "ro"
    assert clients.rights(ALICE.public_id, "ttyACM0", NOW) == "rw"
    assert clients.rights(ALICE.public_id, "ttyACM10", NOW) is None
    assert clients.rights(ALICE.public_id, "ttyusb0", NOW) is None  # case-sensitive everywhere
    assert clients.rights(BOB.public_id, "anything", NOW) == "ro"
    assert clients.rights(CAROL.public_id, "ttyUSB0", NOW) is None  # expired an hour ago
    assert clients.rights(Identity.generate().public_id, "ttyUSB0", NOW) is None


def test_date_expiry_lasts_through_that_day_utc(home: Path) -> None:
    write(home / "authorized_clients", f"{BOB.id_string} *=ro expires=2026-06-30\n")
    clients = AuthorizedClients().load()
    assert clients.rights(BOB.public_id, "p", ts("2026-06-30T23:59:59")) == "ro"
    assert clients.rights(BOB.public_id, "p", ts("2026-07-01T00:00:00")) is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ms1notanid *=rw", "not a valid meshserial id"),
        ("{alice}", "expected 'ms1"),
        ("{alice} ttyUSB0", "needs an access mode"),
        ("{alice} *=rx", "must be 'rw' or 'ro'"),
        ("{alice} *=rw expire=2026-01-01", "unknown option 'expire=2026-01-01'"),
        ("{alice} *=rw from=10.0.0.0/8", "unknown option"),
        ("{alice} *=rw name=a name=b", "given twice"),
        ("{alice} *=rw expires=tomorrow", "not a date or ISO time"),
        ('{alice} *=rw name="unterminated', "No closing quotation"),
        ('{alice} *=rw name=""', "name must be"),
        ("{alice} *=rw\n{alice} *=ro", "already listed on line 2"),
    ],
)
def test_malformed_lines_are_skipped_naming_the_line(home: Path, line: str, message: str) -> None:
    """A bad line is skipped (its client gets nothing from it) and reported; the rest stays in force."""
    path = home / "authorized_clients"
    write(path, "# header\n" + line.format(alice=ALICE.id_string) + f"\n{BOB.id_string} *=ro\n")
    clients = AuthorizedClients().load()
    assert len(clients.problems) == 1
    assert clients.problems[0].startswith(f"{path}:")
    assert message in clients.problems[0]
    assert clients.rights(BOB.public_id, "x", NOW) == "ro"
    # Only the duplicate case has a good first line for alice; every other bad line grants nothing.
    expected = "rw" if "already listed" in message else None
    assert clients.rights(ALICE.public_id, "x", NOW) == expected


def test_authorize_refuses_what_would_not_read_back(home: Path) -> None:
    clients = AuthorizedClients()
    clients.add(ALICE.public_id, name="it's fine # really")
    assert AuthorizedClients().load().find(ALICE.public_id).name == "it's fine # really"  # type: ignore[union-attr]
    with pytest.raises(UsageError, match="1-64 characters"):
        clients.add(BOB.public_id, name='quote " inside')


def test_group_writable_file_is_refused(home: Path) -> None:
    write(home / "authorized_clients", f"{ALICE.id_string} *=rw\n", mode=0o664)
    with pytest.raises(KeyFileError, match="chmod go-w"):
        AuthorizedClients().load()
    os.chmod(home / "authorized_clients", 0o644)  # world-readable is fine: it holds no secrets
    assert AuthorizedClients().load().rights(ALICE.public_id, "x", NOW) == "rw"


def test_add_creates_a_private_file(home: Path) -> None:
    clients = AuthorizedClients()
    entry = clients.add(ALICE.public_id, name="alice")
    path = home / "authorized_clients"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert entry.rules == (("*", "rw"),)  # the default
    text = path.read_text()
    assert text.startswith("# meshserial authorized clients")
    assert f'{ALICE.id_string} *=rw name="alice"\n' in text
    assert AuthorizedClients().load().rights(ALICE.public_id, "x", NOW) == "rw"


def test_add_replaces_in_place_and_keeps_comments(home: Path) -> None:
    path = home / "authorized_clients"
    write(path, f"# mine\n{ALICE.id_string} *=rw # old\n# between\n{BOB.id_string} *=ro\n")
    clients = AuthorizedClients().load()
    clients.add(ALICE.public_id, ports_spec=[("ttyUSB0", "ro")], expires=date(2027, 1, 1), name="a b")
    clients.add(CAROL.public_id, ports_spec="x*=rw")
    assert path.read_text() == (
        f'# mine\n{ALICE.id_string} ttyUSB0=ro name="a b" expires=2027-01-01\n# between\n'
        f"{BOB.id_string} *=ro\n{CAROL.id_string} x*=rw\n"
    )
    assert clients.rights(ALICE.public_id, "ttyUSB0", NOW) == "ro"
    assert clients.rights(ALICE.public_id, "ttyUSB1", NOW) is None
    clients.add(BOB.public_id, expires=datetime(2026, 7, 1, 8, 30, tzinfo=UTC))
    assert f"{BOB.id_string} *=rw expires=2026-07-01T08:30:00Z\n" in path.read_text()
    assert AuthorizedClients().load().rights(BOB.public_id, "p", ts("2026-07-01T08:30:00")) is None


def test_add_sees_changes_made_by_others(home: Path) -> None:
    first, second = AuthorizedClients().load(), AuthorizedClients().load()
    first.add(ALICE.public_id)
    second.add(BOB.public_id)  # must not drop alice, whom `second` never loaded
    assert {e.public_id for e in AuthorizedClients().load().entries} == {ALICE.public_id, BOB.public_id}


def test_add_validates(home: Path) -> None:
    clients = AuthorizedClients()
    with pytest.raises(UsageError, match="client name"):
        clients.add(ALICE.public_id, name='bad"name')
    with pytest.raises(UsageError, match="access mode"):
        clients.add(ALICE.public_id, ports_spec="ttyUSB0")
    with pytest.raises(UsageError, match="32 bytes"):
        clients.add(b"short")
    assert not (home / "authorized_clients").exists()


def test_remove(home: Path) -> None:
    clients = AuthorizedClients()
    clients.add(ALICE.public_id, name="laptop")
    clients.add(CAROL.public_id, name="ci")
    assert [e.public_id for e in clients.remove(CAROL.id_string)] == [CAROL.public_id]
    assert clients.remove(CAROL.public_id) == []
    assert [e.public_id for e in clients.remove("laptop")] == [ALICE.public_id]
    assert clients.entries == []
    assert clients.remove("nobody") == []
    with pytest.raises(UsageError, match="checksum"):
        clients.remove(ALICE.id_string[:-1] + "q")


def test_remove_a_name_several_entries_share_needs_every(home: Path) -> None:
    """Names were not kept unique before, and hand edits can repeat them: revoking more keys than
    meant must not happen by accident."""
    path = home / "authorized_clients"
    text = (
        f'{ALICE.id_string} *=rw name="laptop"\n{CAROL.id_string} *=ro\n{BOB.id_string} *=rw name="laptop"\n'
    )
    write(path, text)
    clients = AuthorizedClients()
    with pytest.raises(UsageError) as info:
        clients.remove("laptop")
    message = str(info.value)
    assert "2 clients are named 'laptop'" in message and "--all" in message
    assert f"{ALICE.id_string[:14]}… (line 1)" in message and f"{BOB.id_string[:14]}… (line 3)" in message
    assert ALICE.id_string not in message  # shortened: the full ids are in the file
    assert path.read_text() == text
    gone = clients.remove("laptop", every=True)
    assert [e.public_id for e in gone] == [ALICE.public_id, BOB.public_id]
    assert path.read_text() == f"{CAROL.id_string} *=ro\n"


def test_a_name_taken_by_another_key_is_refused(home: Path) -> None:
    clients = AuthorizedClients()
    clients.add(ALICE.public_id, name="laptop")
    before = (home / "authorized_clients").read_text()
    with pytest.raises(
        UsageError, match=r"'laptop' is taken by ms1\w{11}… \(.*authorized_clients:4\).*--replace"
    ):
        clients.add(BOB.public_id, name="laptop")
    assert (home / "authorized_clients").read_text() == before
    # The same key may be authorized again under its own name; other names are free.
    assert clients.add(ALICE.public_id, name="laptop", ports_spec="*=ro").rules == (("*", "ro"),)
    assert clients.add(BOB.public_id, name="desk").name == "desk"
    assert clients.displaced == []


def test_replace_takes_the_name_and_the_old_key_loses_access(home: Path) -> None:
    path = home / "authorized_clients"
    write(path, f'# mine\n{ALICE.id_string} *=rw name="laptop"\n{CAROL.id_string} *=ro\n')
    clients = AuthorizedClients()
    entry = clients.add(BOB.public_id, name="laptop", name_taken="replace")
    assert entry.name == "laptop" and [e.public_id for e in clients.displaced] == [ALICE.public_id]
    assert path.read_text() == f'# mine\n{CAROL.id_string} *=ro\n{BOB.id_string} *=rw name="laptop"\n'
    assert clients.rights(ALICE.public_id, "x", NOW) is None
    # Re-authorizing an entry in place while another one is dropped keeps the other lines.
    write(path, f'{ALICE.id_string} *=rw name="a"\n{BOB.id_string} *=rw name="b"\n{CAROL.id_string} *=ro\n')
    clients.add(CAROL.public_id, name="a", ports_spec="*=rw", name_taken="replace")
    assert path.read_text() == f'{BOB.id_string} *=rw name="b"\n{CAROL.id_string} *=rw name="a"\n'


def test_rename_makes_the_name_unique(home: Path) -> None:
    clients = AuthorizedClients()
    clients.add(ALICE.public_id, name="pc")
    assert clients.add(BOB.public_id, name="pc", name_taken="rename").name == "pc-2"
    assert clients.add(CAROL.public_id, name="pc", name_taken="rename").name == "pc-3"
    assert (
        clients.add(BOB.public_id, name="pc", name_taken="rename").name == "pc-2"
    )  # its own name stays free
    assert [e.name for e in AuthorizedClients().load().entries] == ["pc", "pc-2", "pc-3"]
    long = "x" * 64
    clients.add(ALICE.public_id, name=long)
    renamed = clients.add(BOB.public_id, name=long, name_taken="rename").name
    assert renamed == "x" * 62 + "-2"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("bench-pi", "bench-pi"),
        ("Alice's MacBook Pro", "Alice's-MacBook-Pro"),
        ("\x1b]0;owned\x07laptop", "]0;owned-laptop"),
        ("evil\u202etxt.exe", "evil-txt.exe"),
        ('q"uote\\s', "q-uote-s"),
        ("\x85\u2028", None),
        ("-" * 10, None),
        ("", None),
        ("a" * 70, "a" * 64),
        ("a" * 63 + " b", "a" * 63),
        ("ünïcödé", "ünïcödé"),
    ],
)
def test_clean_client_name(text: str, name: str | None) -> None:
    assert clean_client_name(text) == name
    if name is not None:
        assert valid_client_name(name) and escape(name) == name


@given(st.text(max_size=100))
def test_clean_client_name_any_text(text: str) -> None:
    name = clean_client_name(text)
    assert name is None or (valid_client_name(name) and escape(name) == name and " " not in name)


def test_write_is_atomic(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clients = AuthorizedClients()
    clients.add(ALICE.public_id)
    path = home / "authorized_clients"
    before = path.read_text()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ConfigError, match="cannot write"):
        clients.add(BOB.public_id)
    assert path.read_text() == before
    assert sorted(p.name for p in home.iterdir()) == [".authorized_clients.lock", "authorized_clients"]


# --- known_servers ---------------------------------------------------------------------------


def test_pin_and_check(home: Path) -> None:
    servers = KnownServers()
    assert servers.check("bench1", ALICE.public_id) == "new"
    assert servers.pin("bench1", ALICE.public_id, now=NOW, via="mdns") == "added"
    assert servers.pin("bench1", ALICE.public_id) == "unchanged"
    assert servers.pin("bench1-alias", ALICE.public_id, now=NOW) == "added"
    assert servers.pin("[fe80::1%eth0]:7040", BOB.public_id) == "added"
    assert servers.check("bench1", ALICE.public_id) == "pinned"
    assert servers.lookup("bench1") == ALICE.public_id
    assert servers.lookup("nope") is None
    assert servers.names_for(ALICE.public_id) == ["bench1", "bench1-alias"]
    assert servers.lookup("[fe80::1%eth0]:7040") == BOB.public_id
    path = home / "known_servers"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"bench1 {ALICE.id_string} first_seen=2026-06-01T12:00:00Z via=mdns\n" in path.read_text()
    reloaded = KnownServers().load()
    assert reloaded.check("bench1", ALICE.public_id) == "pinned"


def test_changed_key_is_a_hard_error_with_instructions(home: Path) -> None:
    servers = KnownServers()
    servers.pin("bench1", ALICE.public_id)
    with pytest.raises(ServerKeyChanged) as info:
        servers.check("bench1", BOB.public_id)
    message = str(info.value)
    assert f"meshserial trust {BOB.id_string} --name bench1 --replace" in message
    assert ALICE.id_string in message and "impersonating" in message
    with pytest.raises(ServerKeyChanged):
        servers.pin("bench1", BOB.public_id)
    assert servers.lookup("bench1") == ALICE.public_id
    assert servers.pin("bench1", BOB.public_id, replace=True) == "replaced"
    assert KnownServers().load().check("bench1", BOB.public_id) == "pinned"


def test_unpin(home: Path) -> None:
    servers = KnownServers()
    servers.pin("a", ALICE.public_id)
    servers.pin("b", BOB.public_id)
    assert servers.unpin("a")
    assert not servers.unpin("a")
    assert [e.name for e in KnownServers().load().entries] == ["b"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("bench1", "expected 'NAME ms1"),
        ("bench1 ms1garbage", "not a valid meshserial id"),
        ("bench1 {alice} color=red", "unknown option"),
        ("bench1 {alice}\nbench1 {bob}", "already pinned on line 1"),
        ("bad=name {alice}", "expected 'NAME ms1"),
    ],
)
def test_known_servers_malformed(home: Path, line: str, message: str) -> None:
    path = home / "known_servers"
    write(path, line.format(alice=ALICE.id_string, bob=BOB.id_string) + "\n")
    with pytest.raises(ConfigError, match=message) as info:
        KnownServers().load()
    assert f"{path}:" in str(info.value)


def test_pin_validates_names(home: Path) -> None:
    with pytest.raises(UsageError, match="server name"):
        KnownServers().pin("two words", ALICE.public_id)
    with pytest.raises(UsageError, match="via"):
        KnownServers().pin("ok", ALICE.public_id, via="a b")
