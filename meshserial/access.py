"""The server's access policy, backed by the trust files (``authorized_clients``, invites).

The file is re-read when it changes on disk, so ``meshserial authorize`` / ``revoke`` take effect on a
running server without a restart; :meth:`FileAuthorizer.changed` lets the server re-check live sessions.
"""

from __future__ import annotations

import logging
import os

from meshserial.errors import Refused
from meshserial.invites import redeem_invite
from meshserial.keys import format_id
from meshserial.trust import AuthorizedClients

log = logging.getLogger(__name__)


class FileAuthorizer:
    def __init__(self, clients: AuthorizedClients | None = None) -> None:
        self._clients = clients or AuthorizedClients()
        self._stamp: tuple[int, int, int] | None = None
        self.changed()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._clients.path)
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        """Re-read the file if it changed since the last look; return whether it did."""
        stamp = self._file_stamp()
        if stamp == self._stamp and self._stamp is not None:
            return False
        first = self._stamp is None and stamp is None
        self._stamp = stamp
        self._clients.load()
        return not first

    def rights(self, client_id: bytes, port: str) -> str | None:
        self.changed()
        return self._clients.rights(client_id, port)

    def label(self, client_id: bytes) -> str:
        if len(client_id) != 32:
            return "unknown client"
        entry = self._clients.find(client_id)
        short = format_id(client_id)[:14] + "…"
        return f"{entry.name} ({short})" if entry is not None and entry.name else short

    def redeem(self, invite: str, proof: str, handshake_hash: bytes, client_id: bytes) -> str:
        try:
            invite_id, proof_bytes = bytes.fromhex(invite), bytes.fromhex(proof)
        except ValueError:
            raise Refused("malformed invite") from None
        try:
            granted = redeem_invite(
                invite_id, proof_bytes, handshake_hash, client_id, client_name=None, clients=self._clients
            )
        except Refused as exc:
            log.warning("invite redemption by %s refused: %s", format_id(client_id)[:14] + "…", exc)
            # The peer learns only that it failed; the reason stays in our log.
            raise Refused("invite not accepted (unknown, used, expired, or wrong code)") from exc
        self.changed()
        log.info("paired %s through an invite (%s)", format_id(client_id), granted)
        return granted
