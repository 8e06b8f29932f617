"""meshserial.config: the TOML file, MESHSERIAL_* variables and their precedence (pure, no processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshserial import config
from meshserial.errors import ConfigError, KeyFileError, UsageError

FILE = """
[share]
devices = ["/dev/ttyUSB0=gps", "sim:echo"]
listen = "198.18.1.1"
rfc2217 = "127.0.0.1:7218"
baud = 115200
wait = true
interfaces = ["zt*"]
mdns = false
rendezvous = "https://rdv.example.net"
rendezvous_token_file = "rdv.token"

[discovery]
interfaces = ["eth0"]
rendezvous = "http://rdv.local:7218"
timeout = 2
"""

NO_FLAGS: dict[str, Any] = {}


@pytest.fixture
def loaded(tmp_path: Path) -> config.ConfigFile:
    path = tmp_path / "meshserial.toml"
    path.write_text(FILE, encoding="utf-8")
    return config.load(path)


def test_file_values(loaded: config.ConfigFile, tmp_path: Path) -> None:
    share = config.share_settings(NO_FLAGS, loaded, env={})
    assert share == config.ShareSettings(
        devices=("/dev/ttyUSB0=gps", "sim:echo"), listen=("198.18.1.1", 7217), rfc2217=("127.0.0.1", 7218),
        baud=115200, wait=True, interfaces=("zt*",), mdns=False, rendezvous="https://rdv.example.net",
        rendezvous_token_file=tmp_path / "rdv.token",
    )  # fmt: skip
    found = config.discovery_settings(NO_FLAGS, loaded, env={})
    assert (found.interfaces, found.rendezvous, found.timeout, found.mdns) == (
        ("eth0",), "http://rdv.local:7218", 2.0, True,
    )  # fmt: skip


def test_flag_beats_environment_beats_file(loaded: config.ConfigFile) -> None:
    env = {
        "MESHSERIAL_LISTEN": "198.18.9.9:7300", "MESHSERIAL_INTERFACES": "eth1, zt*", "MESHSERIAL_MDNS": "1",
        "MESHSERIAL_RENDEZVOUS": "http://env:1",
    }  # fmt: skip
    share = config.share_settings(NO_FLAGS, loaded, env=env)
    assert (share.listen, share.interfaces, share.mdns, share.rendezvous) == (
        ("198.18.9.9", 7300), ("eth1", "zt*"), True, "http://env:1",
    )  # fmt: skip
    flags = {"listen": ("127.0.0.1", 1), "interfaces": ["lo"], "no_mdns": True, "rendezvous": "http://flag:2",
             "devices": ["sim:nmea"], "baud": 9600}  # fmt: skip
    share = config.share_settings(flags, loaded, env=env)
    assert (share.listen, share.interfaces, share.mdns, share.rendezvous, share.devices, share.baud) == (
        ("127.0.0.1", 1), ("lo",), False, "http://flag:2", ("sim:nmea",), 9600,
    )  # fmt: skip
    assert config.discovery_settings({"timeout": 0.5}, loaded, env=env).timeout == 0.5


def test_defaults_without_a_file(tmp_path: Path) -> None:
    empty = config.load()  # no config.toml in MESHSERIAL_HOME: nothing, no error
    assert empty.path is None
    share = config.share_settings({"devices": ["sim:echo"]}, empty, env={})
    assert (share.listen, share.rfc2217, share.baud, share.mdns, share.interfaces) == (
        ("0.0.0.0", 7217), None, 9600, True, (),
    )  # fmt: skip
    only_plain = config.share_settings({"devices": ["x"], "rfc2217": ("127.0.0.1", 1)}, empty, env={})
    assert only_plain.listen is None  # no secure listener unless asked, when only --rfc2217 is given
    with pytest.raises(UsageError, match="no device to share"):
        config.share_settings(NO_FLAGS, empty, env={})
    found = config.discovery_settings(NO_FLAGS, empty, env={})
    assert (found.timeout, found.rendezvous, found.mdns) == (config.DEFAULT_TIMEOUT, None, True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[share\n", "config file"),
        ("[client]\n", "unknown section 'client'"),
        ("[share]\nport = 1\n", "unknown key 'port' in [share]"),
        ("[share]\nbaud = '9600'\n", "baud must be an integer"),
        ("[share]\ndevices = [1]\n", "devices must be a list of strings"),
        ("[discovery]\ntimeout = true\n", "timeout must be a number"),
        ("share = 1\n", "[share] must be a table"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        config.load(path)


def test_bad_values(loaded: config.ConfigFile, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="MESHSERIAL_MDNS"):
        config.share_settings(NO_FLAGS, loaded, env={"MESHSERIAL_MDNS": "maybe"})
    with pytest.raises(ConfigError, match="MESHSERIAL_LISTEN"):
        config.share_settings(NO_FLAGS, loaded, env={"MESHSERIAL_LISTEN": "host:port"})
    with pytest.raises(UsageError, match="http:// or https://"):
        config.discovery_settings({"rendezvous": "rdv.example.net"}, loaded, env={})
    with pytest.raises(ConfigError, match="between 0 and 3600"):
        config.discovery_settings({"timeout": 0.0}, loaded, env={})
    path = tmp_path / "bad.toml"
    path.write_text("[share]\nlisten = 'x:y'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[share\] listen"):
        config.share_settings({"devices": ["x"]}, config.load(path), env={})


def test_token_file(tmp_path: Path) -> None:
    token = tmp_path / "rdv.token"
    token.write_text("s3cret\n", encoding="utf-8")
    token.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        config.read_token(token)
    token.chmod(0o600)
    assert config.read_token(token) == "s3cret"
    token.write_text("two words\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="does not hold a token"):
        config.read_token(token)
    with pytest.raises(ConfigError, match="does not exist"):
        config.read_token(tmp_path / "nope")


ROOT = Path(__file__).resolve().parents[2]


def test_example_config_and_units_match_the_cli() -> None:
    import json as _json
    import shlex

    from meshserial.cli import build_parser

    example = config.load(ROOT / "deploy/config/share-example.toml")
    share = config.share_settings(NO_FLAGS, example, env={})
    assert share.listen == ("0.0.0.0", 7217) and share.interfaces == ("zt*", "eth0") and share.wait
    parser = build_parser()
    for unit in ("meshserial-share@.service", "meshserial-rendezvous.service"):
        text = (ROOT / "deploy/systemd" / unit).read_text(encoding="utf-8")
        (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
        argv = shlex.split(line.removeprefix("ExecStart=").replace("%i", "gps"))
        assert argv[0] == "meshserial"
        args = parser.parse_args(argv[1:])
        assert "Environment=MESHSERIAL_SYSTEM=1" in text and "Restart=on-failure" in text
        if unit.startswith("meshserial-share"):
            assert args.config == Path("/etc/meshserial/share-gps.toml")
            assert "User=meshserial" in text and "SupplementaryGroups=dialout" in text
    container = (ROOT / "deploy/container/Containerfile").read_text(encoding="utf-8").splitlines()
    entry = _json.loads(next(x for x in container if x.startswith("ENTRYPOINT")).split(None, 1)[1])
    cmd = _json.loads(next(x for x in container if x.startswith("CMD")).split(None, 1)[1])
    parser.parse_args([*entry[1:], *cmd])
