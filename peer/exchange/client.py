"""Fetching one blob from a peer: open a stream, ask, receive, verify.

Every failure leaves as a :class:`~swarmtrain.peer.exchange.errors.FetchError` subclass
that says whose fault it is. Sizes are capped before anything is allocated: the header's
announced size against ``max_size`` before any data frame is read, each frame's length
prefix against what the header still owes before its body is read.

Verification: an update's id *is* the BLAKE2b-256 of its bytes, so updates are always
checked here. A state's id is the state checksum (a hash of the decoded parameters, not
of the bytes on the wire), which only the caller can recompute after decoding; pass
``expected_digest`` when the BLAKE2b-256 of the serialized state is known, otherwise the
bytes come back unverified and the caller must check the checksum (and raise
DigestMismatch itself on a mismatch).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from hivemind.p2p import P2P, P2PDaemonError, PeerID

from swarmtrain.peer.exchange.errors import (
    BadResponse,
    BlobNotFound,
    BlobTooLarge,
    DigestMismatch,
    FetchTimeout,
    LocalP2PError,
    PeerBusy,
    PeerUnavailable,
)
from swarmtrain.peer.exchange.streams import close_quietly, read_frame, write_frame
from swarmtrain.protocol.digest import DIGEST_SIZE, blob_hasher
from swarmtrain.protocol.errors import ProtocolError
from swarmtrain.protocol.framing import (
    ERR_BUSY,
    ERR_NOT_FOUND,
    ERR_UNAVAILABLE,
    FRAME_PREFIX_LEN,
    PROTOCOL_NAME,
    BlobComplete,
    BlobReceiver,
    ChunkReceived,
    HeaderReceived,
    OversizedBlob,
    ReceiverState,
    RemoteError,
    check_digest_hex,
    check_kind,
    encode_request,
)

logger = logging.getLogger(__name__)


# progress(received_bytes, total_bytes): called on the event loop thread after the header
# and after every data frame; keep it quick and thread-safe.
Progress = Callable[[int, int], None]

# Pauses between retries of a peer that answered "busy": doubling, up to the maximum.
BUSY_RETRY_FIRST_S = 0.1
BUSY_RETRY_MAX_S = 1.0


@dataclass(slots=True)
class ClientStats:
    """Counters of a fetching peer; mutated on the event loop thread only."""

    bytes_received: int = 0  # everything read from streams, frame prefixes included
    blobs_fetched: int = 0
    fetches_failed: int = 0


async def fetch_blob(
    p2p: P2P,
    peer_id: str,
    kind: str,
    digest_hex: str,
    *,
    max_size: int,
    timeout: float,
    expected_digest: bytes | None = None,
    progress: Progress | None = None,
    stall_timeout: float | None = None,
    protocol: str = PROTOCOL_NAME,
    stats: ClientStats | None = None,
) -> bytes:
    """The bytes of blob (``kind``, ``digest_hex``) as served by ``peer_id`` (base58).

    ``timeout`` bounds the whole fetch; ``stall_timeout`` (default: no separate bound)
    bounds each single frame, so a peer that stops sending is dropped early even when the
    overall deadline of a large state is long. Raises a FetchError subclass on failure;
    ValueError only for arguments that could never work.
    """
    target = verification_target(kind, digest_hex, expected_digest)
    if max_size < 0 or timeout <= 0:
        raise ValueError(f"max_size must be >= 0 and timeout > 0, got {max_size}, {timeout}")
    try:
        remote = PeerID.from_base58(peer_id)
    except (ValueError, TypeError) as exc:
        raise PeerUnavailable(f"{peer_id!r} is not a base58 peer id: {exc}", peer_id=peer_id) from exc

    fetch = _Fetch(peer_id, kind, digest_hex, stats if stats is not None else ClientStats())
    try:
        async with asyncio.timeout(timeout):
            pause = BUSY_RETRY_FIRST_S
            while True:
                try:
                    data = await fetch.run(p2p, remote, protocol, max_size, target, progress, stall_timeout)
                    break
                except PeerBusy:
                    # Its slots free up as other fetches finish: retry within our deadline
                    # (the deadline's TimeoutError below ends the loop).
                    fetch.phase = "waiting for a busy peer"
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, BUSY_RETRY_MAX_S)
    except TimeoutError as exc:
        fetch.stats.fetches_failed += 1
        raise FetchTimeout(
            f"peer {peer_id} did not deliver {kind} {digest_hex[:16]}… in time while {fetch.phase} "
            f"({fetch.received} bytes in); try another peer or raise the timeout",
            peer_id=peer_id,
        ) from exc
    except BaseException:
        fetch.stats.fetches_failed += 1
        raise
    fetch.stats.blobs_fetched += 1
    return data


def verification_target(kind: str, digest_hex: str, expected_digest: bytes | None) -> bytes | None:
    """The BLAKE2b-256 the bytes must have, or None when the caller verifies them."""
    try:
        check_kind(kind)
        check_digest_hex(digest_hex)
    except ProtocolError as exc:
        raise ValueError(f"cannot request this blob: {exc}") from exc
    if expected_digest is not None:
        if not isinstance(expected_digest, bytes) or len(expected_digest) != DIGEST_SIZE:
            raise ValueError(f"expected_digest must be {DIGEST_SIZE} bytes (BLAKE2b-256)")
        return expected_digest
    if kind == "update":
        digest = bytes.fromhex(digest_hex)
        if len(digest) != DIGEST_SIZE:
            raise ValueError(f"an update id is a BLAKE2b-256 digest ({2 * DIGEST_SIZE} hex characters)")
        return digest
    return None


class _Fetch:
    """One fetch in progress: what phase it is in (for error messages) and its counts."""

    def __init__(self, peer_id: str, kind: str, digest_hex: str, stats: ClientStats) -> None:
        self.peer_id = peer_id
        self.kind = kind
        self.digest_hex = digest_hex
        self.stats = stats
        self.phase = "opening a stream"
        self.received = 0

    async def run(
        self,
        p2p: P2P,
        remote: PeerID,
        protocol: str,
        max_size: int,
        target: bytes | None,
        progress: Progress | None,
        stall_timeout: float | None,
    ) -> bytes:
        peer = self.peer_id
        try:
            _, reader, writer = await p2p.call_binary_stream_handler(remote, protocol)
        except (P2PDaemonError, asyncio.IncompleteReadError) as exc:
            # ControlFailure ("routing: not found", dial and protocol negotiation errors) is
            # a P2PDaemonError.
            raise PeerUnavailable(f"cannot open a stream to peer {peer}: {exc!r}", peer_id=peer) from exc
        except OSError as exc:
            raise LocalP2PError(
                f"cannot reach the local p2p daemon ({exc}); is the DHT still running?", peer_id=peer
            ) from exc
        try:
            return await self._converse(reader, writer, max_size, target, progress, stall_timeout)
        except asyncio.IncompleteReadError as exc:
            raise PeerUnavailable(
                f"peer {peer} closed the stream while {self.phase} ({self.received} bytes in); "
                "it died, restarted or failed to serve; try another peer",
                peer_id=peer,
            ) from exc
        except ConnectionError as exc:
            raise PeerUnavailable(f"stream to peer {peer} broke while {self.phase}: {exc}", peer_id=peer) from exc
        except OversizedBlob as exc:
            raise BlobTooLarge(str(exc), peer_id=peer, size=exc.size, max_size=exc.cap) from exc
        except ProtocolError as exc:
            raise BadResponse(f"peer {peer} broke the blob protocol while {self.phase}: {exc}", peer_id=peer) from exc
        finally:
            close_quietly(writer)

    async def _converse(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_size: int,
        target: bytes | None,
        progress: Progress | None,
        stall_timeout: float | None,
    ) -> bytes:
        self.phase = "sending the request"
        await write_frame(writer, encode_request(self.kind, self.digest_hex), stall_timeout)
        self.phase = "waiting for the header"
        receiver = BlobReceiver(max_size)
        # Hash frame by frame as they arrive: the cost overlaps with the transfer instead
        # of blocking the loop for one long pass at the end.
        hasher = blob_hasher() if target is not None else None
        while True:
            frame = await read_frame(reader, receiver.next_frame_cap(), stall_timeout)
            self.stats.bytes_received += FRAME_PREFIX_LEN + len(frame)
            is_data = receiver.state is ReceiverState.RECEIVING
            event = receiver.receive_frame(frame)
            if isinstance(event, RemoteError):
                raise self._remote_error(event)
            if isinstance(event, HeaderReceived):
                self.phase = f"receiving {event.size} bytes"
                if progress is not None:
                    progress(0, event.size)
                continue
            if hasher is not None and is_data:  # an empty blob completes at its header
                hasher.update(frame)
            self.received = receiver.received
            if isinstance(event, ChunkReceived):
                if progress is not None:
                    progress(event.received, event.size)
                continue
            assert isinstance(event, BlobComplete)
            if progress is not None:
                progress(len(event.data), len(event.data))
            if hasher is not None and hasher.digest() != target:
                raise DigestMismatch(
                    f"peer {self.peer_id} served {len(event.data)} bytes for {self.kind} "
                    f"{self.digest_hex[:16]}… that hash to {hasher.hexdigest()[:16]}…; reject them",
                    peer_id=self.peer_id,
                )
            return event.data

    def _remote_error(self, event: RemoteError) -> Exception:
        peer = self.peer_id
        what = f"{self.kind} {self.digest_hex[:16]}…"
        if event.code == ERR_NOT_FOUND:
            return BlobNotFound(f"peer {peer} does not hold {what}: {event.message}", peer_id=peer)
        if event.code == ERR_BUSY:
            return PeerBusy(f"peer {peer} is busy serving others: {event.message}", peer_id=peer)
        if event.code == ERR_UNAVAILABLE:
            return PeerUnavailable(f"peer {peer} cannot serve {what} now ({event.code}): {event.message}", peer_id=peer)
        return BadResponse(f"peer {peer} refused the request for {what} ({event.code}): {event.message}", peer_id=peer)
