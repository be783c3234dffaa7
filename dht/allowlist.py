"""Private swarms: the allow-list file of ``--allow-peers FILE``.

One peer id a line; blank lines and ``#`` comments are ignored. A peer (or bootstrap
node) given the list refuses every record of the swarm's keys owned by another
identity (validator.py) and serves blobs to nobody else (the exchange server), so a
stranger cannot commit, vote, publish a result or a genesis, or even download an update.
Every member should use the same file: the list is each node's own policy, not a swarm
setting, and members with different lists would read different records.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["MAX_ALLOWED_PEERS", "AllowListError", "load_allowed_peers", "parse_allowed_peers"]

# The list travels to the DHT process inside the pickled validator on every window move,
# and pickled DHT arguments beyond ~16 KiB crash that process; 200 ids are ~9.5 KB.
MAX_ALLOWED_PEERS = 200

# The same alphabet and lengths as the records' peer ids (schemas.PeerIdStr).
_PEER_ID = re.compile(r"[1-9A-HJ-NP-Za-km-z]{32,64}")


class AllowListError(ValueError):
    """The allow-list file cannot be read or has a line that is not a peer id."""


def parse_allowed_peers(text: str, *, source: str = "the allow-list") -> frozenset[str]:
    """The peer ids listed in ``text``; raises :class:`AllowListError` naming the line."""
    peers: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not _PEER_ID.fullmatch(entry):
            raise AllowListError(f"{source}, line {number}: {entry!r:.80} is not a peer id "
                                 "(base58, like the 'peer Qm...' line a peer prints at start)")
        peers.add(entry)
    if not peers:
        raise AllowListError(f"{source} lists no peer ids: add one a line (every member's, yours included)")
    if len(peers) > MAX_ALLOWED_PEERS:
        raise AllowListError(f"{source} lists {len(peers)} peer ids; at most {MAX_ALLOWED_PEERS} are supported")
    return frozenset(peers)


def load_allowed_peers(path: Path) -> frozenset[str]:
    """The peer ids in the file at ``path`` (see :func:`parse_allowed_peers`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise AllowListError(f"cannot read the allow-list {path}: {error}") from error
    return parse_allowed_peers(text, source=str(path))
