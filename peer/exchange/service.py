"""Moving update and state bytes between peers, for synchronous callers.

Peers publish small commitments (digest, size) in the DHT and serve the bytes themselves
over p2pd streams; this is the serving and fetching side. :class:`Exchange` owns an event
loop thread, its own P2P handle on the DHT's p2pd daemon, a :class:`BlobStore` and a
:class:`BlobServer`, and wraps :func:`fetch_blob` for the synchronous round engine::

    exchange = Exchange.start(dht)
    exchange.serve("update", digest.hex(), payload)
    data = exchange.fetch(other_peer_id, "update", digest_hex, max_size=64 << 20, timeout=30)
    exchange.close()

Async code can use BlobServer and fetch_blob directly on any P2P handle
(``await dht.replicate_p2p()``). The wire protocol is in swarmtrain.protocol.framing.

The exchange takes its own P2P handle (``P2P.replicate`` on the daemon's address) rather
than ``dht.replicate_p2p()``: that one is cached on the DHT object and bound to the loop
that first asked for it, which would tie every other user of the DHT to this thread.
"""

from __future__ import annotations

import concurrent.futures
import logging
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from hivemind import DHT
from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P, P2PDaemonError
from hivemind.utils.multiaddr import Multiaddr

from swarmtrain.peer.exchange.client import ClientStats, Progress, fetch_blob, verification_target
from swarmtrain.peer.exchange.errors import (
    BadResponse,
    BlobNotFound,
    BlobTooLarge,
    DigestMismatch,
    FetchError,
    FetchTimeout,
    LocalP2PError,
    PeerBusy,
    PeerUnavailable,
)
from swarmtrain.peer.exchange.loop import LoopThread
from swarmtrain.peer.exchange.server import BlobProvider, BlobServer, BlobStore, ProviderFailed
from swarmtrain.protocol.digest import blob_digest
from swarmtrain.protocol.framing import DEFAULT_CHUNK, PROTOCOL_NAME, check_chunk

__all__ = [
    "BadResponse", "BlobNotFound", "BlobProvider", "BlobServer", "BlobStore", "BlobTooLarge",
    "DigestMismatch", "Exchange", "ExchangeConfig", "ExchangeStats", "FetchError", "FetchTimeout",
    "LocalP2PError", "PROTOCOL_NAME", "PeerBusy", "PeerUnavailable", "ProviderFailed", "blob_digest", "fetch_blob",
]

logger = logging.getLogger(__name__)

# Extra wait beyond a fetch's own deadline before the synchronous wrapper gives up on it:
# fetch_blob enforces the deadline itself; this only guards against a wedged loop.
_SYNC_GRACE_S = 5.0


@dataclass(frozen=True, kw_only=True)
class ExchangeConfig:
    """Settings of one peer's exchange; none of them must agree across the swarm."""

    protocol: str = PROTOCOL_NAME
    chunk_size: int = DEFAULT_CHUNK  # data frame size when serving (64 KiB .. 4 MiB)
    max_store_bytes: int = 2 << 30  # bytes held for serving; oldest blobs evicted first
    max_store_entries: int = 4096
    request_timeout: float = 10.0  # a client must send its request within this
    send_timeout: float = 30.0  # a client must accept each frame within this
    max_concurrent_streams: int = 32  # more get a "busy" error frame
    max_streams_per_peer: int = 4     # a peer's further streams are closed unread
    allowed_peers: frozenset[str] | None = None  # a private swarm's members; None: serve anyone
    # uvloop runs hivemind's P2P in a thread without trouble. Measured on loopback (64 MiB,
    # 2 shared cores) it is no faster than asyncio, 200-300 MiB/s both: the p2pd hops
    # bound throughput, not the loop. It is the default because the design names uvloop as the event loop;
    # without the package the exchange logs a warning and runs on asyncio.
    use_uvloop: bool = True
    start_timeout: float = 30.0

    def __post_init__(self) -> None:
        check_chunk(self.chunk_size)
        if self.max_store_bytes <= 0 or self.max_store_entries <= 0:
            raise ValueError("exchange.max_store_bytes and max_store_entries must be > 0")
        if min(self.request_timeout, self.send_timeout, self.start_timeout) <= 0:
            raise ValueError("exchange timeouts must be > 0 seconds")
        if self.max_concurrent_streams < 1:
            raise ValueError(f"exchange.max_concurrent_streams must be >= 1, got {self.max_concurrent_streams}")
        if self.max_streams_per_peer < 1:
            raise ValueError(f"exchange.max_streams_per_peer must be >= 1, got {self.max_streams_per_peer}")


