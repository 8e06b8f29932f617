"""The pure parts of ``invite`` and ``accept``: reading the code, choosing the addresses a code holds."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from meshserial.cli import keys
from meshserial.cli.keys import MAX_INVITE_ADDRESSES, invite_addresses, read_code
from meshserial.discovery.overlay import Interface
from meshserial.errors import ConfigError, UsageError

CODE = "msinv1" + "q" * 98


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ------------------------------------------------------------------------------------------ the code


def test_a_code_given_as_an_argument_is_used_as_it_is() -> None:
    assert read_code(CODE, io.StringIO("ignored")) == CODE


@pytest.mark.parametrize("text", [CODE, f"{CODE}\n", f"\n\n  {CODE}  \r\n\n"])
def test_the_code_is_read_from_standard_input(text: str) -> None:
    assert read_code("-", io.StringIO(text)) == CODE


def test_on_a_terminal_the_code_is_asked_for_without_echo(monkeypatch: pytest.MonkeyPatch) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return f" {CODE} "

    monkeypatch.setattr(keys.getpass, "getpass", fake_getpass)
    assert read_code("-", _Terminal()) == CODE
    assert prompts == ["invite code (msinv1…, not shown): "]


def test_end_of_input_at_the_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    def eof(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(keys.getpass, "getpass", eof)
    with pytest.raises(UsageError, match="no invite code"):
        read_code("-", _Terminal())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no invite code: paste it at the prompt, pipe it in"),
        (" \n\n", "no invite code"),
        (f"{CODE} {CODE}", "more than one invite code"),
        ("x" * 5000, "more than one invite code"),
    ],
)
def test_nothing_usable_on_standard_input(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        read_code("-", io.StringIO(text))
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------- the addresses


def _iface(name: str, *addresses: str, **flags: object) -> Interface:
    return Interface(name=name, addresses=addresses, **flags)  # type: ignore[arg-type]


def test_addresses_for_a_code() -> None:
    interfaces = [
        _iface("lo", "127.0.0.1", "::1", is_loopback=True),
        _iface("ztabc", "10.147.17.5", overlay="zerotier"),
        _iface("eth0", "192.168.1.20", "fe80::1%eth0", "2001:db8::20"),
        _iface("docker0", "172.17.0.1"),
        _iface("wlan0", "192.168.7.3", is_up=False),
        _iface("usb0", "169.254.3.3"),
    ]
    hints, left_out = invite_addresses(7217, interfaces, "bench-pi.example.org")
    # IPv4 first, LAN before ZeroTier; no loopback, container bridge, down interface or link-local.
    assert hints == [
        "192.168.1.20:7217",
        "10.147.17.5:7217",
        "[2001:db8::20]:7217",
        "bench-pi.local:7217",
    ]
    assert left_out == 0


def test_addresses_are_capped() -> None:
    interfaces = [_iface(f"eth{n}", f"192.168.{n}.1", f"2001:db8::{n}") for n in range(4)]
    hints, left_out = invite_addresses(7300, interfaces, "pi")
    assert hints == [f"192.168.{n}.1:7300" for n in range(MAX_INVITE_ADDRESSES)] + ["pi.local:7300"]
    assert left_out == 4


@pytest.mark.parametrize("hostname", ["localhost", "localhost.localdomain", "-bad-", "x" * 64, "a_b", ""])
def test_no_mdns_name_from_an_unusable_host_name(hostname: str) -> None:
    hints, _ = invite_addresses(7217, [_iface("eth0", "192.0.2.2")], hostname)
    assert hints == ["192.0.2.2:7217"]


def test_no_address_no_hints() -> None:
    hints, left_out = invite_addresses(7217, [_iface("lo", "127.0.0.1", is_loopback=True)], "pi")
    assert (hints, left_out) == ([], 0)


def test_interfaces_chosen_by_name_may_be_loopback() -> None:
    hints, _ = invite_addresses(7217, [_iface("lo", "127.0.0.1", "::1", is_loopback=True)], "pi", chosen=True)
    assert hints == ["127.0.0.1:7217", "[::1]:7217", "pi.local:7217"]


def test_the_port_comes_from_share_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHSERIAL_LISTEN", raising=False)
    path = tmp_path / "config.toml"
    assert keys._listen_setting(None, None) == ("0.0.0.0", 7217)
    path.write_text('[share]\nlisten = "0.0.0.0:7300"\n', encoding="utf-8")
    assert keys._listen_setting(path, None) == ("0.0.0.0", 7300)
    assert keys._listen_setting(path, 7400) == ("0.0.0.0", 7400)
    monkeypatch.setenv("MESHSERIAL_LISTEN", "192.0.2.7:7500")
    assert keys._listen_setting(path, None) == ("192.0.2.7", 7500)
    monkeypatch.setenv("MESHSERIAL_LISTEN", "x:y")
    with pytest.raises(ConfigError, match="MESHSERIAL_LISTEN"):
        keys._listen_setting(path, None)
