"""``list``, ``use NAME``, ``doctor`` and ``share --config`` as real processes on loopback."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from zeroconf import IPVersion, ServiceInfo, Zeroconf

from tests.helpers import Proc, free_tcp_port, meshserial, ok, private_home, run_meshserial

pytestmark = pytest.mark.system


def share_on_loopback(env: dict[str, str], *devices: str) -> tuple[Proc, int]:
    """A share on loopback; wait for its adverts with :func:`advertised`."""
    port = free_tcp_port()
    return meshserial("share", *devices, "--listen", f"127.0.0.1:{port}", env=env), port


def advertised(*procs: Proc) -> None:
    for proc in procs:
        proc.wait_line(r"advertising .* on lo \(mDNS\)")


def test_list_use_by_name_and_watch(tmp_path: Path) -> None:
    one, two, client = (
        private_home(tmp_path, "one"),
        private_home(tmp_path, "two"),
        private_home(tmp_path, "client"),
    )
    client_id = ok("keygen", env=client).strip()
    ok("authorize", client_id, env=one)
    watch = meshserial("list", "--watch", "--interface", "lo", env=client)  # stdout is a pipe: plain lines
    first, port1 = share_on_loopback(one, "sim:echo=gps", "sim:echo=radio")
    second, port2 = share_on_loopback(two, "sim:nmea=gps")
    procs = [watch, first, second]
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: [proc.stop() for proc in procs])
        ser2net = stack.enter_context(_listening_socket())
        stack.enter_context(_ser2net_advert(ser2net))
        advertised(first, second)

        table = ok("list", "--interface", "lo", env=client).splitlines()
        assert table[0].split() == ["NAME", "HOST", "VIA", "ADDRESSES", "DEVICE", "STATE", "TRUST", "HOLDER"]
        rows = sorted((r.split()[0], r.split()[3]) for r in table[1:])
        at = "127.0.0.1:{}".format
        assert rows == sorted(
            [("gps", at(port1)), ("gps", at(port2)), ("radio", at(port1)), ("console", at(ser2net))]
        )
        entries = json.loads(ok("list", "--interface", "lo", "--json", env=client))
        (console,) = [e for e in entries if e["kind"] == "ser2net"]
        assert [console[k] for k in ("name", "state", "trust", "device", "target")] == [
            "console", "unknown", "none", {"vid": "0403"}, f"rfc2217://{at(ser2net)}",
        ]  # fmt: skip

        result = run_meshserial("use", "gps", "--interface", "lo", "--pty", env=client)
        assert result.returncode == 2, result.stderr
        assert "several servers share a port named 'gps'" in result.stderr
        assert f"gps@{at(port1)} " in result.stderr and f"gps@{at(port2)} " in result.stderr
        result = run_meshserial("use", "nothing-here", "--interface", "lo", "--pty", env=client)
        assert result.returncode == 4 and "no port named 'nothing-here' found" in result.stderr

        link = tmp_path / "ttyRadio"
        use = meshserial(
            "use", "radio", "--interface", "lo", "--pty", "--trust-new", "--link", str(link), env=client
        )
        procs.append(use)
        use.wait_line(r"/dev/pts/\d+")
        with serial.Serial(str(link), timeout=5) as app:
            app.write(b"echo me")
            assert app.read(7) == b"echo me"  # sim:echo
        assert use.stop() == 0, use.stderr

        watch.wait_line(rf"^\+ radio .*127\.0\.0\.1:{port1}")
        watch.wait_line(rf"^\+ gps .*127\.0\.0\.1:{port2}")
        assert second.stop() == 0
        watch.wait_line(r"^- gps ")  # the goodbye reaches the watcher
        assert watch.stop() == 0, watch.stderr  # SIGTERM ends --watch with status 0
        assert first.stop() == 0
    result = run_meshserial("list", "--interface", "lo", "--json", "--timeout", "2", env=client)
    assert (result.returncode, json.loads(result.stdout)) == (0, [])
    result = run_meshserial("list", "--interface", "lo", "--timeout", "1", env=client)
    assert (result.returncode, result.stdout) == (0, "")
    assert "no shared ports found" in result.stderr


@contextlib.contextmanager
def _listening_socket() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@contextlib.contextmanager
def _ser2net_advert(port: int) -> Iterator[None]:
    """What ser2net 4 announces for a port (when built with mDNS support), on loopback."""
    zc = Zeroconf(interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    properties = {"provider": "ser2net", "gensiostack": "telnet(rfc2217),tcp", "idVendor": "0403"}
    try:
        zc.register_service(
            ServiceInfo(
                "_iostream._tcp.local.", "console._iostream._tcp.local.", port=port,
                server="pi-ser2net.local.", parsed_addresses=["127.0.0.1"], properties=properties,
            )
        )  # fmt: skip
        yield
    finally:
        zc.close()


def test_bad_discovery_input_is_one_line(tmp_path: Path) -> None:
    env = private_home(tmp_path, "c")
    for args, message in (
        (["list", "--interface", "nope0"], "no interface matches 'nope0'"),
        (["use", "a b", "--pty"], "bad target 'a b'"),
        (["list", "--config", str(tmp_path / "missing.toml")], "does not exist"),
    ):
        result = run_meshserial(*args, env=env)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_share_reads_its_config_file_and_the_environment_wins(tmp_path: Path) -> None:
    env = private_home(tmp_path, "s")
    file_port, env_port = free_tcp_port(), free_tcp_port()
    config = tmp_path / "share.toml"
    config.write_text(
        f'[share]\ndevices = ["sim:echo=fromfile"]\nlisten = "127.0.0.1:{file_port}"\nmdns = false\n',
        encoding="utf-8",
    )
    proc = meshserial(
        "share", "--config", str(config), env=dict(env, MESHSERIAL_LISTEN=f"127.0.0.1:{env_port}")
    )
    try:
        proc.wait_line(rf"sharing fromfile on 127\.0\.0\.1:{env_port} as ms1")
    finally:
        assert proc.stop() == 0, proc.stderr
    assert "advertising" not in proc.stdout
    config.write_text('[share]\ndevice = ["sim:echo"]\n', encoding="utf-8")
    result = run_meshserial("share", "--config", str(config), env=env)
    assert result.returncode == 2 and "unknown key 'device' in [share]" in result.stderr, result.stderr


def _doctor(env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = run_meshserial("doctor", "--json", "--interface", "lo", env=env)
    assert "Traceback" not in result.stderr, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


def test_doctor(tmp_path: Path) -> None:
    env = private_home(tmp_path, "d")
    ok("keygen", env=env)
    code, report = _doctor(env)
    problems = [c for c in report["checks"] if c["status"] == "problem"]
    warnings = [c for c in report["checks"] if c["status"] == "warning"]
    assert code == (1 if problems or warnings else 0) and report["ok"] is not (problems or warnings)
    assert not [c for c in problems if c["area"] in ("keys", "trust", "config", "mdns")], problems
    assert {"ok"} == {c["status"] for c in report["checks"] if c["area"] in ("mdns", "keys", "trust")}

    identity = Path(env["MESHSERIAL_HOME"]) / "identity.key"
    identity.chmod(0o644)
    (Path(env["MESHSERIAL_HOME"]) / "known_servers").write_text("bogus line\n", encoding="utf-8")
    code, report = _doctor(env)
    assert code == 1 and report["ok"] is False
    bad = {c["area"]: c for c in report["checks"] if c["status"] == "problem"}
    assert bad["keys"]["fix"] == f"chmod 600 {identity}"
    assert "known_servers:1" in bad["trust"]["detail"]
    text = run_meshserial("doctor", "--interface", "lo", env=env)
    assert text.returncode == 1
    assert re.search(r"^keys\n  problem  .*readable or writable by other users", text.stdout, re.MULTILINE)
    assert f"fix: chmod 600 {identity}" in text.stdout and "problems found" in text.stdout
