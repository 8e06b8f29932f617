"""Time to resume a session after network faults, and bytes lost, between two network namespaces.

    sudo python -m benchmarks.resume [--kills N] [--cuts N] [--restarts N] [--outage S] [--json FILE]

Each run builds a fresh rig (tests/faults/rig.py): ``share`` in a server namespace and ``use --pty`` in a
client namespace, joined through a switch namespace; the benchmark plays the device (a PTY pair) and the
application (the client's PTY) and keeps a steady stream of numbered 8-byte records flowing both ways
(one every 5 ms per direction, 1.6 kB/s), timing every write and every read. Scenarios:

* **kill**: the TCP connection is reset (``ss -K`` in the client namespace). Times from the kill (the
  moment the client reports the reset, which it sees at once) to the client's ``resumed after`` line and
  to the first record *written after the kill* arriving at the far end (application → device and
  device → application); "noticed" is from starting ``ss`` to that report.
* **cut**: the server's cable is unplugged at the switch for ``--outage`` seconds (15): no RST, only
  silence. Times from the cut to the loss being noticed (client line, server ``-v`` log), and from the
  cable coming back to the ``resumed`` line and to the first byte arriving at each end.
* **restart**: the server is SIGKILLed and started again at once. Times from its return (its
  ``sharing`` line) to the client's ``new session`` line and to the first record written after the
  return arriving at each end. A new session may lose what was in flight; the client says so.

After each run the stream is drained and compared with what was sent: "lost" counts bytes that never
arrived (0 means the received stream equals the sent one exactly).

Needs root (network namespaces); everything is torn down after each run, processes are stopped by PID.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.faults.rig import Device, PtyHost, Rig, Trickle, faults_unavailable, open_app
from tests.netns import Netns


@dataclass
class Run:
    scenario: str
    run: int
    noticed_client: float | None = None  # fault → client reports the loss (s)
    noticed_server: float | None = None  # fault → server detaches the session (s)
    to_line: float | None = None  # reference → "resumed" / "new session" line (s)
    to_data_up: float | None = None  # reference → data flowing application → device (s)
    to_data_down: float | None = None  # reference → data flowing device → application (s)
    lost_up: int = 0
    lost_down: int = 0
    intact_up: bool = True
    intact_down: bool = True
    client_says: str = ""
    notes: list[str] = field(default_factory=list)


class Session:
    """One rig with a running session and a trickle of records both ways."""

    def __init__(self, net: Netns, workdir: Path) -> None:
        self.ptys = PtyHost(workdir / "pts")
        self.device = Device(self.ptys)
        self.rig = Rig(net, workdir)
        self.server = self.rig.share(self.device.path)
        link = workdir / "ttyApp"
        self.client = self.rig.use(link)
        self.app = open_app(link)
        self.trickle = Trickle(self.app, self.device.master)
        start = time.monotonic()
        for direction in ("up", "down"):
            self.trickle.wait_new_arrival(direction, start + 0.5, 10)  # flowing for half a second

    def finish(self, run: Run) -> Run:
        self.trickle.drain(10)
        for direction in ("up", "down"):
            loss = self.trickle.loss(direction)
            setattr(run, f"lost_{direction}", loss.lost)
            setattr(run, f"intact_{direction}", loss.intact)
            if not loss.in_order:
                run.notes.append(f"{direction}: records out of order")
        return run

    def close(self) -> None:
        self.trickle.stop()
        self.rig.close()
        with contextlib.suppress(OSError):
            os.close(self.app)
        self.device.close()
        self.ptys.close()


def run_kill(session: Session, run: Run) -> None:
    before = session.rig.kill_connections()
    after = time.monotonic()
    # ss acts somewhere while it runs (~10 ms in a namespace); the client sees the RST at once, so its
    # "connection lost" line is the kill's timestamp.
    killed, _ = session.client.wait_line(r"connection lost \(", 10, after=before)
    run.noticed_client = killed - before
    found = session.server.find(r"lost its connection", after=before)
    run.noticed_server = found[0] - before if found is not None else None
    run.notes.append(f"ss -K ran {1000 * (after - before):.0f} ms")
    t_line, m = session.client.wait_line(r"resumed after .*", 30, after=before)
    run.to_line = t_line - killed
    run.client_says = m.group(0)
    run.to_data_up = session.trickle.wait_new_arrival("up", killed, 30) - killed
    run.to_data_down = session.trickle.wait_new_arrival("down", killed, 30) - killed


def run_cut(session: Session, run: Run, outage: float) -> None:
    rig = session.rig
    cut = rig.cut()
    t_client, _ = session.client.wait_line(r"connection lost \(", outage + 30, after=cut)
    run.noticed_client = t_client - cut
    found = session.server.find(r"lost its connection", after=cut)
    if found is None and cut + outage > time.monotonic():
        found = session.server.wait_line(r"lost its connection", cut + outage - time.monotonic(), after=cut)
    if found is not None:
        run.noticed_server = found[0] - cut
    time.sleep(max(0.0, cut + outage - time.monotonic()))  # the outage itself
    up = rig.restore()
    t_line, m = session.client.wait_line(r"resumed after .*|new session after .*", 60, after=up)
    run.to_line = t_line - up
    run.client_says = m.group(0)
    run.to_data_up = session.trickle.wait_arrival_after("up", up, 60) - up
    run.to_data_down = session.trickle.wait_arrival_after("down", up, 60) - up
    if run.noticed_server is None:
        run.notes.append("server did not log the loss during the outage")


def run_restart(session: Session, run: Run) -> None:
    killed = time.monotonic()
    session.server.kill()
    t_lost, _ = session.client.wait_line(r"connection lost \(", 10, after=killed)
    run.noticed_client = t_lost - killed
    session.server = session.rig.share(session.device.path)
    back, _ = session.server.wait_line(r"sharing gps on", 1)
    t_line, m = session.client.wait_line(r"new session after .*|resumed after .*", 30, after=killed)
    run.to_line = t_line - back
    run.client_says = m.group(0)
    run.to_data_up = session.trickle.wait_new_arrival("up", back, 30) - back
    run.to_data_down = session.trickle.wait_new_arrival("down", back, 30) - back
    # A little traffic in the new session before draining.
    session.trickle.wait_new_arrival("up", t_line + 0.5, 10)


def one_run(scenario: str, index: int, outage: float) -> Run:
    run = Run(scenario, index)
    with Netns() as net, tempfile.TemporaryDirectory(prefix="ms-resume-") as tmp:
        session = Session(net, Path(tmp))
        try:
            if scenario == "kill":
                run_kill(session, run)
            elif scenario == "cut":
                run_cut(session, run, outage)
            else:
                run_restart(session, run)
            session.finish(run)
        except AssertionError as exc:
            run.notes.append(f"FAILED: {str(exc).splitlines()[0]}")
            print(session.rig.output(), file=sys.stderr)
        finally:
            session.close()
    return run


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:6.3f}"


REFERENCE = {
    "kill": "from the kill",
    "cut": "from the cable's return (noticed: from the cut)",
    "restart": "from the server's return (noticed: from the SIGKILL)",
}


def print_table(runs: list[Run], outage: float) -> None:
    header = (
        f"{'scenario':<9} {'run':>3}  {'noticed':>7} {'(server)':>8}  {'→line':>6}  {'→data':>6} "
        f"{'→data':>6}  {'lost':>5} {'lost':>5}  client says"
    )
    sub = f"{'':<9} {'':>3}  {'client':>7} {'':>8}  {'':>6}  {'a→d':>6} {'d→a':>6}  {'a→d':>5} {'d→a':>5}"
    print(header)
    print(sub)
    print("-" * len(header))
    for r in runs:
        print(
            f"{r.scenario:<9} {r.run:>3}  {fmt(r.noticed_client):>7} {fmt(r.noticed_server):>8}  "
            f"{fmt(r.to_line)}  {fmt(r.to_data_up)} {fmt(r.to_data_down)}  {r.lost_up:>5} {r.lost_down:>5}  "
            f"{r.client_says}{'  [' + '; '.join(r.notes) + ']' if r.notes else ''}"
        )
    print()
    print("times in seconds;", "; ".join(f"{k}: {v}" for k, v in REFERENCE.items()), f"; outage {outage:g} s")
    for scenario in REFERENCE:
        chosen = [r for r in runs if r.scenario == scenario and r.to_line is not None]
        if len(chosen) > 1:
            line = [r.to_line for r in chosen if r.to_line is not None]
            data = [max(r.to_data_up or 0.0, r.to_data_down or 0.0) for r in chosen]
            print(
                f"{scenario}: →line median {statistics.median(line):.3f} max {max(line):.3f}; "
                f"→data (both ways) median {statistics.median(data):.3f} max {max(data):.3f}; "
                f"bytes lost {sum(r.lost_up + r.lost_down for r in chosen)} in {len(chosen)} runs"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.resume", description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=5, help="killed-connection runs (5)")
    parser.add_argument("--cuts", type=int, default=1, help="cable-cut runs (1; each takes outage + ~15 s)")
    parser.add_argument("--restarts", type=int, default=3, help="server-restart runs (3)")
    parser.add_argument("--outage", type=float, default=15.0, help="cable-cut duration in seconds (15)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write every number as JSON")
    args = parser.parse_args(argv)
    reason = faults_unavailable()
    if reason is not None:
        print(f"resume benchmark skipped: {reason}", file=sys.stderr)
        return 2
    plan = (
        [("kill", i) for i in range(1, args.kills + 1)]
        + [("cut", i) for i in range(1, args.cuts + 1)]
        + [("restart", i) for i in range(1, args.restarts + 1)]
    )
    runs = []
    for scenario, index in plan:
        print(f"… {scenario} {index}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        runs.append(one_run(scenario, index, args.outage))
    print_table(runs, args.outage)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
