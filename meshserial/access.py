"""The server's access policy, backed by the trust files (``authorized_clients``, invites).

The file is re-read when it changes on disk, so ``meshserial authorize`` / ``revoke`` and hand edits
take effect on a running server without a restart; :meth:`FileAuthorizer.changed` lets the server
re-check live sessions. A change can only ever narrow access by mistake, never widen it:

* a line that does not parse is skipped with one warning naming the file and line (its client gets
  nothing from it); the rest of the file applies at once;
* a file that cannot be trusted any more (made writable by others, handed to another owner, unreadable)
  authorizes nobody until it is fixed, with one error saying how. The server keeps running.

At start-up the same problems are reported the same way, except that an untrustworthy file stops the
server with that error: its operator is there to fix it.
"""

from __future__ import annotations

import logging
import os

from meshserial.errors import ConfigError, Refused
from meshserial.invites import redeem_invite
from meshserial.keys import format_id
from meshserial.trust import AuthorizedClients, Rights

log = logging.getLogger(__name__)

_Stamp = tuple[int, ...]


class FileAuthorizer:
    def __init__(self, clients: AuthorizedClients | None = None) -> None:
        self._path = (clients or AuthorizedClients()).path
        self._clients = clients or AuthorizedClients(self._path)
        self._stamp: _Stamp | None = self._file_stamp()
        self._clients.load()  # an untrustworthy file stops the server here
        self._report(self._clients)

    def _file_stamp(self) -> _Stamp | None:
        try:
            st = os.stat(self._path)
            directory = os.stat(self._path.parent)
        except FileNotFoundError:
            return None
        except OSError:
            return (-1,)  # unreadable: different from any real stamp, so it is looked at again
        # ctime changes with chmod and chown too; the directory's mode and owner matter as much.
        return (
            st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode, st.st_uid,
            directory.st_mode, directory.st_uid,
        )  # fmt: skip

    def changed(self) -> bool:
        """Re-read the file if it changed since the last look; return whether it did."""
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        fresh = AuthorizedClients(self._path)
        try:
            fresh.load()
        except ConfigError as exc:
            log.error("%s; nobody is authorized until it is fixed", exc)
            fresh = AuthorizedClients(self._path)  # empty: deny everyone
        else:
            self._report(fresh)
        self._clients = fresh
        return True

    @staticmethod
    def _report(clients: AuthorizedClients) -> None:
        for problem in clients.problems:
            log.warning("%s; line ignored", problem)

    def rights(self, client_id: bytes, port: str, now: float | None = None) -> Rights | None:
        self.changed()
        return self._clients.rights(client_id, port, now)

    def expires_at(self, client_id: bytes) -> float | None:
        """When ``client_id``'s entry expires (Unix time), if it does."""
        entry = self._clients.find(client_id)
        return None if entry is None else entry.expires_at

    def label(self, client_id: bytes) -> str:
        if len(client_id) != 32:
            return "unknown client"
        entry = self._clients.find(client_id)
        short = format_id(client_id)[:14] + "…"
        return f"{entry.name} ({short})" if entry is not None and entry.name else short

    def redeem(
        self, invite: str, proof: str, handshake_hash: bytes, client_id: bytes, name: str | None = None
    ) -> str:
        """Check an invite proof and authorize ``client_id``; :class:`Refused` (with the reason in its
        cause, for our log only) when it fails."""
        try:
            invite_id, proof_bytes = bytes.fromhex(invite), bytes.fromhex(proof)
        except ValueError:
            raise Refused("malformed invite") from None
        try:
            granted = redeem_invite(
                invite_id, proof_bytes, handshake_hash, client_id, client_name=name, clients=self._clients
            )
        except Refused as exc:
            # The peer learns only that it failed; the reason stays in our log.
            raise Refused("invite not accepted (unknown, used, expired, or wrong code)") from exc
        self.changed()
        log.info("paired %s through an invite (%s)", format_id(client_id), granted)
        return granted
