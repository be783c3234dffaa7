"""Serving blobs (encoded updates, model states) to other peers over p2pd streams.

:class:`BlobStore` is the bounded in-memory table of what this peer offers;
:class:`BlobServer` answers blob protocol requests (swarmtrain.protocol.framing) from it.
The server never lets an exception escape its stream handler: hivemind would turn it
into a bare IncompleteReadError on the caller's side (docs/hivemind.md), so every
refusal is an explicit error frame the caller can act on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from hivemind.p2p import P2P
from hivemind.p2p.p2p_daemon_bindings.datastructures import StreamInfo

from swarmtrain.peer.exchange.streams import close_quietly, read_frame, write_frame
from swarmtrain.protocol.errors import ProtocolError
from swarmtrain.protocol.framing import (
    DEFAULT_CHUNK,
    ERR_BAD_REQUEST,
    ERR_BUSY,
    ERR_INTERNAL,
    ERR_NOT_FOUND,
    ERR_UNAVAILABLE,
    MAX_REQUEST_FRAME,
    PROTOCOL_NAME,
    BlobRequest,
    check_chunk,
    check_digest_hex,
    check_kind,
    decode_request,
    encode_error,
    encode_header,
    iter_chunks,
)

logger = logging.getLogger(__name__)

# Produces a blob's bytes on demand (e.g. serializes the current model state), so a
# state of hundreds of MB is not kept as a second copy just in case someone asks.
BlobProvider = Callable[[], "bytes | bytearray | memoryview"]
BlobKey = tuple[str, str]  # (kind, digest hex)


class ProviderFailed(RuntimeError):
    """A blob provider raised or returned something that is not bytes."""


class BlobNotReady(Exception):
    """Raised by a provider whose blob exists but may not be served yet (an update before
    its round's commit deadline). The client is told "busy" and retries within its own
    deadline, as it does for a server with no free slot."""


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """One offered blob: its bytes, or the provider that produces them."""

    data: bytes | None
    provider: BlobProvider | None
    pinned: bool = False  # offered for the peer's lifetime: never evicted

    @property
    def held_bytes(self) -> int:
        return len(self.data) if self.data is not None else 0


class BlobStore:
    """Blobs this peer serves, keyed by (kind, digest hex), oldest evicted first.

    Bounded by total bytes held and by entry count. Provider entries hold no bytes (they
    count against the entry bound only), so the byte bound evicts only entries that hold
    bytes. Pinned entries (a peer's base weights, offered for its whole life) are never
    evicted and count against neither bound: a long swarm's updates used to push them
    out, and ``--fetch-base`` joiners then found no holder. Thread-safe: the round engine adds blobs from
    its thread while the event loop thread serves them.
    """

    def __init__(self, *, max_bytes: int, max_entries: int) -> None:
        if max_bytes <= 0 or max_entries <= 0:
            raise ValueError(f"max_bytes and max_entries must be > 0, got {max_bytes}, {max_entries}")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[BlobKey, StoredBlob] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()

    def put(self, kind: str, digest_hex: str, data: bytes) -> None:
        """Offer ``data`` under (kind, digest_hex). The digest is not checked here: hashing
        is the fetcher's job, and a peer that serves wrong bytes is caught there."""
        if not isinstance(data, bytes):
            raise TypeError(f"blob data must be bytes, got {type(data).__name__}")
        if len(data) > self.max_bytes:
            raise ValueError(
                f"blob of {len(data)} bytes exceeds the store bound of {self.max_bytes} bytes; "
                "raise max_store_bytes or serve it through a provider"
            )
        self._insert((check_kind(kind), check_digest_hex(digest_hex)), StoredBlob(data=data, provider=None))

    def put_provider(self, kind: str, digest_hex: str, provider: BlobProvider, *, pinned: bool = False) -> None:
        """Offer a blob whose bytes ``provider()`` produces on each request (in a worker
        thread). Cache inside the provider if producing them is expensive. ``pinned``:
        never evicted (only :meth:`remove` withdraws it)."""
        if not callable(provider):
            raise TypeError(f"provider must be callable, got {type(provider).__name__}")
        self._insert((check_kind(kind), check_digest_hex(digest_hex)),
                     StoredBlob(data=None, provider=provider, pinned=pinned))

    def remove(self, kind: str, digest_hex: str) -> bool:
        """Stop offering a blob; True if it was there."""
        with self._lock:
            entry = self._entries.pop((kind, digest_hex), None)
            if entry is not None:
                self._held -= entry.held_bytes
            return entry is not None

    def get(self, kind: str, digest_hex: str) -> StoredBlob | None:
        """The offered blob, or None when it is not (or no longer) here."""
        with self._lock:
            return self._entries.get((kind, digest_hex))

    def __contains__(self, key: BlobKey) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._held

    def _insert(self, key: BlobKey, entry: StoredBlob) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._held -= old.held_bytes
            self._entries[key] = entry  # re-offering moves a blob to the young end
            self._held += entry.held_bytes
            if self._held > self.max_bytes:
                self._evict(lambda e: e.held_bytes > 0, lambda: self._held > self.max_bytes)
            pinned = sum(1 for e in self._entries.values() if e.pinned)
            if len(self._entries) - pinned > self.max_entries:
                self._evict(lambda e: not e.pinned, lambda: len(self._entries) - pinned > self.max_entries)

    def _evict(self, evictable: Callable[[StoredBlob], bool], over: Callable[[], bool]) -> None:
        """Drop the oldest ``evictable`` entries while ``over()`` (lock held)."""
        for key in [k for k, e in self._entries.items() if evictable(e)]:
            if not over():
                return
            evicted = self._entries.pop(key)
            self._held -= evicted.held_bytes
            logger.debug("evicted blob %s/%s (%d bytes)", *key, evicted.held_bytes)


@dataclass(slots=True)
class _ResponseState:
    header_sent: bool = False


@dataclass(slots=True)
class ServerStats:
    """Counters of one server; mutated on the event loop thread only."""

    bytes_sent: int = 0  # everything written to streams, frame prefixes included
    blobs_served: int = 0  # responses whose last data frame was written
    requests_refused: int = 0  # error frames sent (not found, bad request, busy, ...)
    streams_dropped: int = 0  # client went away or stopped reading mid-response
    streams_shed: int = 0  # closed unread: the peer (or everyone) had too many streams open
    streams_unlisted: int = 0  # closed unread: a private swarm's server and a peer off its list


class BlobServer:
    """Answers blob requests on ``protocol`` of a hivemind P2P from a :class:`BlobStore`."""

    def __init__(
        self,
        store: BlobStore,
        *,
        protocol: str = PROTOCOL_NAME,
        chunk_size: int = DEFAULT_CHUNK,
        request_timeout: float = 10.0,
        send_timeout: float = 30.0,
        max_concurrent_streams: int = 32,
        max_streams_per_peer: int = 4,
        max_open_streams: int = 256,
        allowed_peers: frozenset[str] | None = None,
    ) -> None:
        self.store = store
        self.protocol = protocol
        self.chunk_size = check_chunk(chunk_size)
        self.request_timeout = request_timeout
        self.send_timeout = send_timeout
        self.max_concurrent_streams = max_concurrent_streams
        self.max_streams_per_peer = max_streams_per_peer
        self.max_open_streams = max_open_streams
        self.allowed_peers = allowed_peers  # a private swarm serves its members only
        self.stats = ServerStats()
        self._active = 0
        self._open = 0
        self._open_by_peer: dict[str, int] = {}
        self._p2p: P2P | None = None

    @property
    def active_streams(self) -> int:
        """Streams being served right now (tests wait on it instead of sleeping)."""
        return self._active

    async def start(self, p2p: P2P) -> None:
        """Register the stream handler; call on the loop that runs ``p2p``."""
        if self._p2p is not None:
            raise RuntimeError("BlobServer already started; stop() it before starting it again")
        await p2p.add_binary_stream_handler(self.protocol, self._handle)
        self._p2p = p2p

    async def stop(self) -> None:
        """Unregister the handler so p2pd refuses new streams for this protocol."""
        if self._p2p is not None:
            p2p, self._p2p = self._p2p, None
            if p2p.is_alive:
                await p2p.remove_binary_stream_handler(self.protocol)

    async def _handle(self, info: StreamInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Limits, cheapest first, so that idle streams cost their opener and nobody else:

        - in a private swarm, a peer off ``allowed_peers`` has every stream closed unread;
        - a peer with ``max_streams_per_peer`` streams open (or a server with
          ``max_open_streams``) has further streams closed unread: honest peers fetch one
          or two blobs from a peer at a time, and an idle flood must not hold tasks;
        - the request is read before a serving slot is taken, so a stream that never
          sends one (it times out after ``request_timeout``) holds no slot;
        - with ``max_concurrent_streams`` responses in flight, a "busy" error frame, which
          the client retries after a pause.
        """
        peer = info.peer_id.to_base58()
        if self.allowed_peers is not None and peer not in self.allowed_peers:
            self.stats.streams_unlisted += 1
            close_quietly(writer)
            return
        if self._open_by_peer.get(peer, 0) >= self.max_streams_per_peer or self._open >= self.max_open_streams:
            self.stats.streams_shed += 1
            close_quietly(writer)
            return
        self._open += 1
        self._open_by_peer[peer] = self._open_by_peer.get(peer, 0) + 1
        response = _ResponseState()
        try:
            request = await self._read_request(reader, writer)
            if request is None:
                return
            if self._active >= self.max_concurrent_streams:
                await self._refuse(writer, ERR_BUSY, f"{self._active} streams in flight; retry later")
                return
            self._active += 1
            try:
                await self._serve_one(peer, request, writer, response)
            finally:
                self._active -= 1
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            # The client vanished or stopped reading: nobody is left to tell.
            self.stats.streams_dropped += 1
            logger.debug("stream from %s dropped: %r", peer, exc)
        except Exception:
            # A bug of ours. Log it with its traceback and, if the response has not begun,
            # say so on the stream: an escaping exception would reach the caller as a bare
            # end of stream. After the header, an error frame would read as data; closing
            # the stream early is the only honest signal left.
            logger.exception("blob handler failed on a stream from %s", peer)
            if not response.header_sent:
                try:
                    await self._refuse(writer, ERR_INTERNAL, "the serving peer hit an internal error")
                except (ConnectionError, TimeoutError, RuntimeError) as exc:
                    logger.debug("could not report the internal error to %s: %r", peer, exc)
        finally:
            self._open -= 1
            left = self._open_by_peer.pop(peer) - 1
            if left:
                self._open_by_peer[peer] = left
            close_quietly(writer)

    async def _read_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> BlobRequest | None:
        """The request, or None after refusing a malformed or missing one."""
        try:
            return decode_request(await read_frame(reader, MAX_REQUEST_FRAME, self.request_timeout))
        except ProtocolError as exc:
            await self._refuse(writer, ERR_BAD_REQUEST, str(exc))
        except TimeoutError:
            await self._refuse(writer, ERR_BAD_REQUEST, f"no request within {self.request_timeout} s")
        return None

    async def _serve_one(
        self, peer: str, request: BlobRequest, writer: asyncio.StreamWriter, response: _ResponseState
    ) -> None:
        entry = self.store.get(request.kind, request.digest_hex)
        if entry is None:
            await self._refuse(writer, ERR_NOT_FOUND, f"no {request.kind} blob {request.digest_hex} here")
            return
        if entry.data is not None:
            data: bytes | bytearray | memoryview = entry.data
        else:
            try:
                data = await self._run_provider(entry)
            except BlobNotReady as exc:
                await self._refuse(writer, ERR_BUSY, f"{request.kind} {request.digest_hex[:16]} is not served yet: {exc}")
                return
            except ProviderFailed as exc:
                logger.warning("provider for %s %s failed: %s", request.kind, request.digest_hex, exc)
                await self._refuse(writer, ERR_UNAVAILABLE, f"could not produce the {request.kind} blob now")
                return

        response.header_sent = True
        self.stats.bytes_sent += await write_frame(writer, encode_header(len(data), self.chunk_size), self.send_timeout)
        for body in iter_chunks(data, self.chunk_size):
            self.stats.bytes_sent += await write_frame(writer, body, self.send_timeout)
        self.stats.blobs_served += 1
        logger.debug("served %s %s (%d bytes) to %s", request.kind, request.digest_hex, len(data), peer)

    @staticmethod
    async def _run_provider(entry: StoredBlob) -> bytes | bytearray | memoryview:
        assert entry.provider is not None
        loop = asyncio.get_running_loop()
        try:
            # A worker thread: producing a large state must not stall other streams.
            data = await loop.run_in_executor(None, entry.provider)
        except BlobNotReady:
            raise
        except Exception as exc:  # the provider is user code; its failure is reported, not hidden
            raise ProviderFailed(f"provider raised {exc!r}") from exc
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ProviderFailed(f"provider returned {type(data).__name__}, expected bytes")
        view = memoryview(data)
        if not view.c_contiguous:
            raise ProviderFailed("provider returned a non-contiguous buffer; return bytes")
        return view.cast("B")  # so len() counts bytes whatever the buffer's item format

    async def _refuse(self, writer: asyncio.StreamWriter, code: str, message: str) -> None:
        self.stats.requests_refused += 1
        self.stats.bytes_sent += await write_frame(writer, encode_error(code, message), self.send_timeout)