@dataclass(frozen=True, slots=True)
class ExchangeStats:
    """A snapshot of one peer's byte counters (frame prefixes included)."""

    bytes_sent: int
    bytes_received: int
    blobs_served: int
    blobs_fetched: int
    requests_refused: int
    fetches_failed: int
    held_blobs: int
    held_bytes: int


async def _daemon_listen_maddr(_dht: DHT, node: DHTNode) -> Multiaddr:
    # Runs inside the DHT's child process (hence module level: it is pickled by name).
    return node.p2p.daemon_listen_maddr


class Exchange:
    """Serve and fetch blobs from synchronous code. Build with :meth:`start`."""

    def __init__(self, *, loop: LoopThread, p2p: P2P, server: BlobServer, config: ExchangeConfig) -> None:
        self._loop = loop
        self._p2p = p2p
        self._server = server
        self._client_stats = ClientStats()
        self.config = config
        self.peer_id: str = p2p.peer_id.to_base58()
        self._closed = False

    @classmethod
    def start(cls, dht: DHT, config: ExchangeConfig | None = None) -> Exchange:
        """Attach to ``dht``'s p2pd and start serving; ``close()`` when done."""
        config = config if config is not None else ExchangeConfig()
        maddr = dht.run_coroutine(_daemon_listen_maddr)
        loop = LoopThread(use_uvloop=config.use_uvloop)
        store = BlobStore(max_bytes=config.max_store_bytes, max_entries=config.max_store_entries)
        server = BlobServer(
            store,
            protocol=config.protocol,
            chunk_size=config.chunk_size,
            request_timeout=config.request_timeout,
            send_timeout=config.send_timeout,
            max_concurrent_streams=config.max_concurrent_streams,
            max_streams_per_peer=config.max_streams_per_peer,
            allowed_peers=config.allowed_peers,
        )
        try:
            p2p = loop.run(P2P.replicate(maddr), config.start_timeout)
            loop.run(server.start(p2p), config.start_timeout)
        except BaseException:
            loop.stop()
            raise
        logger.debug("exchange of %s serving %s on %s", p2p.peer_id, config.protocol, loop.loop_name)
        return cls(loop=loop, p2p=p2p, server=server, config=config)

    # --- serving ---------------------------------------------------------------------

    @property
    def store(self) -> BlobStore:
        return self._server.store

    def serve(self, kind: str, digest_hex: str, data: bytes) -> None:
        """Offer ``data`` as blob (kind, digest_hex) to every peer until evicted or removed."""
        self.store.put(kind, digest_hex, data)

    def serve_provider(self, kind: str, digest_hex: str, provider: BlobProvider, *, pinned: bool = False) -> None:
        """Offer a blob produced by ``provider()`` on each request (for large states);
        ``pinned``: for this peer's whole life, never evicted (base weights)."""
        self.store.put_provider(kind, digest_hex, provider, pinned=pinned)

    def unserve(self, kind: str, digest_hex: str) -> bool:
        """Stop offering a blob; True if it was offered."""
        return self.store.remove(kind, digest_hex)

    # --- fetching --------------------------------------------------------------------

    def fetch(
        self,
        peer_id: str,
        kind: str,
        digest_hex: str,
        *,
        max_size: int,
        timeout: float,
        expected_digest: bytes | None = None,
        progress: Progress | None = None,
        stall_timeout: float | None = None,
    ) -> bytes:
        """Blocking :func:`fetch_blob` (same arguments, same errors) on the exchange's loop.

        Asking our own peer id reads the local store instead of dialling ourselves (which
        p2pd refuses), with the same verification.
        """
        if peer_id == self.peer_id:
            return self._fetch_local(kind, digest_hex, max_size=max_size, expected_digest=expected_digest)
        future = self.fetch_future(
            peer_id, kind, digest_hex, max_size=max_size, timeout=timeout,
            expected_digest=expected_digest, progress=progress, stall_timeout=stall_timeout,
        )
        try:
            return future.result(timeout + _SYNC_GRACE_S)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise FetchTimeout(f"fetch from {peer_id} did not return; the exchange loop may be wedged",
                               peer_id=peer_id) from exc

    def fetch_future(
        self,
        peer_id: str,
        kind: str,
        digest_hex: str,
        *,
        max_size: int,
        timeout: float,
        expected_digest: bytes | None = None,
        progress: Progress | None = None,
        stall_timeout: float | None = None,
    ) -> concurrent.futures.Future[bytes]:
        """Start a fetch and return at once, so several downloads overlap each other and
        the caller's own work. ``future.result()`` returns the bytes or raises FetchError."""
        return self._loop.submit(fetch_blob(
            self._p2p, peer_id, kind, digest_hex, max_size=max_size, timeout=timeout,
            expected_digest=expected_digest, progress=progress, stall_timeout=stall_timeout,
            protocol=self.config.protocol, stats=self._client_stats,
        ))

    def _fetch_local(self, kind: str, digest_hex: str, *, max_size: int, expected_digest: bytes | None) -> bytes:
        target = verification_target(kind, digest_hex, expected_digest)
        entry = self.store.get(kind, digest_hex)
        if entry is None:
            raise BlobNotFound(f"this peer does not hold {kind} {digest_hex[:16]}…", peer_id=self.peer_id)
        if entry.data is not None:
            data = entry.data
        else:
            assert entry.provider is not None
            data = bytes(entry.provider())
        if len(data) > max_size:
            raise BlobTooLarge(f"local {kind} blob of {len(data)} bytes exceeds max_size {max_size}",
                               peer_id=self.peer_id, size=len(data), max_size=max_size)
        if target is not None and blob_digest(data) != target:
            raise DigestMismatch(f"the local {kind} blob {digest_hex[:16]}… does not match its digest",
                                 peer_id=self.peer_id)
        return data

    # --- plumbing --------------------------------------------------------------------

    @property
    def p2p(self) -> P2P:
        """The exchange's P2P handle; use it only from coroutines passed to :meth:`submit`."""
        return self._p2p

    @property
    def loop_name(self) -> str:
        """Which event loop implementation runs the exchange ("uvloop" or "asyncio")."""
        return self._loop.loop_name

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        """Run a coroutine on the exchange's loop (e.g. one using :attr:`p2p`)."""
        return self._loop.submit(coro)

    def stats(self) -> ExchangeStats:
        server, client = self._server.stats, self._client_stats
        return ExchangeStats(
            bytes_sent=server.bytes_sent,
            bytes_received=client.bytes_received,
            blobs_served=server.blobs_served,
            blobs_fetched=client.blobs_fetched,
            requests_refused=server.requests_refused,
            fetches_failed=client.fetches_failed,
            held_blobs=len(self.store),
            held_bytes=self.store.held_bytes,
        )

    def close(self) -> None:
        """Stop serving, release the P2P handle and the loop thread. Idempotent.

        The DHT (and its p2pd) stays up: it belongs to the caller.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._server.stop(), timeout=5.0)
        except (P2PDaemonError, OSError, concurrent.futures.TimeoutError) as exc:
            # Typically the DHT was shut down first; its daemon took the handler with it.
            logger.debug("could not unregister the blob handler: %r", exc)
        try:
            self._loop.run(self._p2p.shutdown(), timeout=5.0)
        finally:
            self._loop.stop()

    def __enter__(self) -> Exchange:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

