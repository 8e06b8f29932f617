"""``-v`` and ``--debug`` work before the command and after it, and repeated ``-v`` adds up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import free_tcp_port, meshserial, private_home, run_meshserial

pytestmark = pytest.mark.system

INFO = "meshserial: INFO: created identity ms1"  # a fresh home makes keygen log this at INFO


@pytest.mark.parametrize("argv", [["-v", "keygen"], ["keygen", "-v"], ["--verbose", "keygen"]])
def test_verbose_in_either_position(tmp_path: Path, argv: list[str]) -> None:
    result = run_meshserial(*argv, env=private_home(tmp_path, "k"))
    assert result.returncode == 0, result.stderr
    assert INFO in result.stderr, result.stderr


def test_without_verbose_no_info(tmp_path: Path) -> None:
    result = run_meshserial("keygen", env=private_home(tmp_path, "k"))
    assert result.returncode == 0, result.stderr
    assert "INFO" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("before", "after", "debug"),
    [(["-v"], [], False), ([], ["-v"], False), (["-v"], ["-v"], True), (["-vv"], [], True)],
)
def test_share_counts_verbose_from_both_positions(
    tmp_path: Path, before: list[str], after: list[str], debug: bool
) -> None:
    args = ["sim:echo", "--listen", f"127.0.0.1:{free_tcp_port()}", "--no-mdns"]
    proc = meshserial(*before, "share", *args, *after, env=private_home(tmp_path, "s"))
    try:
        proc.wait_line(r"^sharing echo on 127\.0\.0\.1:")
        proc.wait_line(r"INFO: created identity", stderr=True)
    finally:
        assert proc.stop() == 0, proc.stderr
    # asyncio logs its selector at DEBUG before anything is shared, so by now it is there or never.
    assert ("meshserial: DEBUG:" in proc.stderr) is debug, proc.stderr


@pytest.mark.parametrize(("before", "after"), [(["--debug"], []), ([], ["--debug"])])
def test_debug_in_either_position_shows_the_traceback(
    tmp_path: Path, before: list[str], after: list[str]
) -> None:
    args = ["nothing-here", "--no-mdns", "--pty"]  # looks nowhere: fails at once, exit code 4
    result = run_meshserial(*before, "use", *args, *after, env=private_home(tmp_path, "u"))
    assert result.returncode == 4, result.stderr
    assert "Traceback (most recent call last):" in result.stderr, result.stderr
    assert result.stderr.rstrip("\n").splitlines()[-1].startswith("meshserial: error: no port named")


@pytest.mark.interop
def test_line_events_are_logged_at_verbose_on_both_sides(tmp_path: Path) -> None:
    """A pyserial client drives baud, framing, DTR, RTS, BREAK and purges through the gateway of
    `use --listen` to `share`; both log each event at -v, and the loopback plug's modem lines too."""
    import serial

    env = private_home(tmp_path, "both")
    plain, local = free_tcp_port(), free_tcp_port()
    share = meshserial(
        "-v", "share", "sim:echo=loop", "--rfc2217", f"127.0.0.1:{plain}", "--no-mdns", env=env
    )
    gateway = meshserial(
        "use", f"rfc2217://127.0.0.1:{plain}", "--listen", f"127.0.0.1:{local}", "-v", env=env
    )
    try:
        share.wait_line("sharing loop on rfc2217://")
        gateway.wait_line(r"rfc2217://127\.0\.0\.1:\d+")
        ser = serial.serial_for_url(f"rfc2217://127.0.0.1:{local}", baudrate=9600, timeout=2)
        try:
            ser.baudrate = 57600
            ser.dtr = False
            ser.rts = False
            ser.send_break(0.05)
            ser.reset_input_buffer()
        finally:
            ser.close()
        for proc in (share, gateway):
            for line in (
                r"baud 57600",
                r"DTR off",
                r"RTS off",
                r"BREAK on",
                r"purge",
                r"modem lines CTS off, DSR off, RI off, CD off",
            ):
                proc.wait_line(line, stderr=True, timeout=10)
    finally:
        gateway.stop()
        share.stop()
