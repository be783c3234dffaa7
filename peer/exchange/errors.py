"""Typed failures of fetching a blob from a peer.

Every failure of :func:`swarmtrain.peer.exchange.client.fetch_blob` is one of these, so
the round engine can tell "this peer is gone" (try another holder), "this peer lied"
(reject and remember), and "we asked for something too big" apart with plain ``except``
clauses. Each error carries the peer it concerns.
"""

from __future__ import annotations


class FetchError(Exception):
    """Base class: fetching a blob from ``peer_id`` failed."""

    def __init__(self, message: str, *, peer_id: str = "") -> None:
        super().__init__(message)
        self.peer_id = peer_id


class PeerUnavailable(FetchError):
    """The peer could not be reached or dropped the stream (unknown, dead, overloaded).

    Not evidence of misbehaviour: try another peer that holds the blob, or retry later.
    """


class PeerBusy(PeerUnavailable):
    """The peer answered "busy": all its serving slots were taken. The fetch retries it
    after a pause while its deadline allows."""


class LocalP2PError(FetchError):
    """Our own p2p daemon could not be reached (the DHT was shut down or crashed).

    Says nothing about the remote peer; restart the exchange rather than trying others.
    """


class BlobNotFound(FetchError):
    """The peer does not hold (or no longer holds) a blob with that kind and id."""


class DigestMismatch(FetchError):
    """The bytes received do not hash to the requested digest: the peer served other bytes.

    Evidence against the serving peer; do not retry it for this blob.
    """


class BlobTooLarge(FetchError):
    """The peer announced more bytes than ``max_size``; nothing beyond the header was read.

    ``size`` is what the peer announced. Raise ``max_size`` if a blob that large is
    legitimate (a model state), otherwise treat the peer as misbehaving.
    """

    def __init__(self, message: str, *, peer_id: str = "", size: int = 0, max_size: int = 0) -> None:
        super().__init__(message, peer_id=peer_id)
        self.size = size
        self.max_size = max_size


class FetchTimeout(FetchError):
    """The fetch did not finish within its deadline, or the peer stalled between frames."""


class BadResponse(FetchError):
    """The peer broke the blob protocol (malformed or inconsistent frames) or refused the
    request with an error other than "not found"."""
