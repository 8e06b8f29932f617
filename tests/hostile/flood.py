"""Programs run inside a test namespace: a handshake-slot flood, and a legitimate client timing itself.

    python -m tests.hostile.flood attack HOST PORT --sources 198.18.2.10-73 --count 1000 --seconds 40
    python -m tests.hostile.flood legit HOST PORT --source 198.18.2.200 --home DIR --tries 20

``attack`` keeps ``count`` connections open from the given source addresses: a third send nothing, a
third trickle one byte of a handshake every second, a third send a complete first handshake message
(the cheapest thing that makes the server answer) and then nothing. Whatever the server closes is
opened again, for ``seconds``. It prints a line once it has made ``count`` connections, and at the
end how many it made in all.

``legit`` does ``tries`` full handshakes plus ``hello`` as the identity in ``--home`` and prints one
JSON line: the seconds each took, or the error.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import select
import socket
import sys
import time

MSG1 = (32).to_bytes(2, "big") + os.urandom(32)  # the length prefix and an ephemeral key (never checked)


def _addresses(spec: str) -> list[str]:
    first, _, last = spec.partition("-")
    base = ipaddress.ip_address(first)
    count = int(last) - int(first.rsplit(".", 1)[1]) + 1 if last else 1
    return [str(base + i) for i in range(count)]


def attack(host: str, port: int, sources: list[str], count: int, seconds: float) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 256)), hard))
    socks: dict[socket.socket, int] = {}  # socket -> bytes of the trickle sent so far
    made = 0
    end = time.monotonic() + seconds
    next_trickle = time.monotonic()
    ready = False
    while time.monotonic() < end:
        while len(socks) < count:
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind((sources[made % len(sources)], 0))
            try:
                sock.connect((host, port))
            except BlockingIOError:
                pass
            except OSError:
                sock.close()
                break
            kind = made % 3
            if kind == 2:
                try:
                    sock.send(MSG1)
                except OSError:
                    pass
            socks[sock] = 0 if kind == 1 else -1
            made += 1
        if not ready and made >= count:
            ready = True
            print(json.dumps({"ready": made}), flush=True)
        readable, _, _ = select.select(list(socks), [], [], 0.05)
        for sock in readable:
            try:
                if sock.recv(65536):
                    continue
            except BlockingIOError:
                continue
            except OSError:
                pass
            del socks[sock]
            sock.close()
        if time.monotonic() >= next_trickle:
            next_trickle += 1.0
            for sock, sent in socks.items():
                if 0 <= sent < len(MSG1) - 1:  # never complete it
                    try:
                        sock.send(MSG1[sent : sent + 1])
                        socks[sock] = sent + 1
                    except OSError:
                        pass
    for sock in socks:
        sock.close()
    return made


def legit(host: str, port: int, source: str, home: str, tries: int) -> list[float | str]:
    os.environ["MESHSERIAL_HOME"] = home
    from meshserial.keys import load_identity
    from meshserial.proto import session as sess
    from meshserial.proto.channel import ControlReceived, PeerIdentified, SecureChannel

    identity = load_identity()
    results: list[float | str] = []
    for _ in range(tries):
        started = time.monotonic()
        channel = SecureChannel(
            initiator=True,
            static_private=identity.noise_private,
            payload=identity.handshake_payload({"v": 1}),
        )
        channel.initiate()
        try:
            with socket.create_connection((host, port), timeout=5, source_address=(source, 0)) as sock:
                sock.sendall(channel.data_to_send())
                answer = None
                while answer is None:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError("closed by the server")
                    for event in channel.receive_data(chunk):
                        if isinstance(event, PeerIdentified):
                            channel.accept_peer()
                            channel.send_control(sess.encode(sess.Hello(port="gps", mode="ro")))
                            sock.sendall(channel.data_to_send())
                        elif isinstance(event, ControlReceived):
                            answer = sess.decode(event.message)
                if not isinstance(answer, sess.Accept):
                    raise ConnectionError(f"refused: {answer}")
                results.append(time.monotonic() - started)
                channel.close()  # end the session properly, as `use` does on exit
                sock.sendall(channel.data_to_send())
        except (OSError, ConnectionError) as exc:
            results.append(f"{type(exc).__name__}: {exc}")
        time.sleep(0.2)  # spread the tries over the flood
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("attack", "legit"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--sources", default="")
    parser.add_argument("--source", default="")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--home", default="")
    parser.add_argument("--tries", type=int, default=20)
    args = parser.parse_args()
    if args.mode == "attack":
        made = attack(args.host, args.port, _addresses(args.sources), args.count, args.seconds)
        print(json.dumps({"connections": made}), flush=True)
    else:
        print(json.dumps(legit(args.host, args.port, args.source, args.home, args.tries)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
